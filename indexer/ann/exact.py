"""Exact (brute-force) search, the ground truth, and the array checks every ANN module shares.

:func:`exact_search` reads the vectors in chunks of ``EXACT_CHUNK_BYTES`` of float32, so memory stays
flat whatever n is; tuning, tests and benchmarks compare every index with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from indexer.errors import AnnError
from indexer.store.ids import sorted_unique

__all__ = [
    "exact_search",
    "recall_at_k",
    "recall_per_query",
    "TopK",
    "as_matrix",
    "f32",
    "id_array",
    "id_set",
    "rows_per_chunk",
    "EXACT_CHUNK_BYTES",
    "MiB",
]

MiB = 1 << 20
EXACT_CHUNK_BYTES = 32 * MiB


def as_matrix(x: np.ndarray, d: int | None, what: str) -> np.ndarray:
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or (d is not None and arr.shape[1] != d):
        raise AnnError(f"{what} must have shape (n, {d if d is not None else 'd'}), got {arr.shape}")
    if arr.dtype not in (np.float32, np.float16):
        raise AnnError(f"{what} must be float32 or float16, got {arr.dtype}")
    return arr


def f32(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 view or copy of a (chunk of a) matrix."""
    return np.ascontiguousarray(x, dtype=np.float32)


def id_array(ids: Any, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise AnnError(f"{what} must be a 1-D array of integer ids")
    return arr.astype(np.int64, copy=False)


def id_set(ids: np.ndarray | None, what: str) -> np.ndarray | None:
    """Sorted unique int64 ids, or None. Input that is already sorted and unique (as a metadata query
    usually returns it) is checked in O(n) and used as is, instead of sorted again."""
    if ids is None:
        return None
    return sorted_unique(id_array(ids, what))


class TopK:
    """Running top-k (largest scores) per query row, merged chunk by chunk; memory O(m k)."""

    def __init__(self, m: int, k: int):
        self.k = k
        self.scores = np.full((m, k), -np.inf, dtype=np.float32)
        self.ids = np.full((m, k), -1, dtype=np.int64)

    def push(self, scores: np.ndarray, ids: np.ndarray) -> None:
        """Merge a block of scores (m, c) for ids (c,) or (m, c); -inf scores never win over real ones."""
        k = self.k
        if ids.ndim == 1:
            ids = np.broadcast_to(ids, scores.shape)
        if scores.shape[1] > k:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores = np.take_along_axis(scores, part, axis=1)
            ids = np.take_along_axis(ids, part, axis=1)
        all_s = np.concatenate([self.scores, scores], axis=1)
        all_i = np.concatenate([self.ids, ids], axis=1)
        part = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
        self.scores = np.take_along_axis(all_s, part, axis=1)
        self.ids = np.take_along_axis(all_i, part, axis=1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows sorted by score (ties by id); missing results as (-inf, -1)."""
        order = np.lexsort((self.ids, -self.scores), axis=1)
        scores = np.take_along_axis(self.scores, order, axis=1)
        ids = np.take_along_axis(self.ids, order, axis=1)
        ids[~np.isfinite(scores)] = -1
        return scores, ids


def rows_per_chunk(d: int, m: int, budget: int = EXACT_CHUNK_BYTES) -> int:
    return max(256, budget // (4 * max(d, m)))


def exact_search(
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    allowed_ids: np.ndarray | None = None,
    excluded_ids: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k inner-product search: the ground truth.

    ``vectors`` (n, d) float32/float16, possibly a memmap, is read in chunks of ~32 MiB of float32, so
    memory stays flat whatever n is (plus O(m k) for the results and m x chunk for scores).
    ``ids`` (n,) are the ids of the rows. Only rows whose id is in ``allowed_ids`` (when given) and not
    in ``excluded_ids`` compete. Returns (scores (m, k) float32, ids (m, k) int64), sorted by score,
    ties broken by id, padded with (-inf, -1).
    """
    vectors = as_matrix(vectors, None, "vectors")
    n, d = vectors.shape
    ids = id_array(ids, "ids")
    if ids.shape[0] != n:
        raise AnnError(f"ids has {ids.shape[0]} entries for {n} vectors")
    q = f32(as_matrix(queries, d, "queries"))
    if k < 1:
        raise AnnError("k must be >= 1")
    allowed = id_set(allowed_ids, "allowed_ids")
    excluded = id_set(excluded_ids, "excluded_ids")
    top = TopK(q.shape[0], k)
    step = rows_per_chunk(d, q.shape[0])
    for start in range(0, n, step):
        chunk_ids = ids[start : start + step]
        keep = np.ones(chunk_ids.shape[0], dtype=bool)
        if allowed is not None:
            keep &= np.isin(chunk_ids, allowed)
        if excluded is not None:
            keep &= ~np.isin(chunk_ids, excluded)
        if not keep.any():
            continue
        if keep.all():
            block, block_ids = vectors[start : start + step], chunk_ids
        else:
            rows = np.flatnonzero(keep) + start
            block, block_ids = vectors[rows], chunk_ids[keep]
        top.push(q @ f32(block).T, block_ids)
    return top.result()


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] & true[:k]| / (number of true ids in the first k).

    -1 (padding) never counts. Queries whose ground truth is empty are skipped; 1.0 if all are.
    """
    per_query = recall_per_query(found_ids, true_ids, k)
    return float(per_query.mean()) if per_query.size else 1.0


def recall_per_query(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> np.ndarray:
    found = np.asarray(found_ids)[:, :k]
    true = np.asarray(true_ids)[:, :k]
    out = []
    for f, t in zip(found, true):
        t = t[t >= 0]
        if t.size:
            out.append(np.intersect1d(f[f >= 0], t).size / t.size)
    return np.asarray(out, dtype=np.float64)
