"""Saving and loading an index: the FAISS file and its :class:`~indexer.ann.info.IndexInfo` sidecar.

Both are written atomically (:mod:`indexer.store.files`), the index file first; loading checks that
the sidecar describes the file next to it (its size is recorded in ``info.file_bytes``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexer.ann.info import IndexInfo
from indexer.ann.lists import keep_lists, point_lists_at, read_lists
from indexer.errors import AnnError
from indexer.store.files import atomic_path, atomic_write_text

__all__ = [
    "save_index",
    "load_index",
    "read_info",
    "sidecar_path",
    "ondisk_data_path",
    "delta_path",
    "is_ondisk",
    "write_sidecar",
    "faiss_prints_to_stderr",
    "link_or_copy",
]

ONDISK_SUFFIX = ".ivfdata"
DELTA_SUFFIX = ".delta"
_STDOUT_LOCK = threading.Lock()


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def ondisk_data_path(path: str | os.PathLike[str]) -> Path:
    """Where the inverted lists of an on-disk index saved at ``path`` live: ``PATH.ivfdata``."""
    path = Path(path)
    return path.with_name(path.name + ONDISK_SUFFIX)


def delta_path(path: str | os.PathLike[str]) -> Path:
    """Where the delta lists of an on-disk index saved at ``path`` live: ``PATH.delta``
    (:mod:`indexer.ann.delta`)."""
    path = Path(path)
    return path.with_name(path.name + DELTA_SUFFIX)


def is_ondisk(info: IndexInfo) -> bool:
    return info.build.get("storage") == "ondisk"


@contextlib.contextmanager
def faiss_prints_to_stderr() -> Iterator[None]:
    """FAISS's on-disk code prints progress with C ``printf`` ("resizing ...", "updating ondisk
    filename ..."): send the process's standard output to standard error meanwhile, so that a
    command's machine-readable output (``--json``) stays clean."""
    with _STDOUT_LOCK:
        try:
            sys.stdout.flush()
            saved = os.dup(1)
        except (OSError, ValueError):  # no real file descriptor 1 (an embedding host)
            yield
            return
        try:
            os.dup2(2, 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def link_or_copy(src: Path, dest: Path) -> None:
    """``dest`` becomes a hard link to (else a copy of) the immutable file ``src``, atomically."""
    with atomic_path(dest) as tmp:
        tmp.unlink()  # the placeholder atomic_path made: a link needs the name free
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


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
        _save_ondisk(Path(mapped_from), path, info)
        return
    with atomic_path(path) as tmp:
        if mapped_from is not None:
            shutil.copyfile(mapped_from, tmp)
        else:
            faiss.write_index(index, str(tmp))
        info.file_bytes = tmp.stat().st_size
    atomic_write_text(sidecar_path(path), info.to_json())


def _save_ondisk(src: Path, dest: Path, info: IndexInfo) -> None:
    """An on-disk index under a new name: its lists (and delta) linked, its small index file
    rewritten to name ``dest.ivfdata`` (FAISS records the lists' file name inside the index)."""
    import faiss

    if src.resolve() == dest.resolve():
        write_sidecar(dest, info)
        return
    link_or_copy(ondisk_data_path(src), ondisk_data_path(dest))
    if info.build.get("delta"):
        link_or_copy(delta_path(src), delta_path(dest))
    with faiss_prints_to_stderr():
        index = faiss.read_index(str(src), faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY)
    point_lists_at(index, ondisk_data_path(dest))
    with atomic_path(dest) as tmp:
        faiss.write_index(index, str(tmp))
    write_sidecar(dest, info)


def read_info(path: str | os.PathLike[str]) -> IndexInfo:
    """The :class:`IndexInfo` saved beside the index at ``path``."""
    side = sidecar_path(path)
    try:
        return IndexInfo.from_json(side.read_text())
    except FileNotFoundError as exc:
        raise AnnError(f"index {path} has no sidecar {side.name}") from exc


def _attach_delta(index: Any, path: Path, info: IndexInfo) -> None:
    """Search ``PATH.delta``'s lists with the on-disk ones: each list becomes the concatenation of
    both (``HStackInvertedLists``, read-only). The index keeps every lists object alive."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    delta = read_lists(delta_path(path), int(ivf.nlist), int(ivf.code_size))
    keeper, main = keep_lists(index)
    both = faiss.InvertedListsPtrVector()
    both.push_back(main)
    both.push_back(delta)
    stacked = faiss.HStackInvertedLists(2, both.data())
    ivf.replace_invlists(stacked, False)
    ivf.ntotal += int(info.build["delta"]["n"])
    if index is not ivf:
        index.ntotal = ivf.ntotal
    index.referenced_objects = [keeper, delta, stacked, both]


def load_index(path: str | os.PathLike[str], *, mmap: bool = False) -> tuple[Any, IndexInfo]:
    """(FAISS index, info) saved by :func:`save_index`.

    ``mmap=True`` maps the file instead of reading it (IVF lists with ``IO_FLAG_MMAP``, flat and
    HNSW storage with ``IO_FLAG_MMAP_IFC``, both read-only): the OS pages data in as searches touch
    it, so an index larger than RAM can be searched (resident: the coarse centroids and, for HNSW,
    graph metadata; after the first filtered search also the id -> list map, 4-12 bytes per vector).

    An on-disk index (a sharded build, :mod:`indexer.ann.sharded`) is always mapped read-only, its
    lists read from ``PATH.ivfdata`` beside the file wherever the folder now is, and the lists of
    its delta (``PATH.delta``, :mod:`indexer.ann.delta`), when it has one, searched with them.
    """
    import faiss

    path = Path(path)
    if not path.is_file():
        raise AnnError(f"no index file at {path}")
    info = read_info(path)
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
        with faiss_prints_to_stderr() if is_ondisk(info) else contextlib.nullcontext():
            index = faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        raise AnnError(f"cannot read index {path}: {exc}") from exc
    if is_ondisk(info) and info.build.get("delta"):
        _attach_delta(index, path, info)
    if index.d != info.dimension:
        raise AnnError(f"index {path} has dimension {index.d}, its sidecar says {info.dimension}")
    return index, info
