"""The search parameters each index type has, in the order they are tuned, and what a query costs.

A :class:`ParamSpace` lists an index's knobs: each is set, in order, to the smallest integer in its
range that reaches the recall target, holding the knobs before it at their tuned values and any
``hold`` values while it is tuned. New index types (IVF over an HNSW quantizer, on-disk lists)
get their own space here and the tuner (:mod:`indexer.ann.tuning`) needs no change.

* Flat: nothing to tune (exact).
* HNSW: ``efSearch``.
* IVF: for a compressed index searched with the stored vectors at hand, first the re-rank depth
  (``rerank``: candidates x k re-scored exactly; ``k_factor`` for an in-index refine) at a generous
  ``nprobe``, then ``nprobe`` at that depth; then ``filter_budget`` (the filtered candidate budget,
  :mod:`indexer.ann.search`) on the synthetic filters.

Cost (:func:`query_cost`) is measured in floats read per query, the unit of the latency budget
``LATENCY_BUDGET_FLOATS``: the same 2**25 floats an exact search may scan
(:data:`indexer.ann.choice.EXACT_MAX_SCAN_FLOATS`, ~5 ms on one core). An IVF query reads the
centroids (nlist x d), then its probed lists (d floats per vector for Flat and SQ8 codes, m bytes
for PQm, m/16 for 4-bit fast-scan PQm: ``FAST_SCAN_BYTES_PER_FLOAT``), then the re-ranked
candidates (d each); an HNSW query reads d floats per distance it computes (FAISS's own count).
Parameters that reach the target only above the budget are reported as missing it: such an index
gives away what it is for, being no faster than exact search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from indexer.ann.choice import EXACT_MAX_SCAN_FLOATS
from indexer.ann.layout import Layout
from indexer.ann.search import EF_SEARCH_MAX, RERANK_MAX

if TYPE_CHECKING:  # pragma: no cover
    from indexer.ann.index import AnnIndex

__all__ = ["Knob", "ParamSpace", "param_space", "query_cost", "LATENCY_BUDGET_FLOATS", "RERANK_MAX", "WIDE_NPROBE"]

WIDE_NPROBE = 256
"""nprobe held while the re-rank depth is tuned (all lists for smaller indexes)."""
FILTER_BUDGET_MAX = 64
FAST_SCAN_MIN_RERANK = 4
"""The shallowest re-rank of fast-scan codes: 4-bit codes order the neighbours of a new image less
reliably than those of a stored one, on which image queries are tuned (at depth 2, 100K x 512,
held-out images reached recall@10 0.947 where stored ones measured 0.955); depth 4 re-scores 40
candidates, ~0.05 ms at 512-d."""
FAST_SCAN_BYTES_PER_FLOAT = 8
"""Bytes of fast-scan code that cost what one float of a re-ranked vector costs: 32 codes are scored
at once from lookup tables in registers (measured at 1M x 512 on one core: ~25 ns per 128-byte code
scanned, ~2.2 ns per float of a re-ranked float16 vector)."""
LATENCY_BUDGET_FLOATS = EXACT_MAX_SCAN_FLOATS


@dataclass(frozen=True)
class Knob:
    """One search parameter: tuned to the smallest value in [lo, hi] reaching the target, with
    ``hold`` parameters set while it is tuned (and then dropped)."""

    name: str
    lo: int
    hi: int
    hold: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamSpace:
    """An index type's knobs in tuning order, and the knob tuned on the synthetic filters (or None)."""

    knobs: tuple[Knob, ...]
    filter_knob: Knob | None = None


def param_space(layout: Layout, reranks: bool) -> ParamSpace:
    """The knobs of an index of ``layout``; ``reranks``: a lossy IVF index searched with the stored
    vectors at hand (re-ranked exactly)."""
    if layout.kind == "flat":
        return ParamSpace(())
    if layout.kind == "hnsw":
        return ParamSpace((Knob("efSearch", 16, EF_SEARCH_MAX),))
    nlist = int(layout.leaf.nlist)
    knobs = []
    depth = "k_factor" if layout.refine is not None else ("rerank" if reranks else None)
    if depth is not None:
        import faiss

        lo = FAST_SCAN_MIN_RERANK if depth == "rerank" and isinstance(layout.leaf, faiss.IndexIVFFastScan) else 1
        knobs.append(Knob(depth, lo, RERANK_MAX, {"nprobe": min(nlist, WIDE_NPROBE)}))
    knobs.append(Knob("nprobe", 1, nlist))
    return ParamSpace(tuple(knobs), Knob("filter_budget", 1, FILTER_BUDGET_MAX))


def query_cost(ann: AnnIndex, params: dict[str, int], queries: np.ndarray, k: int) -> float:
    """Mean floats read per query at ``params`` (see the module docstring), over ``queries``."""
    lay = ann.layout
    d = ann.dimension
    if lay.kind == "flat":
        return float(ann.ntotal * d)
    if lay.kind == "hnsw":
        import faiss

        stats = faiss.cvar.hnsw_stats
        stats.reset()
        ann.search(queries, k, params={"efSearch": params.get("efSearch", 64)})
        return float(stats.ndis) * d / max(1, queries.shape[0])
    import faiss

    ivf = lay.leaf
    nprobe = min(int(params.get("nprobe", 1)), int(ivf.nlist))
    _, lists = ivf.quantizer.search(np.ascontiguousarray(queries, dtype=np.float32), nprobe)
    sizes = np.array([ivf.invlists.list_size(int(j)) for j in range(ivf.nlist)], dtype=np.float64)
    scanned = sizes[lists[lists >= 0]].sum() / max(1, queries.shape[0])
    per_code: float = d if not lay.lossy or isinstance(ivf, faiss.IndexIVFScalarQuantizer) else int(ivf.code_size)
    if isinstance(ivf, faiss.IndexIVFFastScan):
        per_code = ivf.code_size / FAST_SCAN_BYTES_PER_FLOAT
    coarse = ivf.nlist * d
    if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW):
        coarse = 2 * 32 * nprobe * d  # a graph quantizer visits a few hundred centroids, not all
    rerank = params.get("rerank", params.get("k_factor", 1))
    return float(coarse + scanned * per_code + (rerank * k * d if rerank > 1 else 0))
