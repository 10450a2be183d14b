"""Tuning an index's search parameters to a recall target, measured against exact search.

After building, the search parameters (``nprobe`` for IVF, ``efSearch`` for HNSW, ``k_factor`` for an
in-index refine, ``rerank`` for a compressed IVF) are set to the smallest values reaching recall@10 >=
``recall_target`` against exact search. The tuning queries are ``TUNE_QUERIES`` vectors sampled (seeded)
from the collection itself, each with its own id excluded from both the exact and the approximate
results: a stored vector would otherwise find itself first and inflate recall, and with its own id
removed a stored vector is statistically a held-out query from the same distribution. A setting
"reaches" the target when its mean recall minus one standard error does, so unseen queries meet the
target with ~84% rather than ~50% confidence. Text queries (CLIP's modality gap puts them further
from every image) can be harder than image queries; a caller can pass its own ``tuning_queries``
(e.g. embedded taxon names) to tune for them instead.

For IVF, ``filter_budget`` is tuned too, on synthetic filters whose exact results are gathered in the
same pass: 1%, 10% and 50% of the ids (by hash), and ``TUNE_REGIONS`` regions (each the ~10% of vectors
most similar to one vector, as a taxon or one institution's holdings are) judged on the third of the
tuning queries furthest from them. It is the smallest multiplier of the filtered candidate budget
(:mod:`indexer.ann.search`) for which the policy, exact-subset path excluded, reaches the target under
every one of them; their recall is stored in ``info.tuning["filtered_recall"]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from indexer.ann.exact import TopK, as_matrix, f32, recall_per_query
from indexer.ann.search import EF_SEARCH_MAX
from indexer.store.vectors import VectorLookup

if TYPE_CHECKING:  # pragma: no cover
    from indexer.ann.index import AnnIndex

__all__ = ["TuningSet", "tune", "TUNE_K", "TUNE_QUERIES", "TUNE_REGIONS"]

TUNE_K = 10
TUNE_QUERIES = 500
TUNE_REGIONS = 3
RERANK_MAX = 64


@dataclass
class _TuningFilter:
    """A synthetic filter for tuning filtered search: membership test, allowed ids, exact top-k."""

    name: str
    member: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (block vectors, block ids) -> mask
    top: TopK
    rows: np.ndarray | None = None  # the tuning queries it is judged on (None: all)
    parts: list[np.ndarray] = field(default_factory=list)

    def allowed(self) -> np.ndarray:
        return np.sort(np.concatenate(self.parts)) if self.parts else np.zeros(0, dtype=np.int64)


def _uniform_member(per_mille: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Ids whose multiplicative hash falls in the first ``per_mille`` of 1000 buckets."""

    def member(block: np.ndarray, block_ids: np.ndarray) -> np.ndarray:
        hashed = (block_ids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
        return hashed % np.uint64(1000) < np.uint64(per_mille)

    return member


@dataclass
class TuningSet:
    """Tuning queries and their exact top-k, unfiltered and under synthetic filters, built while
    the vectors stream past (one pass over the data)."""

    queries: np.ndarray
    query_ids: np.ndarray | None  # own ids to exclude (None for external queries)
    top: TopK
    method: str
    filters: list[_TuningFilter] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.queries.shape[0]

    @classmethod
    def make(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        rng: np.random.Generator,
        external: np.ndarray | None,
        with_filters: bool,
    ) -> TuningSet:
        n, d = vectors.shape
        if external is not None:
            q = f32(as_matrix(external, d, "tuning_queries"))
            tq = cls(q, None, TopK(q.shape[0], TUNE_K), "external queries")
        else:
            m = min(TUNE_QUERIES, n)
            rows = np.sort(rng.choice(n, size=m, replace=False))
            tq = cls(f32(vectors[rows]), ids[rows], TopK(m, TUNE_K), "sampled vectors, own id excluded")
        if with_filters:
            tq.filters = [
                _TuningFilter("uniform 1%", _uniform_member(10), TopK(tq.size, TUNE_K)),
                _TuningFilter("uniform 10%", _uniform_member(100), TopK(tq.size, TUNE_K)),
                _TuningFilter("uniform 50%", _uniform_member(500), TopK(tq.size, TUNE_K)),
            ]
            tq.filters += [tq._region(f"region 10% #{i + 1}", rng, 0.1) for i in range(TUNE_REGIONS)]
        return tq

    def _region(self, name: str, rng: np.random.Generator, fraction: float) -> _TuningFilter:
        """The ~``fraction`` of vectors most similar to one anchor vector: a filter concentrated in one
        region of the space, as a taxon or one institution's holdings are, judged on the third of the
        tuning queries least similar to the anchor (the hard case: queries far from the region). The
        threshold is the (1 - fraction) quantile of the tuning queries' own similarities."""
        anchor = self.queries[int(rng.integers(self.size))].copy()
        closeness = self.queries @ anchor
        threshold = float(np.quantile(closeness, 1.0 - fraction))
        far = np.sort(np.argsort(closeness)[: max(1, self.size // 3)])
        return _TuningFilter(name, lambda block, block_ids: block @ anchor >= threshold, TopK(self.size, TUNE_K), far)

    def push(self, block: np.ndarray, block_ids: np.ndarray) -> None:
        scores = self.queries @ block.T
        if self.query_ids is not None:
            scores[self.query_ids[:, None] == block_ids[None, :]] = -np.inf
        self.top.push(scores, block_ids)
        for flt in self.filters:
            keep = flt.member(block, block_ids)
            if keep.any():
                flt.top.push(scores[:, keep], block_ids[keep])
                flt.parts.append(block_ids[keep])

    def truth(self) -> np.ndarray:
        return self.top.result()[1]


def tune(
    ann: AnnIndex, tq: TuningSet, target: float, lookup: VectorLookup | None
) -> tuple[dict[str, int], float, dict[str, float]]:
    """Smallest parameters reaching ``target`` recall@TUNE_K; the best found when none does.

    "Reaching" means the mean recall minus one standard error of that mean is >= target, so that
    recall on unseen queries is at least the target with ~84% rather than ~50% confidence (500
    queries: one standard error is ~0.005). For IVF, ``filter_budget`` is then tuned so that the
    selector path (forced, whatever the set size) reaches the target under every synthetic filter.
    Returns (params, mean recall at those params, filtered recall per synthetic filter).
    """
    lay = ann.layout
    extra = 0 if tq.query_ids is None else 1

    own_ids = tq.query_ids

    def score(found: np.ndarray, truth: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, float]:
        if own_ids is not None:
            found = _drop_own(found, own_ids if rows is None else own_ids[rows], TUNE_K)
        per_query = recall_per_query(found, truth, TUNE_K)
        if per_query.size == 0:
            return 1.0, 1.0
        se = per_query.std() / math.sqrt(per_query.size)
        return float(per_query.mean()), float(per_query.mean() - se)

    truth = tq.truth()

    def recall(p: dict[str, int]) -> tuple[float, float]:
        return score(ann.search(tq.queries, TUNE_K + extra, params=p, vector_lookup=lookup)[1], truth)

    if lay.kind == "flat":
        # Exact search: recall is 1 by definition. (Measured by ids it can look lower when many
        # vectors are identical, e.g. one placeholder image reused by many records: ties.)
        return {}, 1.0, {}
    if lay.kind == "hnsw":
        ef, r = _smallest(lambda v: recall({"efSearch": v}), 16, EF_SEARCH_MAX, target)
        return {"efSearch": ef}, r, {}
    nlist = lay.leaf.nlist
    params: dict[str, int] = {}
    knob = "k_factor" if lay.refine is not None else ("rerank" if lookup is not None else None)
    if knob is not None:
        # first the candidate depth at a generous nprobe, then the smallest nprobe at that depth
        wide = min(nlist, 256)
        params[knob], _ = _smallest(lambda v: recall({"nprobe": wide, knob: v}), 1, RERANK_MAX, target)
    params["nprobe"], r = _smallest(lambda v: recall({**params, "nprobe": v}), 1, nlist, target)
    if not tq.filters:
        return params, r, {}
    cases = []
    for flt in tq.filters:
        allowed = flt.allowed()
        rows = np.arange(tq.size) if flt.rows is None else flt.rows
        if allowed.size >= TUNE_K:
            cases.append((flt.name, allowed, rows, flt.top.result()[1][rows]))
    seen: dict[int, dict[str, tuple[float, float]]] = {}

    def worst(budget: int) -> tuple[float, float]:
        p = {**params, "filter_budget": budget}
        seen[budget] = {
            name: score(
                ann.search(
                    tq.queries[rows],
                    TUNE_K + extra,
                    allowed_ids=allowed,
                    params=p,
                    vector_lookup=lookup,
                    exact_subsets=False,
                )[1],
                true,
                rows,
            )
            for name, allowed, rows, true in cases
        }
        return min(seen[budget].values(), key=lambda v: v[1], default=(1.0, 1.0))

    params["filter_budget"], _ = _smallest(worst, 1, 64, target)
    return params, r, {name: round(v[0], 4) for name, v in seen.get(params["filter_budget"], {}).items()}


def _drop_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own id and keep the first k of the rest."""
    out = np.full((found.shape[0], k), -1, dtype=np.int64)
    for i, (row, me) in enumerate(zip(found, own)):
        rest = row[row != me][:k]
        out[i, : rest.size] = rest
    return out


def _smallest(evaluate: Callable[[int], tuple[float, float]], lo: int, hi: int, target: float) -> tuple[int, float]:
    """Smallest integer v in [lo, hi] whose evaluate(v) = (value, lower bound) has lower bound >= target,
    assuming (near) monotonicity: doubling from lo, then bisection. Returns (v, value). When none
    reaches the target: the v with the best value (the smallest such v)."""
    seen: dict[int, tuple[float, float]] = {}

    def ok(v: int) -> bool:
        if v not in seen:
            seen[v] = evaluate(v)
        return seen[v][1] >= target

    v = lo
    while not ok(v) and v < hi:
        v = min(hi, v * 2)
    if not ok(v):
        best = max(seen, key=lambda key: (seen[key][0], -key))
        return best, seen[best][0]
    below = max([u for u in seen if u < v and not ok(u)], default=lo - 1)
    good = v
    while good - below > 1:
        mid = (good + below) // 2
        if ok(mid):
            good = mid
        else:
            below = mid
    return good, seen[good][0]
