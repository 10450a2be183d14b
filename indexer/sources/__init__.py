"""Image sources: what ``bioclip-index build SOURCE...`` reads.

``open_source`` picks the kind of source from what SOURCE is (or from ``source_type``).
"""

from __future__ import annotations

import os

from indexer.errors import SourceError
from indexer.sources.base import ERROR_COLUMNS, ITEM_COLUMNS, Source
from indexer.sources.folder import FolderSource

__all__ = ["Source", "FolderSource", "open_source", "ITEM_COLUMNS", "ERROR_COLUMNS", "SOURCE_TYPES"]

SOURCE_TYPES = ("folder",)


def open_source(
    spec: str,
    *,
    source_type: str | None = None,
    labels: str | None = None,
) -> Source:
    """Return the source that ``spec`` (a path, pattern or URL) names.

    Raises SourceError when ``spec`` names nothing usable.
    """
    kind = source_type or _detect(spec)
    if kind == "folder":
        return FolderSource(spec, labels=labels)
    raise SourceError(f"unknown source type {kind!r} for {spec}; known: {', '.join(SOURCE_TYPES)}", spec)


def _detect(spec: str) -> str:
    if os.path.isdir(spec):
        return "folder"
    if not os.path.exists(spec):
        raise SourceError(f"source not found: {spec}", spec)
    raise SourceError(f"cannot tell what kind of source {spec} is; give --source-type", spec)
