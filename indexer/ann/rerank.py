"""Exact re-ranking of an index's candidates from the collection's stored vectors.

A compressed index (PQ, fast-scan PQ, SQ8) orders its candidates by approximate scores; the search
re-scores the first ``rerank x k`` of them exactly from the stored vectors (a
:data:`~indexer.store.vectors.VectorLookup`) and keeps the best k (:func:`rerank`). The tuner scores
candidate lists at several depths at once (:func:`candidate_scores`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from indexer.ann.exact import EXACT_CHUNK_BYTES, f32
from indexer.store.vectors import VectorLookup

__all__ = ["rerank", "rerank_stored", "candidate_scores"]


def rerank(q: np.ndarray, cand: np.ndarray, k: int, lookup: VectorLookup) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for candidate ids (m, kk) from stored vectors; the best k per row.

    FAISS scores every row against its own candidates in place and keeps the best k
    (``knn_inner_products_by_idx``): no (rows x kk, d) copies of the queries or of the candidates,
    which cost more than the scoring itself. One query with a lookup that gives its rows as stored
    (``stored``: float16 for a collection) is scored by :func:`rerank_stored`.
    """
    import faiss

    stored = getattr(lookup, "stored", None)
    if q.shape[0] == 1 and stored is not None:
        return rerank_stored(q, cand[0], k, stored)
    m, kk = cand.shape
    out_s = np.full((m, k), -np.inf, dtype=np.float32)
    out_i = np.full((m, k), -1, dtype=np.int64)
    for rows, valid, uniq, vecs, pos, qb in _candidate_blocks(q, cand, lookup):
        if (valid[:, 1:] & ~valid[:, :-1]).any():  # FAISS stops a row at its first -1: valid ones first
            pos = np.take_along_axis(pos, np.argsort(~valid, axis=1, kind="stable"), axis=1)
        b = qb.shape[0]
        vals = np.empty((b, k), dtype=np.float32)
        at = np.empty((b, k), dtype=np.int64)
        faiss.knn_inner_products_by_idx(
            faiss.swig_ptr(qb), faiss.swig_ptr(vecs), faiss.swig_ptr(pos), qb.shape[1], b, uniq.size, kk, k,
            faiss.swig_ptr(vals), faiss.swig_ptr(at), kk,
        )  # fmt: skip
        found = at >= 0
        out_s[rows][found] = vals[found]
        out_i[rows][found] = uniq[at[found]]
    return out_s, out_i


_SCORERS = threading.local()


def rerank_stored(q: np.ndarray, cand: np.ndarray, k: int, stored: Any) -> tuple[np.ndarray, np.ndarray]:
    """The best k of one query's candidate ids (kk,) by exact score, from their rows as stored.

    float16 rows are scored as FAISS scores float16 codes (``IndexScalarQuantizer``, QT_fp16:
    exact float16 -> float32 in SIMD registers, float32 products): at 512-d, 200 candidates in
    ~23 us against ~80 us to convert them to float32 first (numpy's or FAISS's decoder, ~0.8 ns a
    value) and score those. The same scores, to float32 rounding. One small index per thread and
    dimension, refilled per query."""
    import faiss

    out_s = np.full((1, k), -np.inf, dtype=np.float32)
    out_i = np.full((1, k), -1, dtype=np.int64)
    ids = np.unique(cand[cand >= 0])
    if ids.size == 0:
        return out_s, out_i
    rows = stored(ids)
    take = min(k, ids.size)
    if rows.dtype == np.float16:
        index = _fp16_scorer(q.shape[1])
        index.reset()
        faiss.copy_array_to_vector(np.ascontiguousarray(rows).view(np.uint8).reshape(-1), index.codes)
        index.ntotal = ids.size
        scores, at = index.search(q, take)
        index.reset()
    else:
        scores, at = faiss.knn(q, f32(rows), take, metric=faiss.METRIC_INNER_PRODUCT)
    out_s[:, :take], out_i[:, :take] = scores, ids[at]
    return out_s, out_i


def _fp16_scorer(d: int) -> Any:
    import faiss

    cache = getattr(_SCORERS, "by_d", None)
    if cache is None:
        cache = _SCORERS.by_d = {}
    index = cache.get(d)
    if index is None:
        index = cache[d] = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return index


def candidate_scores(q: np.ndarray, cand: np.ndarray, lookup: VectorLookup) -> np.ndarray:
    """Exact scores (m, kk) float32 of each row's candidate ids (m, kk) from stored vectors, -inf
    where a candidate is missing (-1)."""
    import faiss

    m, kk = cand.shape
    out = np.full((m, kk), -np.inf, dtype=np.float32)
    for rows, valid, _uniq, vecs, pos, qb in _candidate_blocks(q, cand, lookup):
        got = np.empty((qb.shape[0], kk), dtype=np.float32)
        sp = faiss.swig_ptr
        faiss.fvec_inner_products_by_idx(sp(got), sp(qb), sp(vecs), sp(pos), qb.shape[1], qb.shape[0], kk)
        got[~valid] = -np.inf  # FAISS leaves them unset (or -inf, by version)
        out[rows] = got
    return out


def _candidate_blocks(
    q: np.ndarray, cand: np.ndarray, lookup: VectorLookup
) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """The rows of ``cand`` (m, kk) in blocks whose fetched candidate vectors stay under ~32 MiB,
    each as (rows, valid (b, kk), its distinct ids, their float32 vectors, every candidate's row in
    those vectors (-1: missing), the block's float32 queries); blocks without candidates are skipped."""
    m, kk = cand.shape
    block = max(1, EXACT_CHUNK_BYTES // (4 * q.shape[1] * max(1, kk)))
    for start in range(0, m, block):
        rows = slice(start, min(m, start + block))
        c = cand[rows]
        valid = c >= 0
        if not valid.any():
            continue
        uniq, inverse = np.unique(c[valid], return_inverse=True)
        vecs = np.ascontiguousarray(f32(lookup(uniq)))
        pos = np.full(c.shape, -1, dtype=np.int64)
        pos[valid] = inverse.reshape(-1)
        yield rows, valid, uniq, vecs, pos, np.ascontiguousarray(q[rows], dtype=np.float32)
