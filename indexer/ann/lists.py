"""Inverted lists handled outside an index: saved as plain arrays, stacked, kept alive safely.

FAISS's Python objects free what they own; a lists object FAISS made (read from a file, taken from
an index) must not be handed to Python's ownership (doing so corrupted SWIG's type table here).
So every lists object this layer creates is constructed from Python, and on-disk lists taken out of
an index are given to a *keeper*: a tiny empty IVF index constructed from Python that owns them
and frees them (and unmaps their file) when it goes. The delta's lists are stored as arrays
(``numpy.savez``: sizes per list, ids, codes), not in FAISS's format, for the same reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import AnnError
from indexer.store.files import atomic_file

__all__ = ["read_lists", "write_lists", "keep_lists", "point_lists_at", "lists_of"]


def lists_of(index: Any) -> Any:
    """The inverted lists of the IVF inside ``index``, as their own type (not owned by Python)."""
    import faiss

    return faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)


def write_lists(lists: Any, path: Path) -> None:
    """Save inverted lists (any kind) as arrays: ``sizes`` (nlist,), ``ids`` (n,), ``codes`` (n, code_size)."""
    import faiss

    nlist, code_size = int(lists.nlist), int(lists.code_size)
    sizes = np.array([lists.list_size(i) for i in range(nlist)], dtype=np.int64)
    ids = np.empty(int(sizes.sum()), dtype=np.int64)
    codes = np.empty((int(sizes.sum()), code_size), dtype=np.uint8)
    at = 0
    for list_no in np.flatnonzero(sizes):
        size = int(sizes[list_no])
        id_ptr = lists.get_ids(int(list_no))
        ids[at : at + size] = faiss.rev_swig_ptr(id_ptr, size)
        lists.release_ids(int(list_no), id_ptr)
        code_ptr = lists.get_codes(int(list_no))
        codes[at : at + size] = faiss.rev_swig_ptr(code_ptr, size * code_size).reshape(size, code_size)
        lists.release_codes(int(list_no), code_ptr)
        at += size
    with atomic_file(path) as f:
        np.savez(f, sizes=sizes, ids=ids, codes=codes)


def read_lists(path: Path, nlist: int, code_size: int) -> Any:
    """An ``ArrayInvertedLists`` (constructed and owned by Python) holding what :func:`write_lists` saved."""
    import faiss

    try:
        with np.load(path) as z:
            sizes, ids, codes = z["sizes"], z["ids"], z["codes"]
    except (OSError, ValueError, KeyError) as exc:
        raise AnnError(f"cannot read inverted lists {path}: {exc}") from exc
    if sizes.shape != (nlist,) or codes.shape != (ids.size, code_size) or int(sizes.sum()) != ids.size:
        raise AnnError(f"{path} does not hold {nlist} lists of {code_size}-byte codes")
    lists = faiss.ArrayInvertedLists(nlist, code_size)
    ids = np.ascontiguousarray(ids)
    codes = np.ascontiguousarray(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    for list_no in np.flatnonzero(sizes):
        a, b = int(starts[list_no]), int(starts[list_no + 1])
        lists.add_entries(int(list_no), b - a, faiss.swig_ptr(ids[a:b]), faiss.swig_ptr(codes[a:b]))
    return lists


def keep_lists(index: Any) -> tuple[Any, Any]:
    """Take the lists out of ``index``'s IVF (which then owns nothing) into a keeper that owns and
    frees them; returns (keeper, the lists). Hold the keeper as long as the lists are used."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    quantizer = faiss.IndexFlatL2(1)
    keeper = faiss.IndexIVFScalarQuantizer(quantizer, 1, int(ivf.nlist), faiss.ScalarQuantizer.QT_8bit)
    keeper.code_size = int(ivf.code_size)  # its own (empty) lists are freed by the replace below
    owned = bool(ivf.own_invlists)
    ivf.own_invlists = False
    keeper.replace_invlists(lists, owned)
    keeper.referenced_objects = [quantizer]
    return keeper, lists


def point_lists_at(index: Any, ivfdata: Path) -> None:
    """Make the on-disk lists of ``index`` name ``ivfdata`` as their file: what
    :func:`faiss.write_index` records, found again by ``IO_FLAG_ONDISK_SAME_DIR``."""
    import faiss

    lists = lists_of(index)
    if not isinstance(lists, faiss.OnDiskInvertedLists):
        raise AnnError("this index does not keep its inverted lists on disk")
    lists.filename = str(ivfdata)
