"""Which kind of embeddings a SOURCE holds, and the reader for it.

- a Parquet file (``PAR1``), a glob or brace pattern of them, or a folder of ``*.parquet``: ``parquet``.
"""

from __future__ import annotations

import os

from indexer.build.importers.options import ImportOptions
from indexer.build.importers.readers import KINDS, EmbeddingReader, ParquetReader
from indexer.errors import SourceError

__all__ = ["detect_kind", "open_reader"]


def _head(path: str, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}", path) from exc


def detect_kind(spec: str) -> str:
    """``parquet``, ``pybioclip`` or ``clip-retrieval`` for a SOURCE (SourceError when it is none)."""
    if os.path.isdir(spec):
        return "parquet"
    if os.path.isfile(spec):
        head = _head(spec)
        if head[:4] == b"PAR1":
            return "parquet"
        raise SourceError(f"cannot tell what kind of embeddings {spec} holds; give --format", spec)
    return "parquet"  # a pattern: the reader expands it and says when nothing matches


def open_reader(spec: str | os.PathLike, options: ImportOptions) -> EmbeddingReader:
    """The reader for ``spec`` (kind from ``options.kind`` or detected)."""
    spec = os.fspath(spec)
    kind = options.kind or detect_kind(spec)
    if kind not in KINDS:
        raise SourceError(f"unknown embeddings format {kind!r}; known: {', '.join(KINDS)}", spec)
    if kind == "parquet":
        return ParquetReader(spec, options.columns)
    raise SourceError(f"{kind} embeddings are not readable yet", spec)
