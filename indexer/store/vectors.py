"""Stored vectors by id: the one lookup that the engine, the build and the ANN layer share.

A :data:`VectorLookup` is ``lookup(ids int64 (m,)) -> float32 (m, d)``: row i is the stored vector
of ``ids[i]``; an id it does not hold raises KeyError. Two kinds of storage give one:

- :class:`SegmentVectors`: a collection's segments, each holding the contiguous ids
  ``min_id .. max_id`` in one (memory-mapped) float16 file;
- :class:`ArrayVectors`: one matrix with arbitrary ids (vectors handed to the ANN build).

Both find, for each id, its block and row and then :func:`gather` reads the rows block by block in
row order (sequential reads of a memory-mapped file), with no Python loop over ids. Both also give
the rows as stored, unconverted (``stored(ids)``: float16 for a collection's segments), for scoring
kernels that read float16 themselves (the ANN layer's exact re-ranking of one query's candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["VectorLookup", "SegmentVectors", "ArrayVectors", "gather", "to_float32"]

VectorLookup = Callable[[np.ndarray], np.ndarray]


def gather(
    block_of: np.ndarray, row_of: np.ndarray, block: Callable[[int], Any], d: int, dtype: Any = np.float32
) -> np.ndarray:
    """(n, d) of ``dtype`` (float32: converted; float16: as stored in float16 blocks): row
    ``row_of[i]`` of block ``block(block_of[i])`` for every i."""
    n = block_of.size
    convert = np.dtype(dtype) == np.float32
    out = np.empty((n, d), dtype=dtype)
    if n == 0:
        return out
    same = block_of[1:] == block_of[:-1]
    in_order = bool((block_of[1:] >= block_of[:-1]).all()) and bool((row_of[1:][same] > row_of[:-1][same]).all())
    order = np.arange(n) if in_order else np.lexsort((row_of, block_of))
    sorted_blocks = block_of[order]
    cuts = np.flatnonzero(np.diff(sorted_blocks)) + 1
    for run in np.split(order, cuts):
        rows = block(int(block_of[run[0]]))[row_of[run]]
        if in_order and convert:  # the run is out[a:b]: converted in place
            to_float32(rows, out[int(run[0]) : int(run[-1]) + 1])
        elif in_order:
            out[int(run[0]) : int(run[-1]) + 1] = rows
        else:
            out[run] = rows
    return out


def _storage_dtype(blocks: Any) -> Any:
    """float16 when every block given is float16, else float32."""
    return np.float16 if all(getattr(b, "dtype", None) == np.float16 for b in blocks) else np.float32


_FP16_DECODERS: dict[int, Any] = {}


def to_float32(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = src`` for float16 or float32 rows (n, d) into C-contiguous float32 ``dst``.

    float16 goes through FAISS's SIMD decoder for float16 codes (about 1.4x numpy's cast, which
    dominates re-ranking from stored float16 vectors)."""
    src = np.asarray(src)
    if src.dtype != np.float16 or src.ndim != 2 or src.shape[0] < 64 or not dst.flags.c_contiguous:
        dst[...] = src
        return
    import faiss

    d = src.shape[1]
    sq = _FP16_DECODERS.get(d)
    if sq is None:
        sq = _FP16_DECODERS.setdefault(d, faiss.ScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16))
    codes = np.ascontiguousarray(src).view(np.uint8)
    sq.decode_c(faiss.swig_ptr(codes), faiss.swig_ptr(dst), src.shape[0])


class SegmentVectors:
    """The vectors of segments with contiguous ids: ``starts[j] .. ends[j]`` are the ids of segment
    j, whose rows ``segment(j)`` returns (an array-like of shape (rows, d))."""

    def __init__(self, starts: Sequence[int], ends: Sequence[int], segment: Callable[[int], Any], d: int):
        self.starts = np.asarray(starts, dtype=np.int64)
        self.ends = np.asarray(ends, dtype=np.int64)
        self.segment = segment
        self.d = d

    def __call__(self, ids: Any) -> np.ndarray:
        return self._get(ids, stored=False)

    def stored(self, ids: Any) -> np.ndarray:
        """The rows of ``ids`` as stored: float16 when every segment they are in is float16 (a
        collection's always are), float32 otherwise."""
        return self._get(ids, stored=True)

    def _get(self, ids: Any, *, stored: bool) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return np.empty((0, self.d), dtype=np.float32)
        seg = np.searchsorted(self.starts, ids, side="right") - 1
        if self.starts.size:
            bad = (seg < 0) | (ids > self.ends[np.maximum(seg, 0)])
        else:
            bad = np.ones(ids.size, dtype=bool)
        if bad.any():
            raise KeyError(int(ids[np.argmax(bad)]))
        dtype = _storage_dtype(self.segment(int(j)) for j in np.unique(seg)) if stored else np.float32
        return gather(seg, ids - self.starts[seg], self.segment, self.d, dtype)


class ArrayVectors:
    """The rows of one matrix (n, d) (float32/float16, possibly memory-mapped) by their ids (n,)."""

    def __init__(self, vectors: Any, ids: np.ndarray):
        self.vectors = vectors
        self.order = np.argsort(ids, kind="stable")
        self.sorted_ids = np.asarray(ids)[self.order]

    def __call__(self, wanted: Any) -> np.ndarray:
        return self._get(wanted, stored=False)

    def stored(self, wanted: Any) -> np.ndarray:
        """The rows of ``wanted`` as stored (float16 for a float16 matrix, else float32)."""
        return self._get(wanted, stored=True)

    def _get(self, wanted: Any, *, stored: bool) -> np.ndarray:
        wanted = np.asarray(wanted, dtype=np.int64).reshape(-1)
        d = self.vectors.shape[1]
        if wanted.size == 0:
            return np.empty((0, d), dtype=np.float32)
        pos = np.minimum(np.searchsorted(self.sorted_ids, wanted), max(self.sorted_ids.size - 1, 0))
        if self.sorted_ids.size == 0 or not np.array_equal(self.sorted_ids[pos], wanted):
            missing = wanted if self.sorted_ids.size == 0 else wanted[self.sorted_ids[pos] != wanted]
            raise KeyError(int(missing[0]))
        rows = self.order[pos]
        dtype = _storage_dtype([self.vectors]) if stored else np.float32
        return gather(np.zeros(rows.size, dtype=np.int64), rows, lambda _: self.vectors, d, dtype)
