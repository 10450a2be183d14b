"""Which kind of embeddings a SOURCE holds, and the reader for it.

- a folder with ``img_emb/``: ``clip-retrieval`` (``img_emb/*.npy`` + ``metadata/*.parquet``);
- a Parquet file (``PAR1``), a glob or brace pattern of them, or a folder of ``*.parquet``: ``parquet``;
- a JSON object file (``{``; pybioclip writes ``.json``): ``pybioclip`` (``bioclip embed`` output).

A single ``.npy`` file is not enough (it has no ids): the message asks for clip-retrieval's folder.
"""

from __future__ import annotations

import os

from indexer.build.importers.clip_retrieval import ClipRetrievalReader, is_clip_retrieval_output
from indexer.build.importers.options import ImportOptions
from indexer.build.importers.pybioclip import PybioclipReader
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
        return "clip-retrieval" if is_clip_retrieval_output(spec) else "parquet"
    if os.path.isfile(spec):
        head = _head(spec)
        if head[:4] == b"PAR1":
            return "parquet"
        if head.lstrip()[:1] == b"{" or spec.lower().endswith(".json"):
            return "pybioclip"
        if head[:6] == b"\x93NUMPY":
            raise SourceError(
                f"{spec} is a numpy array without ids: give clip-retrieval's output folder (img_emb/ and "
                "metadata/ side by side), or a Parquet file with an id and a vector column",
                spec,
            )
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
    if kind == "pybioclip":
        return PybioclipReader(spec, options.columns)
    return ClipRetrievalReader(spec, options.columns)
