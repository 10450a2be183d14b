"""How the app process is started: which collections and device, and its thread budget."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["AppArgs", "parse_app_args", "collection_labels", "configure_threads"]


@dataclass(frozen=True)
class AppArgs:
    collections: tuple[str, ...]
    device: str = "auto"


def parse_app_args(argv: Sequence[str], environ: Mapping[str, str]) -> AppArgs:
    """Collections and device for the app.

    ``BIOCLIP_SEARCH_COLLECTIONS`` (``os.pathsep``-separated) and ``BIOCLIP_SEARCH_DEVICE``, when
    set, win over the script's arguments (``COLLECTION... --device D``, as ``bioclip-app`` passes
    them after ``--``); a test runner's own arguments then never pass for collections.
    """
    positional: list[str] = []
    device = None
    it = iter(argv)
    for arg in it:
        if arg == "--device":
            device = next(it, None)
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            continue
        else:
            positional.append(arg)
    if "BIOCLIP_SEARCH_COLLECTIONS" in environ:
        collections = [p for p in environ["BIOCLIP_SEARCH_COLLECTIONS"].split(os.pathsep) if p.strip()]
    else:
        collections = positional
    device = environ.get("BIOCLIP_SEARCH_DEVICE") or device or "auto"
    return AppArgs(tuple(collections), device)


def collection_labels(paths: Sequence[str]) -> dict[str, str]:
    """Short, unique names for a collection picker: the folder name, or the path when two clash."""
    names = {p: os.path.basename(os.path.normpath(p)) or p for p in paths}
    clash = {n for n, c in Counter(names.values()).items() if c > 1}
    return {p: (p if n in clash else n) for p, n in names.items()}


def configure_threads(n: int | None = None) -> int:
    """Cap FAISS's OpenMP threads (and torch's, once imported) so that concurrent sessions share
    the cores instead of oversubscribing them. ``BIOCLIP_SEARCH_THREADS`` overrides the default
    (half the cores, at most 4, at least 1). Returns the cap."""
    import sys

    if n is None:
        env = os.environ.get("BIOCLIP_SEARCH_THREADS")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n = int(env) if env and env.isdigit() and int(env) > 0 else max(1, min(4, cores // 2))
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass
    torch = sys.modules.get("torch")
    # torch may be half imported (the app imports it in a background thread): then it is capped
    # once the model has loaded
    set_threads = getattr(torch, "set_num_threads", None) if torch is not None else None
    if set_threads is not None:
        try:
            set_threads(n)
        except RuntimeError:  # pragma: no cover - set after parallel work began: harmless
            pass
    return n
