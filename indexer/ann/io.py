"""Saving and loading an index: the FAISS file and its :class:`~indexer.ann.info.IndexInfo` sidecar.

Both are written atomically (:mod:`indexer.store.files`), the index file first; loading checks that
the sidecar describes the file next to it (its size is recorded in ``info.file_bytes``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from indexer.ann.info import IndexInfo
from indexer.errors import AnnError
from indexer.store.files import atomic_path, atomic_write_text

__all__ = ["save_index", "load_index", "sidecar_path"]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_index(index: Any, info: IndexInfo, path: str | os.PathLike[str], *, mapped_from: Path | None = None) -> None:
    """Write FAISS ``index`` to ``path`` and ``info`` (with ``file_bytes`` set) to ``path.json``.

    ``mapped_from``: the file a memory-mapped index lives in. Such an index points into its file:
    writing it would record a reference to that file, not the data; the file is read-only and
    unchanged, so it is copied instead.
    """
    import faiss

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if mapped_from is not None:
            shutil.copyfile(mapped_from, tmp)
        else:
            faiss.write_index(index, str(tmp))
        info.file_bytes = tmp.stat().st_size
    atomic_write_text(sidecar_path(path), info.to_json())


def load_index(path: str | os.PathLike[str], *, mmap: bool = False) -> tuple[Any, IndexInfo]:
    """(FAISS index, info) saved by :func:`save_index`.

    ``mmap=True`` maps the file instead of reading it (IVF lists with ``IO_FLAG_MMAP``, flat and
    HNSW storage with ``IO_FLAG_MMAP_IFC``, both read-only): the OS pages data in as searches touch
    it, so an index larger than RAM can be searched (resident: the coarse centroids and, for HNSW,
    graph metadata; after the first filtered search also the id -> list map, 4-12 bytes per vector).
    """
    import faiss

    path = Path(path)
    if not path.is_file():
        raise AnnError(f"no index file at {path}")
    side = sidecar_path(path)
    try:
        info = IndexInfo.from_json(side.read_text())
    except FileNotFoundError as exc:
        raise AnnError(f"index {path} has no sidecar {side.name}") from exc
    expected = info.file_bytes
    if expected is not None and expected != path.stat().st_size:
        raise AnnError(f"index {path} is {path.stat().st_size} bytes but its sidecar describes {expected}")
    flags = 0
    if mmap:
        is_ivf = any(part.startswith("IVF") for part in info.factory.split(","))
        flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP if is_ivf else faiss.IO_FLAG_MMAP_IFC)
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise AnnError(f"cannot read index {path}: {exc}") from exc
    if index.d != info.dimension:
        raise AnnError(f"index {path} has dimension {index.d}, its sidecar says {info.dimension}")
    return index, info
