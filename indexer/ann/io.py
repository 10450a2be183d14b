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

__all__ = ["save_index", "load_index", "sidecar_path", "ondisk_data_path", "is_ondisk", "write_sidecar"]

ONDISK_SUFFIX = ".ivfdata"


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def ondisk_data_path(path: str | os.PathLike[str]) -> Path:
    """Where the inverted lists of an on-disk index saved at ``path`` live: ``PATH.ivfdata``."""
    path = Path(path)
    return path.with_name(path.name + ONDISK_SUFFIX)


def is_ondisk(info: IndexInfo) -> bool:
    return info.build.get("storage") == "ondisk"


def write_sidecar(path: str | os.PathLike[str], info: IndexInfo) -> None:
    """Write ``info`` (with ``file_bytes`` of the index file at ``path``) to ``path.json``."""
    info.file_bytes = Path(path).stat().st_size
    atomic_write_text(sidecar_path(path), info.to_json())


def save_index(index: Any, info: IndexInfo, path: str | os.PathLike[str], *, mapped_from: Path | None = None) -> None:
    """Write FAISS ``index`` to ``path`` and ``info`` (with ``file_bytes`` set) to ``path.json``.

    ``mapped_from``: the file a memory-mapped index lives in. Such an index points into its file:
    writing it would record a reference to that file, not the data; the file is read-only and
    unchanged, so it is copied instead.
    """
    import faiss

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mapped_from is not None and is_ondisk(info):
        # the lists are found beside the index (IO_FLAG_ONDISK_SAME_DIR): link or copy them there
        src, dest = ondisk_data_path(mapped_from), ondisk_data_path(path)
        with atomic_path(dest) as tmp:
            try:
                os.link(src, tmp)
            except OSError:
                shutil.copyfile(src, tmp)
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

    An on-disk index (a sharded build, :mod:`indexer.ann.sharded`) is always mapped read-only, its
    lists read from ``PATH.ivfdata`` beside the file wherever the folder now is.
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
    if is_ondisk(info):
        if not ondisk_data_path(path).is_file():
            raise AnnError(f"index {path} keeps its lists in {ondisk_data_path(path).name}, which is missing")
        flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    elif mmap:
        is_ivf = any(part.startswith("IVF") for part in info.factory.split(","))
        flags |= faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP if is_ivf else faiss.IO_FLAG_MMAP_IFC)
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise AnnError(f"cannot read index {path}: {exc}") from exc
    if index.d != info.dimension:
        raise AnnError(f"index {path} has dimension {index.d}, its sidecar says {info.dimension}")
    return index, info
