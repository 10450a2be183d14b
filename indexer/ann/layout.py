"""The structure of a FAISS index as far as search parameters and capabilities go, and making one.

:class:`Layout` finds the pieces inside a (possibly wrapped) index: an id map, refine and
pre-transform wrappers, and the flat / HNSW / IVF leaf that search parameters apply to.
:func:`new_faiss_index` makes an empty index from a factory string (inner product, ids mapped);
:func:`add_chunks` adds vectors in float32 chunks so memory stays flat whatever n is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.ann.exact import MiB, f32
from indexer.errors import AnnError

__all__ = [
    "Layout",
    "IdLists",
    "Selector",
    "new_faiss_index",
    "add_chunks",
    "add_chunk_rows",
    "KMEANS_NITER",
    "ADD_CHUNK_BYTES",
]

KMEANS_NITER = 20
ADD_CHUNK_BYTES = 64 * MiB
"""What one add call may work with: its float32 vectors and what encoding them takes (:func:`add_chunk_rows`)."""


@dataclass
class Layout:
    """Where the pieces are inside a (possibly wrapped) FAISS index."""

    kind: str  # "flat" | "hnsw" | "ivf"
    idmap: Any = None  # IndexIDMap / IndexIDMap2 around everything, when ids are mapped outside
    wrappers: list[Any] = field(default_factory=list)  # IndexRefine / IndexPreTransform, outer first
    leaf: Any = None  # the IndexFlat / IndexHNSW / IndexIVF at the bottom
    lossy: bool = False  # the leaf stores compressed codes (scores are approximate)

    @property
    def refine(self) -> Any:
        import faiss

        return next((w for w in self.wrappers if isinstance(w, faiss.IndexRefine)), None)

    @property
    def can_remove(self) -> bool:
        return self.kind in ("flat", "ivf") and self.refine is None

    @property
    def can_reconstruct(self) -> bool:
        """The index can give back exact vectors by id (IndexIDMap2 over uncompressed storage)."""
        import faiss

        return (
            isinstance(self.idmap, faiss.IndexIDMap2)
            and not self.wrappers
            and self.kind in ("flat", "hnsw")
            and not self.lossy
        )

    @classmethod
    def of(cls, index: Any) -> Layout:
        import faiss

        idx = faiss.downcast_index(index)
        layout = cls(kind="")
        if isinstance(idx, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            layout.idmap = idx
            idx = faiss.downcast_index(idx.index)
        while True:
            if isinstance(idx, faiss.IndexRefine):
                layout.wrappers.append(idx)
                idx = faiss.downcast_index(idx.base_index)
            elif isinstance(idx, faiss.IndexPreTransform):
                layout.wrappers.append(idx)
                idx = faiss.downcast_index(idx.index)
            else:
                break
        layout.leaf = idx
        if isinstance(idx, faiss.IndexIVF):
            layout.kind = "ivf"
            layout.lossy = not isinstance(idx, faiss.IndexIVFFlat)
        elif isinstance(idx, faiss.IndexHNSW):
            layout.kind = "hnsw"
            layout.lossy = not isinstance(faiss.downcast_index(idx.storage), faiss.IndexFlat)
        elif isinstance(idx, faiss.IndexFlat):
            layout.kind = "flat"
        else:
            raise AnnError(f"unsupported FAISS index type {type(idx).__name__}")
        return layout


class IdLists:
    """Which ids are in the index and, for IVF, which inverted list each is in.

    A dense int32 array indexed by id (4 bytes per id up to the largest id; -1 = absent) when ids
    are dense, else the sorted ids with their lists (12 bytes per vector). Built on the first filtered
    search and dropped on ``add``/``remove``.
    """

    def __init__(self, dense: np.ndarray | None, ids: np.ndarray | None, lists: np.ndarray | None):
        self.dense, self.ids, self.lists = dense, ids, lists

    @classmethod
    def of(cls, layout: Layout) -> IdLists:
        import faiss

        if layout.idmap is not None:
            ids = faiss.vector_to_array(layout.idmap.id_map).astype(np.int64, copy=False)
            return cls.build(ids, np.zeros(ids.size, dtype=np.int32))
        ivf = layout.leaf
        invlists = ivf.invlists
        ids_parts, list_parts = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int32)]
        for list_no in range(ivf.nlist):
            size = invlists.list_size(list_no)
            if size:
                ptr = invlists.get_ids(list_no)
                ids_parts.append(faiss.rev_swig_ptr(ptr, size).copy())
                invlists.release_ids(list_no, ptr)
                list_parts.append(np.full(size, list_no, dtype=np.int32))
        return cls.build(np.concatenate(ids_parts), np.concatenate(list_parts))

    @classmethod
    def build(cls, ids: np.ndarray, lists: np.ndarray) -> IdLists:
        top = int(ids.max()) if ids.size else -1
        if top < 4 * ids.size + 1024:
            dense = np.full(top + 1, -1, dtype=np.int32)
            dense[ids] = lists
            return cls(dense, None, None)
        order = np.argsort(ids)
        return cls(None, ids[order], lists[order])

    def lists_of(self, wanted: np.ndarray) -> np.ndarray:
        """The list of each wanted id (sorted, >= 0); -1 for ids not in the index."""
        if self.dense is not None:
            if wanted.size == 0 or wanted[-1] < self.dense.size:
                return self.dense[wanted]
            out = np.full(wanted.size, -1, dtype=np.int32)
            inside = wanted < self.dense.size
            out[inside] = self.dense[wanted[inside]]
            return out
        assert self.ids is not None and self.lists is not None  # the sparse form
        if self.ids.size == 0:
            return np.full(wanted.size, -1, dtype=np.int32)
        pos = np.minimum(np.searchsorted(self.ids, wanted), self.ids.size - 1)
        return np.where(self.ids[pos] == wanted, self.lists[pos], -1)


class Selector:
    """A FAISS IDSelector over external ids, plus the Python objects it points into (kept alive)."""

    def __init__(self, allowed: np.ndarray | None, excluded: np.ndarray | None):
        import faiss

        self._keep: list[Any] = []
        parts = []
        if allowed is not None:
            parts.append(self._make(allowed))
        if excluded is not None and excluded.size:
            parts.append(self._hold(faiss.IDSelectorNot(self._make(excluded))))
        if not parts:
            self.sel = None
        elif len(parts) == 1:
            self.sel = parts[0]
        else:
            self.sel = self._hold(faiss.IDSelectorAnd(parts[0], parts[1]))

    def _hold(self, obj: Any) -> Any:
        self._keep.append(obj)
        return obj

    def _make(self, ids: np.ndarray) -> Any:
        """A bitmap when it is at most 64 bits per id (and 256 MiB), else a hash set (IDSelectorBatch).

        A bitmap is built with numpy in a few ms even for 10^6 ids; a hash set costs ~50 ns per id.
        """
        import faiss

        ids = ids[ids >= 0]
        if ids.size == 0:
            return self._hold(faiss.IDSelectorRange(0, 0))  # matches nothing
        top = int(ids[-1])  # ids are sorted
        nbytes = top // 8 + 1
        if nbytes <= max(8 * ids.size, 4096) and nbytes <= 256 * MiB:
            flags = np.zeros(nbytes * 8, dtype=bool)
            flags[ids] = True
            bitmap = self._hold(np.packbits(flags, bitorder="little"))
            return self._hold(faiss.IDSelectorBitmap(nbytes, faiss.swig_ptr(bitmap)))
        ids = self._hold(np.ascontiguousarray(ids))
        return self._hold(faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids)))


def new_faiss_index(factory: str, d: int) -> Any:
    """index_factory with inner product, wrapped in an IndexIDMap2 unless it takes ids natively (IVF)."""
    import faiss

    if factory.upper().startswith("IDMAP"):
        raise AnnError("give the factory without IDMap: ids are mapped automatically")
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise AnnError(f"invalid index factory {factory!r}: {exc}") from exc
    layout = Layout.of(index)
    if layout.kind == "ivf" and layout.refine is None:
        ivf = layout.leaf
        ivf.cp.niter = KMEANS_NITER
        ivf.cp.seed = 1234
        return index
    return faiss.IndexIDMap2(index)


def add_chunk_rows(index: Any) -> int:
    """Rows per ``add_with_ids`` call that keep an add's working memory near ``ADD_CHUNK_BYTES``.

    Per row FAISS holds the float32 vector and its residual, and a product quantizer encodes a
    batch through a table of its distances to every sub-centroid (M x ksub floats per row: 32 KiB
    for PQ32, so a 64 MiB chunk of 32,768 vectors at 512-d took 1 GiB more to add).
    """
    import faiss

    d = int(index.d)
    per_row = 8 * d
    try:
        coder = faiss.downcast_index(faiss.extract_index_ivf(index))
    except RuntimeError:  # not an IVF index
        coder = faiss.downcast_index(index)
    pq = getattr(coder, "pq", None)
    if pq is not None:
        per_row += 4 * int(pq.M) * int(pq.ksub)
    return max(256, ADD_CHUNK_BYTES // per_row)


def add_chunks(
    index: Any, vectors: np.ndarray, ids: np.ndarray, on_chunk: Callable[[np.ndarray, np.ndarray], None] | None = None
):
    """Add in float32 chunks of :func:`add_chunk_rows` rows; yields (done, total). ``on_chunk`` sees each chunk."""
    n = vectors.shape[0]
    step = add_chunk_rows(index)
    for start in range(0, n, step):
        block = f32(vectors[start : start + step])
        block_ids = np.ascontiguousarray(ids[start : start + step])
        index.add_with_ids(block, block_ids)
        if on_chunk is not None:
            on_chunk(block, block_ids)
        yield min(n, start + step), n
