"""Searching a FAISS index, with or without a filter: the policy that keeps filtered recall up.

``allowed`` restricts results to a set of ids; ``excluded`` removes ids (retired ids on an index that
cannot remove, e.g. HNSW). Results only ever hold ids that are in the index. Three paths, by the size
s of the allowed set:

* exact over just the allowed vectors when s <= ``FILTER_EXACT_MAX_FLOATS`` / d
  (``HNSW_FILTER_EXACT_MAX_FLOATS`` for HNSW, whose filtered graph search is weaker), fetched with
  ``vector_lookup`` (Flat and HNSW indexes reconstruct their own). Recall 1, cost linear in s and
  dominated by the lookup; below these sizes it is faster than the selector path, which is nearly
  exhaustive at such selectivities.
* unfiltered search post-filtered when s >= ``POSTFILTER_MIN_SELECTIVITY`` of the index:
  ``POSTFILTER_OVERFETCH`` x k / p results with parameters x ``filter_budget``, keeping the allowed
  ones. It costs about one unfiltered search, without the O(s) work a selector needs (a bitmap over
  the ids plus their lists). Rows left with fewer than k go on to the next path.
* otherwise the selector path: the index is searched with a FAISS selector (a bitmap over the ids
  when that is compact, else a hash set). For a plain IVF index the compensation is local: each query
  probes its nearest lists, in centroid order and skipping lists with no allowed ids, until they hold
  ``filter_budget`` x nprobe x (mean list length) allowed vectors, the number an unfiltered search
  scores. A uniform filter at selectivity p thus probes ~nprobe / p lists, and a filter concentrated in
  one region probes that region's lists even when the query lies elsewhere. Other index types multiply
  nprobe / efSearch by ``filter_budget`` / p (bounded by nlist / ``EF_SEARCH_MAX``); rows still short
  are retried at 4x, then searched exactly when the vectors can be had.

Known limitation: HNSW cannot compensate locally. A filter concentrated in one region of the space
with a query lying elsewhere leaves the graph search among non-allowed nodes
(tests/test_engine_filtered.py marks it); uniform filters are fine. This is one more reason HNSW is
never chosen automatically.

Threads: nothing here changes FAISS's thread count; a serving process should call
``faiss.omp_set_num_threads(1)`` and answer concurrent users from several threads or processes
(single queries are fastest on one thread). Query-time scoring uses FAISS kernels rather than
numpy's matmul, whose multithreaded BLAS is slow per call on a busy machine.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.ann.exact import MiB, TopK, f32, rows_per_chunk
from indexer.ann.layout import IdLists, Layout, Selector
from indexer.ann.rerank import rerank as _rerank
from indexer.errors import AnnError
from indexer.store.vectors import VectorLookup

__all__ = ["Request", "Searcher", "empty_result"]

log = logging.getLogger(__name__)

FILTER_EXACT_MAX_FLOATS = 1 << 22
"""Allowed sets of up to this many floats (ids x d: 8,192 at 512-d) are searched exactly over their vectors."""
HNSW_FILTER_EXACT_MAX_FLOATS = 1 << 24
"""The same for HNSW (32,768 at 512-d), whose graph search degrades faster under filters."""
POSTFILTER_MIN_SELECTIVITY = 0.25
"""Allowed sets covering at least this fraction of the index are searched unfiltered and post-filtered."""
POSTFILTER_OVERFETCH = 2.0
EF_SEARCH_MAX = 4096
QUANTIZER_EF_MIN = 128
QUANTIZER_EF_PER_PROBE = 2
"""An HNSW coarse quantizer searches with efSearch = max(QUANTIZER_EF_MIN, this x nprobe): with the
graph's own efSearch (128), a text query's nearest lists were found so poorly (text queries lie far
from every centroid) that text recall@10 stopped near 0.94 at nprobe 256 and 1024 on the 1M x 512
modality-gap testbed, where a flat quantizer gives 0.985; at 2 x nprobe it gives 0.984."""

RERANK_MAX = 256
"""Deepest re-rank tuned or searched (candidates = RERANK_MAX x k): text queries need far deeper
re-ranking than image queries on PQ codes, their top scores being close together (0.30 vs 0.28)."""


@dataclass(frozen=True)
class Request:
    """One search: queries (m, d) float32 C-contiguous, k, the parameters in force, and the stored
    vectors by id (for exact re-ranking and the exact path; None: not available)."""

    q: np.ndarray
    k: int
    params: dict[str, int]
    lookup: VectorLookup | None = None

    def rows(self, rows: np.ndarray | slice) -> Request:
        return dataclasses.replace(self, q=self.q[rows])

    def with_k(self, k: int) -> Request:
        return dataclasses.replace(self, k=k)


class Searcher:
    """The search paths over one FAISS index (see the module docstring). Thread-safe: the id ->
    list map is built once, on the first filtered search, and dropped by :meth:`invalidate`."""

    def __init__(self, index: Any, layout: Layout):
        self.index = index
        self.layout = layout
        self._lists_lock = threading.Lock()
        self._id_lists: IdLists | None = None
        self._hnsw_quantizer = layout.kind == "ivf" and _has_hnsw_quantizer(layout.leaf)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    def invalidate(self) -> None:
        """Forget what depends on the index's contents (after add or remove)."""
        with self._lists_lock:
            self._id_lists = None

    def lists(self) -> IdLists:
        with self._lists_lock:
            if self._id_lists is None:
                self._id_lists = IdLists.of(self.layout)
            return self._id_lists

    # -- entry points ----------------------------------------------------------------------------

    def unfiltered(self, req: Request, excluded: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Every id may come back but ``excluded`` (sorted, or None)."""
        if self.ntotal == 0:
            return empty_result(req.q.shape[0], req.k)
        n_excl = 0 if excluded is None else excluded.size
        selectivity = max(1.0 / self.ntotal, 1.0 - n_excl / self.ntotal)
        want = min(req.k, max(0, self.ntotal - n_excl))
        return self._compensated(req, Selector(None, excluded), selectivity, want, None)

    def filtered(self, req: Request, allowed: np.ndarray, exact_ok: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The filter policy for sorted allowed ids: post-filter large sets, the rest (and rows the
        post-filter left short) by the allowed-set paths. ``exact_ok=False`` (tuning) never takes the
        exact-subset path."""
        if allowed.size == 0 or self.ntotal == 0:
            return empty_result(req.q.shape[0], req.k)
        if self.layout.kind == "flat" or allowed.size < POSTFILTER_MIN_SELECTIVITY * self.ntotal:
            return self._allowed(req, allowed, exact_ok)
        scores, ids, short = self._postfilter(req, allowed)
        if short.any():
            rows = np.flatnonzero(short)
            scores[rows], ids[rows] = self._allowed(req.rows(rows), allowed, exact_ok)
        return scores, ids

    # -- paths -----------------------------------------------------------------------------------

    def _allowed(self, req: Request, allowed: np.ndarray, exact_ok: bool) -> tuple[np.ndarray, np.ndarray]:
        """Small sets exactly over their vectors, larger ones through the selector path."""
        where = self.lists().lists_of(allowed)
        if not bool((where >= 0).all()):
            allowed, where = allowed[where >= 0], where[where >= 0]  # only ids in the index
            if allowed.size == 0:
                return empty_result(req.q.shape[0], req.k)
        limit = HNSW_FILTER_EXACT_MAX_FLOATS if self.layout.kind == "hnsw" else FILTER_EXACT_MAX_FLOATS
        if exact_ok and allowed.size * self.dimension <= limit and self.layout.kind != "flat":
            exact = self.exact_subset(req.q, req.k, allowed, req.lookup)
            if exact is not None:
                return exact
        return self._selector_path(req, allowed, where)

    def _postfilter(self, req: Request, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Over-fetch unfiltered and keep the allowed results: for large allowed sets, where it costs
        about one unfiltered search and none of the O(allowed) work of building a selector.

        Fetches ``POSTFILTER_OVERFETCH * k / selectivity`` results (80 at 25%, 40 at 50%) with the
        search parameters scaled by ``filter_budget``. Returns (scores, ids, short rows): a row is
        short when fewer than k allowed ids came back; the caller searches those again.
        """
        k, p = req.k, req.params
        selectivity = min(1.0, allowed.size / self.ntotal)
        fetch = min(self.ntotal, math.ceil(POSTFILTER_OVERFETCH * k / selectivity))
        budget = float(p.get("filter_budget", 1))
        scores, ids = self._faiss(req.with_k(fetch), Selector(None, None), budget, depth=budget)
        pos = np.minimum(np.searchsorted(allowed, ids), allowed.size - 1)
        ok = (allowed[pos] == ids) & (ids >= 0)
        first = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # allowed results first, in score order
        keep = np.take_along_axis(ok, first, axis=1)
        scores = np.where(keep, np.take_along_axis(scores, first, axis=1), -np.inf).astype(np.float32)
        ids = np.where(keep, np.take_along_axis(ids, first, axis=1), -1)
        short = keep.sum(axis=1) < min(k, allowed.size)
        return scores, ids, short

    def _selector_path(self, req: Request, allowed: np.ndarray, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The selector path for ``allowed`` (sorted, all in the index; ``where`` their lists)."""
        selector = Selector(allowed, None)
        lay = self.layout
        if lay.kind == "ivf" and lay.idmap is None and not lay.wrappers:
            nlist = lay.leaf.nlist
            counts = np.bincount(where, minlength=nlist)
            # queries in blocks: the per-query list ranking is (queries x nlist)
            block = max(1, (1 << 22) // nlist)
            parts = [
                self._ivf_local(req.rows(slice(i, i + block)), selector, counts)
                for i in range(0, req.q.shape[0], block)
            ]
            return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])
        budget = req.params.get("filter_budget", 1)
        selectivity = allowed.size / max(1, self.ntotal) / budget
        return self._compensated(req, selector, selectivity, min(req.k, allowed.size), allowed, depth=budget)

    def exact_subset(
        self, q: np.ndarray, k: int, allowed: np.ndarray, lookup: VectorLookup | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Exact search over just the allowed vectors; None when their vectors cannot be had."""
        fetch = lookup or (self._reconstruct if self.layout.can_reconstruct else None)
        if fetch is None:
            return None
        import faiss

        top = TopK(q.shape[0], k)
        step = rows_per_chunk(self.dimension, q.shape[0], 16 * MiB)
        try:
            for start in range(0, allowed.size, step):
                chunk = allowed[start : start + step]
                vecs = f32(fetch(chunk))
                if vecs.shape != (chunk.size, self.dimension):
                    raise AnnError(f"vector_lookup returned shape {vecs.shape} for {chunk.size} ids")
                # FAISS's kernel, not numpy's: it runs on the caller's OpenMP thread budget, whereas
                # numpy's threaded BLAS is slow per call on a busy machine
                scores, rows = faiss.knn(q, vecs, min(k, chunk.size), metric=faiss.METRIC_INNER_PRODUCT)
                top.push(np.where(rows >= 0, scores, -np.inf).astype(np.float32), np.where(rows >= 0, chunk[rows], -1))
        except (RuntimeError, KeyError, IndexError) as exc:
            if lookup is not None:
                raise AnnError(f"vector_lookup failed: {exc}") from exc
            log.debug("reconstruct failed (%s); using the selector path", exc)
            return None
        return top.result()

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self.index.reconstruct_batch(np.ascontiguousarray(ids))

    def _compensated(
        self,
        req: Request,
        selector: Selector,
        selectivity: float,
        want: int,
        allowed: np.ndarray | None,
        depth: float = 1.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search through FAISS with selectivity-compensated parameters, retrying rows that come back
        short; ``depth`` multiplies the re-rank depth (:func:`filtered_depth`)."""
        boost = 1.0 / selectivity
        scores, ids = self._faiss(req, selector, boost, depth=depth)
        short = (ids >= 0).sum(axis=1) < want
        while short.any() and self._can_boost(req.params, boost):
            boost *= 4
            rows = np.flatnonzero(short)
            s2, i2 = self._faiss(req.rows(rows), selector, boost, depth=depth)
            scores[rows], ids[rows] = s2, i2
            short[rows] = (i2 >= 0).sum(axis=1) < want
        if short.any() and allowed is not None:
            rows = np.flatnonzero(short)
            exact = self.exact_subset(req.q[rows], req.k, allowed, req.lookup)
            if exact is not None:
                scores[rows], ids[rows] = exact
        return scores, ids

    def _ivf_local(self, req: Request, selector: Selector, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Filtered IVF search compensated by *local* selectivity.

        Each query probes its nearest lists, in centroid order, until they hold as many allowed
        vectors as an unfiltered search would score (tuned nprobe x mean list length), skipping lists
        that hold none. A filter uniform over the collection at selectivity p then probes about
        nprobe / p lists; a filter concentrated in one region (a taxon, one institution) probes the
        lists of that region even when the query lies elsewhere. Lists are scanned with the selector,
        so the cost of a probed list is one bitmap test per vector plus a distance per allowed one.
        """
        import faiss

        q, k, p, lookup = req.q, req.k, req.params, req.lookup
        ivf = self.layout.leaf
        lists = np.flatnonzero(counts)
        m = q.shape[0]
        if lists.size == 0:
            return empty_result(m, k)
        rerank = filtered_depth(p, p.get("filter_budget", 1)) if (lookup is not None and self.layout.lossy) else 1
        kk = k * rerank
        budget = max(kk, math.ceil(p.get("filter_budget", 1) * p["nprobe"] * self.ntotal / ivf.nlist))
        coarse, ranked = _rank_lists(ivf, q, lists)  # (m, L) each, nearest list first
        covered = np.cumsum(counts[ranked], axis=1)
        width = np.minimum((covered < budget).sum(axis=1) + 1, lists.size)
        w = int(width.max())
        assign = np.ascontiguousarray(ranked[:, :w], dtype=np.int64)
        dis = np.ascontiguousarray(coarse[:, :w], dtype=np.float32)
        assign[np.arange(w)[None, :] >= width[:, None]] = -1  # FAISS skips list -1
        params = faiss.SearchParametersIVF(nprobe=w)
        params.sel = selector.sel
        scores = np.empty((m, kk), dtype=np.float32)
        ids = np.empty((m, kk), dtype=np.int64)
        sp = faiss.swig_ptr
        ivf.search_preassigned_c(m, sp(q), kk, sp(assign), sp(dis), sp(scores), sp(ids), False, params)
        if rerank > 1 and lookup is not None:
            scores, ids = _rerank(q, ids, k, lookup)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _can_boost(self, p: dict[str, int], boost: float) -> bool:
        """Whether the parameters used at ``boost`` were below their caps (a larger boost can help)."""
        lay = self.layout
        if lay.kind == "ivf":
            return math.ceil(p["nprobe"] * boost) < lay.leaf.nlist
        if lay.kind == "hnsw":
            return math.ceil(p["efSearch"] * boost) < EF_SEARCH_MAX
        return False  # flat with a selector is exact already

    def candidates(self, q: np.ndarray, k: int, params: dict[str, int]) -> np.ndarray:
        """Ids (m, k) of an unfiltered FAISS search at ``params``, in the index's (approximate) order,
        without re-ranking or retries: a search at re-rank depth v re-scores the first v x k of them."""
        sp, keep = self._search_parameters(params, None, 1.0)
        ids = self.index.search(q, k, params=sp)[1]
        del keep
        return ids

    def _faiss(
        self, req: Request, selector: Selector, boost: float, depth: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        lookup = req.lookup
        rerank = filtered_depth(req.params, depth) if (lookup is not None and self.layout.lossy) else 1
        kk = req.k * rerank
        params, keep = self._search_parameters(req.params, selector.sel, boost)
        scores, ids = self.index.search(req.q, kk, params=params)
        del keep
        if rerank > 1 and lookup is not None:
            scores, ids = _rerank(req.q, ids, req.k, lookup)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _search_parameters(self, p: dict[str, int], sel: Any, boost: float) -> tuple[Any, list[Any]]:
        """The SearchParameters tree for this index, with ``sel`` on the leaf (translated under an IDMap)."""
        import faiss

        lay = self.layout
        keep: list[Any] = [sel]
        if sel is not None and lay.idmap is not None:
            # IndexIDMap translates only a selector set on the top-level params; ours sits on the leaf,
            # which may be under a refine or pre-transform, so translate it ourselves (IDMap then leaves
            # an IDSelectorTranslated alone).
            sel = faiss.IDSelectorTranslated(lay.idmap.id_map, sel)
            keep.append(sel)
        if lay.kind == "ivf":
            nprobe = min(lay.leaf.nlist, math.ceil(p["nprobe"] * boost))
            leaf = faiss.SearchParametersIVF(nprobe=nprobe)
            if self._hnsw_quantizer:
                ef = min(EF_SEARCH_MAX, max(QUANTIZER_EF_MIN, QUANTIZER_EF_PER_PROBE * nprobe))
                leaf.quantizer_params = faiss.SearchParametersHNSW(efSearch=ef)
                keep.append(leaf.quantizer_params)
        elif lay.kind == "hnsw":
            leaf = faiss.SearchParametersHNSW(efSearch=min(EF_SEARCH_MAX, math.ceil(p["efSearch"] * boost)))
        else:
            leaf = faiss.SearchParameters()
        if sel is not None:
            leaf.sel = sel
        params = leaf
        keep.append(leaf)
        for wrapper in reversed(lay.wrappers):
            if isinstance(wrapper, faiss.IndexRefine):
                params = faiss.IndexRefineSearchParameters(k_factor=float(p.get("k_factor", 1)))
                params.base_index_params = keep[-1]
            else:
                params = faiss.SearchParametersPreTransform()
                params.index_params = keep[-1]
            keep.append(params)
        return params, keep


def filtered_depth(params: dict[str, int], budget: float) -> int:
    """The re-rank depth of a search whose candidate budget is ``budget`` x the unfiltered one (a
    filtered search: ``filter_budget``): the tuned depth times the budget, at most ``RERANK_MAX``.
    A filter whose allowed vectors lie away from the query (a family, for an image of another one)
    leaves candidates whose scores are close together, as a text query's are, and compressed codes
    rank them poorly: at 1M x 512 with 4-bit codes, image queries under a one-family 10% filter
    found 0.90 of their results at the unfiltered depth."""
    depth = int(params.get("rerank", 1))
    return depth if budget <= 1 else min(RERANK_MAX, math.ceil(depth * budget))


def _has_hnsw_quantizer(ivf: Any) -> bool:
    import faiss

    return isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)


def _rank_lists(ivf: Any, q: np.ndarray, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inner products of each query with the centroids of ``lists`` and those lists, best first:
    (scores (m, L), lists (m, L)). Few lists: their centroids are copied and scored; many: the
    coarse quantizer's flat storage is searched in full and the other lists dropped."""
    import faiss

    quantizer = faiss.downcast_index(ivf.quantizer)
    flat = faiss.downcast_index(quantizer.storage) if isinstance(quantizer, faiss.IndexHNSW) else quantizer
    metric = faiss.METRIC_INNER_PRODUCT
    if not isinstance(flat, faiss.IndexFlat) or lists.size * 8 < ivf.nlist:
        sub = f32(_centroids(ivf, flat)[lists])
        scores, pos = faiss.knn(q, sub, lists.size, metric=metric)
        return scores, lists[pos]
    scores, ranked = flat.search(q, ivf.nlist)
    if lists.size == ivf.nlist:
        return scores, ranked
    keep = np.zeros(ivf.nlist, dtype=bool)
    keep[lists] = True
    mask = keep[ranked]  # every row holds each list once, so each row keeps exactly L entries
    return scores[mask].reshape(q.shape[0], lists.size), ranked[mask].reshape(q.shape[0], lists.size)


def _centroids(ivf: Any, flat: Any) -> np.ndarray:
    """The IVF centroids, (nlist, d) float32: a view of a flat quantizer's storage, else reconstructed."""
    import faiss

    if isinstance(flat, faiss.IndexFlat):
        return faiss.rev_swig_ptr(flat.get_xb(), ivf.nlist * ivf.d).reshape(ivf.nlist, ivf.d)
    return flat.reconstruct_n(0, ivf.nlist)


def empty_result(m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((m, k), -np.inf, dtype=np.float32), np.full((m, k), -1, dtype=np.int64)
