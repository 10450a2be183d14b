"""What one server worker process holds: an engine and a media library per collection, opened once
and shared by every request; the collections' models loaded once, in the background; FAISS and
torch threads capped; newer generations picked up by a background thread, so that no request
waits for a reload."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from indexer.serve.config import ServeConfig
from indexer.serve.errors import ApiError

__all__ = ["Served", "Registry", "cap_threads"]

log = logging.getLogger("indexer.serve")


def cap_threads(n: int) -> None:
    """At most ``n`` OpenMP / BLAS threads for FAISS and torch in this process. Before torch is
    imported, through the environment; after, through its own calls."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            torch.set_num_threads(n)
        except RuntimeError:  # pragma: no cover - parallel work began already: harmless
            pass


@dataclass
class Served:
    """One collection in this worker."""

    name: str
    path: str
    engine: Any
    library: Any


class Registry:
    """The collections of one worker, by name. :meth:`open` in the app's start-up, :meth:`close` at
    its shutdown."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.collections: dict[str, Served] = {}
        self.started = time.time()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._models_ready = threading.Event()
        self.model_error: str | None = None

    def open(self) -> None:
        from indexer.media.library import MediaLibrary
        from indexer.search import SearchEngine

        cap_threads(self.config.threads)
        for name, path in self.config.collections:
            engine = SearchEngine.open(path, device=self.config.device, refresh_interval=None)
            library = MediaLibrary.for_engine(engine)
            self.collections[name] = Served(name, path, engine, library)
            log.info("serving %s (%s): generation %d, %d images", name, path, engine.generation, engine.count())
        self._start(self._load_models, "bioclip-serve-models")
        self._start(self._follow_generations, "bioclip-serve-refresh")

    def _start(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _load_models(self) -> None:
        try:
            for served in self.collections.values():
                served.engine.load_model()
            cap_threads(self.config.threads)  # torch is imported now
        except Exception as exc:  # the first query that needs the model reports it
            self.model_error = str(exc)
            log.error("cannot load the model: %s", exc)
        finally:
            self._models_ready.set()

    def _follow_generations(self) -> None:
        while not self._stop.wait(self.config.refresh_interval):
            for served in self.collections.values():
                try:
                    served.engine.refresh()
                except Exception as exc:  # keep serving the generation we have
                    log.warning("cannot look for a newer generation of %s: %s", served.name, exc)

    @property
    def ready(self) -> bool:
        return bool(self.collections) and self._models_ready.is_set() and self.model_error is None

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._models_ready.wait(timeout)

    def get(self, name: str) -> Served:
        served = self.collections.get(name)
        if served is None:
            known = ", ".join(sorted(self.collections)) or "none"
            raise ApiError(404, "unknown_collection", f"no collection named {name!r} here (served: {known})")
        return served

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            if t.name == "bioclip-serve-refresh":
                t.join(timeout=5)
        log.info("stopped serving %s", ", ".join(self.collections) or "nothing")
