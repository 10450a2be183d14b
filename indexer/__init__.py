"""bioclip-search indexer: the collection on disk, the build, the ANN index and the search engine.

Public API, served lazily (``import indexer`` stays cheap: no torch, no FAISS)::

    from indexer import BuildOptions, Filter, SearchEngine, Term, build, open_source
    build("photos.collection", [open_source("photos/")], model_name="bioclip")
    engine = SearchEngine.open("photos.collection")
    curate("photos.collection"); Curation.open("photos.collection").entries("misidentified")

See docs/ARCHITECTURE.md for the packages: ``store``, ``media``, ``ann``, ``build``, ``search``, ``curate``, ``cli``.
"""

from __future__ import annotations

from indexer._coexist import check_bioclip_package

check_bioclip_package()  # pybioclip's 'bioclip' in our place: fail now, with what to do

import importlib  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

from indexer._version import __version__  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; the real imports are lazy
    from indexer.build import BuildOptions, BuildReport, build, open_source
    from indexer.curate import CurateOptions, Curation, ListOptions, curate, evaluate
    from indexer.search import Condition, Filter, Grouping, Hit, Query, SearchEngine, SearchResult, Term
    from indexer.store import Collection

# Names served lazily from the packages that define them.
_LAZY = {
    "SearchEngine": "indexer.search",
    "SearchResult": "indexer.search",
    "Hit": "indexer.search",
    "Filter": "indexer.search",
    "Condition": "indexer.search",
    "Query": "indexer.search",
    "Term": "indexer.search",
    "Grouping": "indexer.search",
    "build": "indexer.build",
    "BuildOptions": "indexer.build",
    "BuildReport": "indexer.build",
    "open_source": "indexer.build",
    "Collection": "indexer.store",
    "curate": "indexer.curate",
    "evaluate": "indexer.curate",
    "Curation": "indexer.curate",
    "CurateOptions": "indexer.curate",
    "ListOptions": "indexer.curate",
}

__all__ = [
    "__version__",
    "SearchEngine",
    "SearchResult",
    "Hit",
    "Filter",
    "Condition",
    "Query",
    "Term",
    "Grouping",
    "build",
    "BuildOptions",
    "BuildReport",
    "open_source",
    "Collection",
    "curate",
    "evaluate",
    "Curation",
    "CurateOptions",
    "ListOptions",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'indexer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
