"""Ranking: nearest neighbours over the ANN index and the not-yet-indexed vectors, pages, groups."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.ann import exact_search
from indexer.ann.info import applied_recall
from indexer.search.query import Grouping, record_key
from indexer.search.results import Hit
from indexer.search.state import ServedState
from indexer.store.ids import member, remove

__all__ = ["Page", "knn", "ranked", "group_hits", "recall_applied"]


@dataclass(frozen=True)
class Page:
    """One page of a ranking: the query vector (1, d), ``k`` hits after ``offset``, the ids that may
    (``allowed``, sorted live ids) or may not (``exclude``) come back, a minimum score, grouping,
    and the query's kind (image, text or mixed)."""

    qvec: np.ndarray
    k: int
    offset: int = 0
    allowed: np.ndarray | None = None
    exclude: np.ndarray | None = None
    min_score: float | None = None
    grouping: Grouping | None = None
    kind: str = "image"  # the query's kind: which tuned index parameters search it


def knn(
    state: ServedState,
    queries: np.ndarray,
    k: int,
    allowed: np.ndarray | None,
    exclude: np.ndarray | None,
    kind: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the k nearest live images for each query row (m, d), merged over the ANN
    index (with the parameters tuned for queries of ``kind``) and the not-yet-indexed segments
    (searched exactly); rows padded with (-inf, -1). ``allowed`` (sorted, unique and live) or
    ``exclude`` (sorted unique), or None."""
    queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32).reshape(-1, state.snapshot.dimension))
    m = queries.shape[0]
    parts_s, parts_i = [], []
    if allowed is not None and exclude is not None:
        allowed = remove(allowed, exclude)
    if state.index is not None and state.index.ntotal and (allowed is None or allowed.size):
        kwargs: dict[str, Any] = {"vector_lookup": state.snapshot.vector_lookup, "kind": kind}
        if allowed is not None:
            kwargs["allowed_ids"] = allowed
        else:
            excluded = state.index_excluded
            if exclude is not None:
                excluded = exclude if excluded is None else np.union1d(excluded, exclude)
            if excluded is not None and excluded.size:
                kwargs["excluded_ids"] = excluded
        s, i = state.index.search(queries, k, **kwargs)
        parts_s.append(s)
        parts_i.append(i)
    if state.delta_ids is not None and len(state.delta_ids):
        ids, vecs = state.delta_ids, state.delta_vecs
        mask = None
        if allowed is not None:
            mask = member(ids, allowed)
        elif exclude is not None:
            mask = ~member(ids, exclude)
        if mask is not None:
            ids, vecs = ids[mask], vecs[mask]
        if len(ids):
            s, i = exact_search(vecs, ids, queries, k)
            parts_s.append(s)
            parts_i.append(i)
    if not parts_s:
        return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
    s = np.concatenate(parts_s, axis=1)
    i = np.concatenate(parts_i, axis=1)
    s = np.where(i < 0, -np.inf, s)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(s, order, axis=1)
    i = np.take_along_axis(i, order, axis=1)
    if s.shape[1] < k:
        pad = k - s.shape[1]
        s = np.concatenate([s, np.full((m, pad), -np.inf, np.float32)], axis=1)
        i = np.concatenate([i, np.full((m, pad), -1, np.int64)], axis=1)
    return s.astype(np.float32), i.astype(np.int64)


def recall_applied(state: ServedState, kind: str) -> dict[str, Any]:
    """The recall figure and search parameters that applied to a query of ``kind`` on ``state``
    (see :func:`indexer.ann.info.applied_recall`): the served index's, for that kind; with no
    index (or an empty one), exact search."""
    index = state.index
    if index is None or not index.ntotal:
        return applied_recall(None, kind)
    return applied_recall(index.info, kind, index.search_params(kind))


def ranked(state: ServedState, page: Page, timings: dict[str, float]) -> tuple[list[Hit], bool]:
    """The page of hits (or group leaders) and whether a further page has results; the time spent
    searching and fetching metadata goes into ``timings`` (ms)."""
    k, offset, grouping = page.k, page.offset, page.grouping
    want = offset + k
    if grouping is None:
        t = time.perf_counter()
        pairs = _pairs(state, page, want + 1)
        timings["search"] = (time.perf_counter() - t) * 1000
        has_more = len(pairs) > want
        shown = pairs[offset:want]
        t = time.perf_counter()
        meta = state.metadata([i for _, i in shown])
        timings["metadata"] = (time.perf_counter() - t) * 1000
        # An id retired between the vector search and the lookup has no metadata: leave it out.
        return [Hit(i, s, meta[i]["location"], meta[i]) for s, i in shown if i in meta], has_more

    depth = min(grouping.max_candidates, max(4 * want, want + 32))
    timings["search"] = timings["metadata"] = 0.0
    while True:
        t = time.perf_counter()
        pairs = _pairs(state, page, depth)
        timings["search"] += (time.perf_counter() - t) * 1000
        exhausted = len(pairs) < depth
        t = time.perf_counter()
        meta = state.metadata([i for _, i in pairs])
        timings["metadata"] += (time.perf_counter() - t) * 1000
        hits = [Hit(i, s, meta[i]["location"], meta[i]) for s, i in pairs if i in meta]
        groups = group_hits(hits, grouping, state.vectors if grouping.similarity is not None else None)
        if len(groups) > want or exhausted or depth >= grouping.max_candidates:
            break
        depth = min(grouping.max_candidates, depth * 4)
    has_more = len(groups) > want or not exhausted
    return groups[offset:want], has_more


def _pairs(state: ServedState, page: Page, depth: int) -> list[tuple[float, int]]:
    scores, ids = knn(state, page.qvec, depth, page.allowed, page.exclude, page.kind)
    pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
    if page.min_score is not None:
        pairs = [(s, i) for s, i in pairs if s >= page.min_score]
    return pairs


def group_hits(hits: list[Hit], grouping: Grouping, lookup: Callable[[np.ndarray], np.ndarray] | None) -> list[Hit]:
    """Fold ``hits`` (score order) into groups; returns the leaders with ``group`` filled in."""
    leaders: list[Hit] = []
    members: list[list[Hit]] = []
    by_key: dict[str, int] = {}
    vecs = lookup(np.array([h.id for h in hits], dtype=np.int64)) if lookup is not None and hits else None
    leader_rows: list[int] = []
    for row, h in enumerate(hits):
        g = None
        key = record_key(h.metadata) if grouping.by_record else None
        if key is not None:
            g = by_key.get(key)
        if g is None and vecs is not None and leader_rows:
            sims = vecs[leader_rows] @ vecs[row]
            close = np.flatnonzero(sims >= grouping.similarity)
            if close.size:
                g = int(close[0])
        if g is None:
            g = len(leaders)
            leaders.append(h)
            members.append([])
            leader_rows.append(row)
        else:
            members[g].append(h)
        if key is not None:
            by_key.setdefault(key, g)
    return [Hit(h.id, h.score, h.location, h.metadata, tuple(m)) for h, m in zip(leaders, members)]
