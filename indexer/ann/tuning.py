"""Tuning an index's search parameters per query kind, to a recall target measured against exact search.

For every kind in the :class:`~indexer.ann.tuning_set.TuningSet` (image, text, mixed), each knob of
the index's :class:`~indexer.ann.params.ParamSpace` is set, in order, to the smallest value that
reaches recall@10 >= ``target`` on that kind's queries against exact search. A setting "reaches"
the target when its mean recall minus one standard error of that mean does, so unseen queries of
that kind meet the target with ~84% rather than ~50% confidence (500 queries: one standard error
is ~0.005). Text queries sit far from every image (CLIP's modality gap), so their neighbours spread
over more of the index: they need their own, larger parameters, and an index tuned on image
queries alone under-serves them. The re-rank depth is tuned from one search at the deepest depth
tried, whose candidates are scored exactly once; every shallower depth is read off them. Deeper
re-ranks with fewer lists are then tried, and the cheapest pair that reaches the target is kept.

For IVF, ``filter_budget`` is then tuned per kind on the synthetic filters (uniform 1%, 10%, 50%;
regions of 10% around stored vectors, judged on the queries furthest from them): the smallest
multiplier of the filtered candidate budget for which the selector path (forced, whatever the set
size) reaches the target under every filter.

A kind "meets" the target when its parameters reach it and a query at those parameters reads at
most the latency budget (:data:`indexer.ann.params.LATENCY_BUDGET_FLOATS`); otherwise its
:class:`KindTuning` says why (``met=False``, ``note``), the build logs it, and the automatic index
choice moves on to another type (:func:`indexer.ann.build.build_index`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.ann.exact import TopK, recall_per_query
from indexer.ann.info import QUERY_KINDS
from indexer.ann.params import LATENCY_BUDGET_FLOATS, RERANK_MAX, Knob, param_space, query_cost
from indexer.ann.tuning_set import TUNE_K, TuningSet
from indexer.store.vectors import VectorLookup

if TYPE_CHECKING:  # pragma: no cover
    from indexer.ann.index import AnnIndex

__all__ = ["KindTuning", "tune", "smallest"]

FLAT_GAIN = 0.002
"""A doubling of a knob that gains less recall than this is flat (see :func:`smallest`'s ``patience``)."""


@dataclass
class KindTuning:
    """What tuning found for one query kind: parameters, mean recall@10 and its lower bound (mean
    minus one standard error), what the queries were, the cost per query, whether the target was
    met within the latency budget (and if not, why), and recall under each synthetic filter."""

    params: dict[str, int]
    recall: float
    recall_lower: float
    queries: str
    n_queries: int
    source: str
    cost_floats: float
    met: bool
    note: str = ""
    filtered_recall: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": dict(self.params),
            "recall": round(self.recall, 4),
            "recall_lower": round(self.recall_lower, 4),
            "queries": self.queries,
            "n_queries": self.n_queries,
            "source": self.source,
            "cost_floats": round(self.cost_floats),
            "met": self.met,
            "note": self.note,
            "filtered_recall": dict(self.filtered_recall),
        }


class _Scorer:
    """Recall (mean, mean - one standard error) of found ids against the tuning set's truth."""

    def __init__(self, ts: TuningSet):
        self.ts = ts
        self.extra = 1 if (ts.exclude >= 0).any() else 0

    def __call__(self, found: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> tuple[float, float]:
        excl = self.ts.exclude[rows]
        if self.extra:
            found = _drop_own(found, excl, TUNE_K)
        per_query = recall_per_query(found, truth, TUNE_K)
        if per_query.size == 0:
            return 1.0, 1.0
        se = per_query.std() / math.sqrt(per_query.size)
        return float(per_query.mean()), float(per_query.mean() - se)


def tune(
    ann: AnnIndex,
    ts: TuningSet,
    target: float,
    lookup: VectorLookup | None,
    *,
    budget_floats: float = LATENCY_BUDGET_FLOATS,
) -> dict[str, KindTuning]:
    """Per kind of ``ts``: the smallest parameters reaching ``target`` (the best found when none
    does), with their recall, cost, and the filtered recall at the tuned ``filter_budget``."""
    lay = ann.layout
    space = param_space(lay, reranks=lookup is not None and lay.lossy and lay.kind == "ivf")
    score = _Scorer(ts)
    truth = ts.truth()
    if lay.kind == "flat":  # every kind: exact search needs no tuning
        exact = float(ann.ntotal * ann.dimension)
        return {
            kind: KindTuning(
                {}, 1.0, 1.0, "none needed", 0, "exact", exact, True, "exact search: recall 1 by definition"
            )
            for kind in QUERY_KINDS
        }
    out: dict[str, KindTuning] = {}
    for kind, q in ts.described.items():
        rows = ts.rows(kind)
        queries = ts.queries[rows]

        seen: dict[tuple[tuple[str, int], ...], tuple[float, float]] = {}

        def recall(p: dict[str, int], rows=rows, queries=queries, seen=seen) -> tuple[float, float]:
            """(mean, lower bound) at ``p``, each setting searched once (the knob searches, the depth
            trade and the final figure ask for some settings again)."""
            key = tuple(sorted(p.items()))
            if key not in seen:
                found = ann.search(queries, TUNE_K + score.extra, params=p, vector_lookup=lookup)[1]
                seen[key] = score(found, truth[rows], rows)
            return seen[key]

        params: dict[str, int] = {}
        for knob in space.knobs:
            if knob.name == "rerank" and lookup is not None:
                depths = _RerankDepths(ann, queries, {**params, **knob.hold}, knob.hi, TUNE_K + score.extra, lookup)

                def at_depth(v: int, d: _RerankDepths = depths, r: np.ndarray = rows) -> tuple[float, float]:
                    return score(d.found(v), truth[r], r)

                params[knob.name] = smallest(at_depth, knob.lo, knob.hi, target)[0]
                continue
            params[knob.name] = _tune_knob(recall, params, knob, target)
        if "rerank" in params and "nprobe" in params and lookup is not None:

            def cost_of(p: dict[str, int], q: np.ndarray = queries) -> float:
                return query_cost(ann, p, q, TUNE_K)

            params = _trade_lists_for_depth(recall, params, target, cost_of)
        mean, lower = recall(params)
        cost = query_cost(ann, params, queries, TUNE_K)
        met, note = True, ""
        if lower < target:
            met = False
            note = (
                f"recall@{TUNE_K} {mean:.3f} < target {target:.3f} at the largest parameters tried ({_words(params)})"
            )
        elif cost > budget_floats:
            met = False
            note = (
                f"reaching the target needs {_words(params)}, {cost:,.0f} floats read per query: over the latency "
                f"budget of {budget_floats:,.0f} (an exact search's)"
            )
        tuning = KindTuning(params, mean, lower, q.describe(), q.size, q.source, cost, met, note)
        if space.filter_knob is not None and ts.filters:
            _tune_filters(ann, ts, kind, tuning, knob=space.filter_knob, target=target, lookup=lookup, score=score)
        out[kind] = tuning
    return out


class _RerankDepths:
    """The results of every re-rank depth from one search: the index's candidates at the deepest
    depth ``hi`` are scored exactly once, and depth v keeps the best ``k`` of the first v x ``k`` of
    them, the candidates a search at depth v re-scores (an index's top v x k is a prefix of its top
    hi x k). One search and one re-scoring instead of one of each per depth tried."""

    def __init__(
        self, ann: AnnIndex, queries: np.ndarray, params: dict[str, int], hi: int, k: int, lookup: VectorLookup
    ):
        from indexer.ann.rerank import candidate_scores

        self.k = k
        self.ids = ann.candidates(queries, k * hi, params)
        self.scores = candidate_scores(np.ascontiguousarray(queries, dtype=np.float32), self.ids, lookup)

    def found(self, depth: int) -> np.ndarray:
        """Ids (m, k) a search re-ranking ``depth`` x k candidates returns, best first (-1: none)."""
        width = min(self.ids.shape[1], depth * self.k)
        if depth <= 1:  # depth 1 is no re-rank: the index's own order
            out = np.full((self.ids.shape[0], self.k), -1, dtype=np.int64)
            out[:, :width] = self.ids[:, :width]
            return out
        top = TopK(self.ids.shape[0], self.k)
        top.push(self.scores[:, :width], self.ids[:, :width])
        return top.result()[1]


DEPTH_TRADES = (2, 4)
"""Multiples of the tuned re-rank depth tried with fewer lists (:func:`_trade_lists_for_depth`)."""


def _trade_lists_for_depth(
    recall: Callable[[dict[str, int]], tuple[float, float]],
    params: dict[str, int],
    target: float,
    cost: Callable[[dict[str, int]], float],
) -> dict[str, int]:
    """The cheapest (``cost``) of the tuned (re-rank depth, nprobe) and of deeper re-ranks with the
    fewest lists that reach ``target`` at them. The depth is tuned first at a wide nprobe and nprobe
    then at that depth, which finds the shallowest depth, not the cheapest pair: a text query on
    4-bit codes reached the target at depth 10 with 202 of 4,096 lists, and at depth 20 with ~100
    (1M x 512, ``bench/query_kinds.py``), for half the cost."""
    best, best_cost = params, cost(params)
    for factor in DEPTH_TRADES:
        depth = min(RERANK_MAX, params["rerank"] * factor)
        if depth <= params["rerank"]:
            break
        base = {**params, "rerank": depth}

        def at(v: int, b: dict[str, int] = base) -> tuple[float, float]:
            return recall({**b, "nprobe": v})

        nprobe, _ = smallest(at, max(1, params["nprobe"] // 8), params["nprobe"], target)
        trial = {**base, "nprobe": nprobe}
        if recall(trial)[1] < target:
            continue
        trial_cost = cost(trial)
        if trial_cost < best_cost:
            best, best_cost = trial, trial_cost
    return best


def _tune_knob(
    recall: Callable[[dict[str, int]], tuple[float, float]], params: dict[str, int], knob: Knob, target: float
) -> int:
    """The smallest value of ``knob`` reaching ``target``, the knobs tuned before it at ``params``."""
    base = {**params, **knob.hold}
    value, _ = smallest(lambda v: recall({**base, knob.name: v}), knob.lo, knob.hi, target)
    return value


def _tune_filters(
    ann: AnnIndex,
    ts: TuningSet,
    kind: str,
    tuning: KindTuning,
    *,
    knob: Knob,
    target: float,
    lookup: VectorLookup | None,
    score: _Scorer,
) -> None:
    """Set ``tuning.params[knob.name]`` (filter_budget) for ``kind`` and record the filtered recall."""
    own = ts.rows(kind)
    cases = []
    for flt in ts.filters:
        allowed = flt.allowed()
        rows = own if flt.rows is None else flt.rows[kind]
        if allowed.size >= TUNE_K and rows.size:
            cases.append((flt.name, allowed, rows, flt.top.result()[1][rows]))
    seen: dict[int, dict[str, tuple[float, float]]] = {}
    base = dict(tuning.params)

    def worst(budget: int) -> tuple[float, float]:
        p = {**base, knob.name: budget}
        seen[budget] = {
            name: score(
                ann.search(
                    ts.queries[rows],
                    TUNE_K + score.extra,
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

    value, _ = smallest(worst, knob.lo, knob.hi, target, patience=2)
    tuning.params[knob.name] = value
    tuning.filtered_recall = {name: round(v[0], 4) for name, v in seen.get(value, {}).items()}
    low = [name for name, v in seen.get(value, {}).items() if v[1] < target]
    if low:
        tuning.met = False
        tuning.note = "; ".join(
            filter(None, [tuning.note, f"filtered recall under target ({', '.join(low)}) at {knob.name} {value}"])
        )


def _words(params: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in params.items()) or "no parameters"


def _drop_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Remove each row's own id (-1: none) and keep the first k of the rest."""
    out = np.full((found.shape[0], k), -1, dtype=np.int64)
    for i, (row, me) in enumerate(zip(found, own)):
        rest = row[(row != me) | (me < 0)][:k]
        out[i, : rest.size] = rest
    return out


def smallest(
    evaluate: Callable[[int], tuple[float, float]], lo: int, hi: int, target: float, *, patience: int | None = None
) -> tuple[int, float]:
    """Smallest integer v in [lo, hi] whose evaluate(v) = (value, lower bound) has lower bound >= target,
    assuming (near) monotonicity: doubling from lo, then bisection. Returns (v, value). When none
    reaches the target: the v with the best value (the smallest such v). ``patience``: stop doubling
    once that many doublings in a row gained less than ``FLAT_GAIN`` over the best value so far (a
    knob that no longer helps, such as the filter budget when the codes limit recall)."""
    seen: dict[int, tuple[float, float]] = {}

    def ok(v: int) -> bool:
        if v not in seen:
            seen[v] = evaluate(v)
        return seen[v][1] >= target

    v = lo
    top, flat = -math.inf, 0
    while not ok(v) and v < hi:
        if patience is not None:
            flat = flat + 1 if seen[v][0] < top + FLAT_GAIN else 0
            top = max(top, seen[v][0])
            if flat >= patience:
                break
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
