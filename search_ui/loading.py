"""Opening a collection and loading its model in the background, so that the page is usable at
once: the search box is there while the engine reads the collection and the model loads, and the
page says which of the two it is waiting for.

One :class:`EngineLoader` per collection and device per process (the app keeps them in
``st.cache_resource``); its thread never calls Streamlit (only the script thread may), the page
polls :meth:`EngineLoader.status`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["EngineLoader", "LoadStatus", "open_search_engine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadStatus:
    """Where a loader is: ``phase`` is ``opening`` (reading the collection), ``model`` (the
    collection is open, the model loading), ``ready`` or ``failed`` (the collection cannot be
    opened: ``error``); ``model_error`` says why the model did not load (text and photo searches
    then say so; browsing and filters still work). ``seconds``: since the loader started, or how
    long it took once ready."""

    phase: str
    seconds: float
    error: str | None = None
    model_error: str | None = None

    @property
    def engine_ready(self) -> bool:
        return self.phase in ("model", "ready")

    @property
    def model_ready(self) -> bool:
        return self.phase == "ready" and self.model_error is None

    def describe(self) -> str:
        """The state in words, for the page."""
        if self.phase == "opening":
            return f"Opening the collection… ({self.seconds:.0f} s)"
        if self.phase == "model":
            return f"Loading the model… ({self.seconds:.0f} s). Browsing and filters work already."
        if self.phase == "failed":
            return f"Cannot open the collection: {self.error}"
        if self.model_error:
            return f"The model could not be loaded ({self.model_error}); browsing and filters still work."
        return f"Ready (loaded in {self.seconds:.1f} s)."


def open_search_engine(path: str, device: str) -> Any:
    """The engine of the collection at ``path``, with the process's thread cap."""
    from indexer.search import SearchEngine
    from search_ui.args import configure_threads

    configure_threads()
    # opt-in query-vector log (bioclip-app --log-queries): off, vectors or text
    return SearchEngine.open(path, device=device, log_queries=os.environ.get("BIOCLIP_SEARCH_LOG_QUERIES", "off"))


def _module_open() -> Callable[[str, str], Any]:
    return globals()["open_search_engine"]


class EngineLoader:
    """Opens the collection at ``path`` and then loads its model, in one daemon thread.

    ``open_engine(path, device)`` makes the engine (``open_search_engine`` unless a caller passes
    another); its ``load_model()`` is called next. Errors are kept, never raised in the thread.
    """

    #: Every loader this process started (tests and benchmarks wait on them).
    started: ClassVar[list[EngineLoader]] = []

    def __init__(self, path: str, device: str, open_engine: Callable[[str, str], Any] | None = None):
        self.path = path
        self.device = device
        self._open = open_engine
        self._lock = threading.Lock()
        self._phase = "opening"
        self._error: str | None = None
        self._model_error: str | None = None
        self._engine: Any = None
        self._started = time.monotonic()
        self._took: float | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"bioclip-load-{path}", daemon=True)

    def start(self) -> EngineLoader:
        """Start loading (once; later calls do nothing)."""
        with self._lock:
            if self._thread.is_alive() or self._done.is_set() or self in EngineLoader.started:
                return self
            self._started = time.monotonic()
            EngineLoader.started.append(self)
        self._thread.start()
        return self

    @classmethod
    def wait_all(cls, timeout: float = 120.0) -> bool:
        """Block until every loader started in this process is done; returns whether they are."""
        deadline = time.monotonic() + timeout
        return all(ld.wait(max(0.0, deadline - time.monotonic())) for ld in list(cls.started))

    def _run(self) -> None:
        try:
            # looked up at each start, so that a caller (a test) can put a gate before the real open
            engine = (self._open or _module_open())(self.path, self.device)
        except Exception as exc:  # shown on the page; the details go to the log
            log.warning("cannot open the collection %s: %s", self.path, exc)
            with self._lock:
                self._phase, self._error = "failed", str(exc) or type(exc).__name__
            self._done.set()
            return
        with self._lock:
            self._engine, self._phase = engine, "model"
        log.info("opened %s in %.1f s; loading its model", self.path, time.monotonic() - self._started)
        model_error = None
        try:
            engine.load_model()
            from search_ui.args import configure_threads

            configure_threads()  # torch is imported now: cap its threads too
        except Exception as exc:
            log.warning("cannot load the model of %s: %s", self.path, exc)
            model_error = str(exc) or type(exc).__name__
        with self._lock:
            self._phase, self._model_error = "ready", model_error
            self._took = time.monotonic() - self._started
        log.info("model of %s ready after %.1f s", self.path, self._took)
        self._done.set()

    @property
    def engine(self) -> Any:
        """The engine once the collection is open (None before, or when it failed)."""
        return self._engine

    def status(self) -> LoadStatus:
        with self._lock:
            seconds = self._took if self._took is not None else time.monotonic() - self._started
            return LoadStatus(self._phase, seconds, self._error, self._model_error)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the loader is done (ready or failed); returns whether it is."""
        return self._done.wait(timeout)
