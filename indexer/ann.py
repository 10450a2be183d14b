"""The ANN index layer: FAISS index choice, build, tuning to a recall target, (filtered) search, save/load.

Contracts
---------
* Vectors are rows of shape (n, d), float32 or float16 (a ``np.memmap`` is fine), L2-normalised.
  Similarity is the inner product (= cosine); every score returned is an inner product, higher is better.
* Every vector carries a stable int64 id chosen by the caller (not necessarily contiguous); every search
  returns those ids. Rows with fewer than k results are padded with id -1 and score -inf.
* The index is derived data. :func:`build_index` makes it from stored vectors; :meth:`AnnIndex.save`
  writes it atomically with an :class:`IndexInfo` JSON sidecar (``PATH.json``); :meth:`AnnIndex.load`
  reads both back, memory-mapped on request.
* :func:`exact_search` is brute force and the ground truth that tests, tuning and benchmarks compare with.

Index choice (:func:`choose_index`), measured on 2 cores with clustered 512-d vectors (bench/search.py)
------------------------------------------------------------------------------------------------------
* ``Flat`` (exact) while one query scans at most ``EXACT_MAX_SCAN_FLOATS`` = 2**25 floats (128 MiB), that is
  up to 65,536 vectors at 512-d and 43,690 at 768-d. A single-threaded exact query costs about 0.07 ms per
  1,000 vectors at 512-d (3.6 ms at 50K, 7.3 ms at 100K), so the threshold keeps exact search inside the
  5 ms single-query budget; exact search is also what every other type falls back to.
* ``IVF{nlist},Flat`` above that when the float32 vectors fit the memory budget. At 1M x 512 it is
  tuned to nprobe 29 of 4096 lists: recall@10 0.963 at 0.78-1.0 ms p50 (three runs on a shared
  machine), on par with HNSW32 at efSearch 256 (0.954 at 0.73-0.81 ms), and builds faster (138-198 s
  including k-means and tuning, against 155-239 s for HNSW32's graph alone). Unlike HNSW it supports ``remove``, memory-mapped loading of the vectors
  themselves, and filtered search that stays correct at low selectivity (plain HNSW32 with a selector:
  recall 0.24 at 0.1% selectivity, 0.75 at 1%). HNSW is accepted when forced (``factory="HNSW32"``)
  but never chosen.
* ``IVF{nlist},SQ8`` (d + 8 bytes per vector, 4x smaller) when float32 does not fit: at 1M x 512,
  recall@10 0.958 at nprobe 44 without any re-ranking, 509 MiB resident.
* ``IVF{nlist},PQ{m}`` (m + 8 bytes per vector) when even SQ8 does not fit: the largest m that fits,
  keeping sub-vectors of at least 8 dimensions (m <= 64 at 512-d, 96 at 768-d) to bound training time.
  PQ alone ranks poorly at 512-d (recall@10 0.37-0.46 for PQ64), so the refine step is an exact re-rank
  of ``rerank`` x k candidates against the collection's stored vectors (``vector_lookup``), which costs
  no index RAM. In-index refines (``,RFlat``, ``,Refine(SQ8)``) are accepted when forced but never
  chosen: wherever they fit, IVF-SQ8 alone fits too and reaches the target.
* ``nlist`` is the power of two nearest to 4 sqrt(n) (4096 at 1M, 32768 at 100M), with at least 39
  training vectors per list; from 16384 lists on, the coarse quantizer is itself an HNSW32 graph
  (``IVF{nlist}_HNSW32``) so assigning vectors and queries to lists stays cheap.

Build (:func:`build_index`)
---------------------------
Training uses a seeded sample of ``min(n, max(40 * nlist, 65536), 2**20)`` vectors: 40 per list (FAISS
asks for at least 39), and at least 65,536 for the SQ/PQ codebooks, trained on the same sample (FAISS
subsamples to 256 per centroid). Vectors are added in float32 chunks of ``ADD_CHUNK_BYTES``, so memory
stays flat whatever n is, and the same pass accumulates the exact ground truth for tuning: the vectors
are read once.

Tuning
------
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
(below) for which the policy, exact-subset path excluded, reaches the target under every one of
them; their recall is stored in
``info.tuning["filtered_recall"]``. The measured recall and the parameters are stored in
:class:`IndexInfo`.

Filtered search
---------------
``allowed_ids`` restricts results to a set of ids; ``excluded_ids`` removes ids (retired ids on an index
that cannot remove, e.g. HNSW). Results only ever hold ids that are in the index. Three paths, by the
size s of the allowed set, chosen from measurements at 1M x 512 (IVF4096,Flat at nprobe 29, one thread,
``vector_lookup`` reading the float16 vectors from a memory-mapped file, ~0.8 us per id):

* exact over just the allowed vectors when s <= ``FILTER_EXACT_MAX_FLOATS`` / d (8,192 ids at 512-d;
  ``HNSW_FILTER_EXACT_MAX_FLOATS``, 32,768, for HNSW, whose filtered graph search is weaker), fetched
  with ``vector_lookup`` (Flat and HNSW indexes reconstruct their own). Recall 1, cost linear in s and
  dominated by the lookup: 0.75 / 1.5 / 4.5 / 9 / 18 ms at 1K / 2K / 5K / 10K / 20K ids, against 1.9 /
  3.1 / 5.6 / 8.6 / 10 ms for the selector path, which is nearly exhaustive at such selectivities.
* unfiltered search post-filtered when s >= ``POSTFILTER_MIN_SELECTIVITY`` (25%) of the index:
  ``POSTFILTER_OVERFETCH`` x k / p results (40 at 50%) with parameters x ``filter_budget``, keeping the
  allowed ones. It costs about one unfiltered search, without the O(s) work a selector needs (a
  bitmap over 500K ids plus their lists: ~5 ms at 1M). Rows left with fewer than k go on to the next path.
* otherwise the selector path: the index is searched with a FAISS selector (a bitmap over the ids
  when that is compact, else a hash set). For a plain IVF index the compensation is local: each query
  probes its nearest lists, in centroid order and skipping lists with no allowed ids, until they hold
  ``filter_budget`` x nprobe x (mean list length) allowed vectors, the number an unfiltered search
  scores. A uniform filter at selectivity p thus probes ~nprobe / p lists, and a filter concentrated in
  one region probes that region's lists even when the query lies elsewhere (probing nprobe / p lists
  in centroid order found 0.93 of such results at 200K; local compensation 0.98). Other index types
  multiply nprobe / efSearch by ``filter_budget`` / p (bounded by nlist / ``EF_SEARCH_MAX``); rows still
  short are retried at 4x, then searched exactly when the vectors can be had.

Known limitation: HNSW cannot compensate locally. A filter concentrated in one region of the space
with a query lying elsewhere leaves the graph search among non-allowed nodes (recall ~0.6 at 10-50%
selectivity in tests/test_engine_filtered.py); uniform filters are fine. This is one more reason HNSW
is never chosen automatically.

Threads
-------
Single queries are fastest with one OpenMP thread on this 2-core machine (an exact query over 100K
vectors: 7.3 ms with 1 thread, 9.3 ms with 2; IVF parallelises over queries anyway). Builds use every
core. This module never changes the thread count; a serving process should call
``faiss.omp_set_num_threads(1)`` and answer concurrent users from several threads or processes.
Query-time scoring uses FAISS kernels rather than numpy's matmul, whose multithreaded BLAS spent ~8 ms
per call on this busy 2-core machine for what takes 1 ms on one thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import IndexerError

if TYPE_CHECKING:  # faiss is imported lazily: importing this module stays cheap
    pass

__all__ = [
    "AnnError",
    "AnnUnsupportedError",
    "AnnIndex",
    "IndexInfo",
    "VectorLookup",
    "choose_index",
    "build_index",
    "exact_search",
    "recall_at_k",
    "fits_incremental",
    "DEFAULT_MEMORY_BUDGET",
]

log = logging.getLogger(__name__)

VectorLookup = Callable[[np.ndarray], np.ndarray]
"""``lookup(ids int64 (m,)) -> float32 (m, d)``: row i is the stored vector of ``ids[i]``."""

FORMAT_VERSION = 1
GiB = 1 << 30
MiB = 1 << 20

DEFAULT_MEMORY_BUDGET = 16 * GiB
"""Budget used when none is given: generous for one serving machine; pass the real figure."""
EXACT_MAX_SCAN_FLOATS = 1 << 25
"""Flat (exact) while n * d <= this: 65,536 x 512 or 43,690 x 768, ~5 ms per single-threaded query."""
FILTER_EXACT_MAX_FLOATS = 1 << 22
"""Allowed sets of up to this many floats (ids x d: 8,192 at 512-d) are searched exactly over their vectors."""
HNSW_FILTER_EXACT_MAX_FLOATS = 1 << 24
"""The same for HNSW (32,768 at 512-d), whose graph search degrades faster under filters."""
POSTFILTER_MIN_SELECTIVITY = 0.25
"""Allowed sets covering at least this fraction of the index are searched unfiltered and post-filtered."""
POSTFILTER_OVERFETCH = 2.0
HNSW_QUANTIZER_MIN_NLIST = 16_384
TRAIN_PER_LIST = 40
KMEANS_NITER = 20
ADD_CHUNK_BYTES = 64 * MiB
EXACT_CHUNK_BYTES = 32 * MiB
TUNE_K = 10
TUNE_QUERIES = 500
TUNE_REGIONS = 3
EF_SEARCH_MAX = 4096
RERANK_MAX = 64
PQ_MAX_M = 128
PQ_MIN_SUBDIM = 8
_IDMAP2_BYTES = 8 + 40  # id_map entry + unordered_map reverse entry (approximate)
_IVF_ID_BYTES = 8


class AnnError(IndexerError):
    """The ANN index cannot be built, searched, saved or loaded as asked."""


class AnnUnsupportedError(AnnError):
    """The operation is not supported by this index type or in this mode (e.g. ``remove`` on HNSW,
    ``add`` on an index loaded memory-mapped read-only)."""


# --------------------------------------------------------------------------------------------------
# IndexInfo


@dataclass
class IndexInfo:
    """What an index is and how well it searches; saved as the JSON sidecar ``PATH.json``.

    ``params`` are the tuned search parameters (``nprobe``, ``efSearch``, ``k_factor``, ``rerank``,
    whichever apply). ``measured_recall`` is recall@10 against exact search on the tuning queries
    (None when not tuned). ``memory_bytes`` is an estimate of the resident size when loaded into RAM.
    ``tuning`` says how recall was measured; ``file_bytes`` is the size of the saved index file.
    """

    factory: str
    n: int
    dimension: int
    params: dict[str, int] = field(default_factory=dict)
    recall_target: float | None = None
    measured_recall: float | None = None
    bytes_per_vector: float = 0.0
    memory_bytes: int = 0
    build_seconds: float = 0.0
    tuning: dict[str, Any] = field(default_factory=dict)
    file_bytes: int | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> IndexInfo:
        """Parse a sidecar; unknown keys, missing keys and newer format versions are errors."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise AnnError(f"index sidecar is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise AnnError("index sidecar must hold a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise AnnError(f"index sidecar has unknown keys: {sorted(unknown)}")
        version = raw.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise AnnError(f"index format version {version!r} is newer than supported ({FORMAT_VERSION})")
        try:
            info = cls(**raw)
        except TypeError as exc:
            raise AnnError(f"index sidecar is incomplete: {exc}") from exc
        info.params = {str(k): int(v) for k, v in info.params.items()}
        return info


# --------------------------------------------------------------------------------------------------
# Exact search and recall


def _as_matrix(x: np.ndarray, d: int | None, what: str) -> np.ndarray:
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or (d is not None and arr.shape[1] != d):
        raise AnnError(f"{what} must have shape (n, {d if d is not None else 'd'}), got {arr.shape}")
    if arr.dtype not in (np.float32, np.float16):
        raise AnnError(f"{what} must be float32 or float16, got {arr.dtype}")
    return arr


def _f32(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 view or copy of a (chunk of a) matrix."""
    return np.ascontiguousarray(x, dtype=np.float32)


def _id_array(ids: Any, what: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise AnnError(f"{what} must be a 1-D array of integer ids")
    return arr.astype(np.int64, copy=False)


def _id_set(ids: np.ndarray | None, what: str) -> np.ndarray | None:
    """Sorted unique int64 ids, or None. Input that is already sorted and unique (as a metadata query
    usually returns it) is checked in O(n) and used as is, instead of sorted again."""
    if ids is None:
        return None
    arr = _id_array(ids, what)
    if arr.size < 2 or bool((arr[1:] > arr[:-1]).all()):
        return arr
    return np.unique(arr)


class _TopK:
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


def _rows_per_chunk(d: int, m: int, budget: int = EXACT_CHUNK_BYTES) -> int:
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
    vectors = _as_matrix(vectors, None, "vectors")
    n, d = vectors.shape
    ids = _id_array(ids, "ids")
    if ids.shape[0] != n:
        raise AnnError(f"ids has {ids.shape[0]} entries for {n} vectors")
    q = _f32(_as_matrix(queries, d, "queries"))
    if k < 1:
        raise AnnError("k must be >= 1")
    allowed = _id_set(allowed_ids, "allowed_ids")
    excluded = _id_set(excluded_ids, "excluded_ids")
    top = _TopK(q.shape[0], k)
    step = _rows_per_chunk(d, q.shape[0])
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
        top.push(q @ _f32(block).T, block_ids)
    return top.result()


def recall_at_k(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] & true[:k]| / (number of true ids in the first k).

    -1 (padding) never counts. Queries whose ground truth is empty are skipped; 1.0 if all are.
    """
    per_query = _recall_per_query(found_ids, true_ids, k)
    return float(per_query.mean()) if per_query.size else 1.0


def _recall_per_query(found_ids: np.ndarray, true_ids: np.ndarray, k: int) -> np.ndarray:
    found = np.asarray(found_ids)[:, :k]
    true = np.asarray(true_ids)[:, :k]
    out = []
    for f, t in zip(found, true):
        t = t[t >= 0]
        if t.size:
            out.append(np.intersect1d(f[f >= 0], t).size / t.size)
    return np.asarray(out, dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# Index choice


def ivf_nlist(n: int) -> int:
    """Number of inverted lists for n vectors: the power of two nearest 4 sqrt(n), >= 39 vectors per list."""
    if n < 2 * 39:
        return 1
    nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    while nlist > 1 and n < 39 * nlist:
        nlist //= 2
    return max(1, min(nlist, 1 << 18))


def _pq_choices(d: int) -> list[int]:
    """PQ sub-quantizer counts m (bytes per code) usable at dimension d, largest first.

    Sub-vectors keep at least ``PQ_MIN_SUBDIM`` dimensions: FAISS's k-means on very short sub-vectors
    is slow on CPU (4-d sub-vectors took ~2 s per sub-quantizer where 8-d took ~0.8 s, on fewer
    points), and with exact re-ranking more code bytes only save re-ranked candidates."""
    return [m for m in (128, 96, 64, 48, 32, 24, 16, 8, 4) if m <= PQ_MAX_M and m * PQ_MIN_SUBDIM <= d and d % m == 0]


def _ivf_prefix(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_MIN_NLIST else f"IVF{nlist}"


def _estimate(factory: str, n: int, d: int) -> tuple[float, int]:
    """(bytes per vector, total bytes) of a factory string when loaded into RAM.

    Covers the strings :func:`choose_index` produces plus HNSW{M}[,Flat] and a trailing RFlat /
    Refine(Flat|SQ8); raises :class:`AnnError` for anything else.
    """
    parts = factory.split(",")
    refine_bytes = 0
    if parts[-1] in ("RFlat", "Refine(Flat)"):
        refine_bytes, parts = 4 * d, parts[:-1]
    elif parts[-1] == "Refine(SQ8)":
        refine_bytes, parts = d, parts[:-1]
    idmap = _IDMAP2_BYTES if (refine_bytes or not parts[0].startswith("IVF")) else 0
    head, code = parts[0], (parts[1] if len(parts) > 1 else "Flat")
    if len(parts) > 2:
        raise AnnError(f"cannot estimate the size of {factory!r}")
    fixed = 0
    if head == "Flat":
        per = 4 * d
    elif head.startswith("HNSW") and head[4:].isdigit() and code == "Flat":
        per = 4 * d + 2 * int(head[4:]) * 4 * 1.05  # level 0 has 2M links; upper levels add ~5%
    elif head.startswith("IVF"):
        nlist_text, _, quantizer = head[3:].partition("_")
        if not nlist_text.isdigit():
            raise AnnError(f"cannot estimate the size of {factory!r}")
        nlist = int(nlist_text)
        fixed = nlist * d * 4 + nlist * 64 + (nlist * 2 * 32 * 4 if quantizer else 0)
        per = _code_bytes(code, d, factory) + _IVF_ID_BYTES
    else:
        raise AnnError(f"cannot estimate the size of {factory!r}")
    per = per + refine_bytes + idmap
    return float(per), int(per * n + fixed)


def _code_bytes(code: str, d: int, factory: str) -> int:
    if code == "Flat":
        return 4 * d
    if code == "SQ8":
        return d
    if code.startswith("PQ"):
        m, _, bits = code[2:].removesuffix("fs").partition("x")
        if m.isdigit() and (not bits or bits.isdigit()):
            return math.ceil(int(m) * int(bits or 8) / 8)
    raise AnnError(f"cannot estimate the size of {factory!r}")


def choose_index(n: int, d: int, memory_budget: int | None = None) -> str:
    """The FAISS index_factory string for n vectors of dimension d within ``memory_budget`` bytes.

    ``None`` means ``DEFAULT_MEMORY_BUDGET`` (16 GiB). In order of preference, the first that fits:
    ``Flat`` while n * d <= 2**25; ``IVF{nlist},Flat``; ``IVF{nlist},SQ8``; ``IVF{nlist},PQ{m}`` with the
    largest m that fits (see the module docstring for the measurements). Raises :class:`AnnError` when
    even the smallest PQ code does not fit.
    """
    if n < 0 or d < 1:
        raise AnnError(f"invalid collection size n={n}, d={d}")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise AnnError(f"memory budget must be positive, got {memory_budget}")
    if n * d <= EXACT_MAX_SCAN_FLOATS and _estimate("Flat", n, d)[1] <= budget:
        return "Flat"
    prefix = _ivf_prefix(ivf_nlist(n))
    candidates = [f"{prefix},Flat", f"{prefix},SQ8"] + [f"{prefix},PQ{m}" for m in _pq_choices(d)]
    for factory in candidates:
        if _estimate(factory, n, d)[1] <= budget:
            return factory
    smallest = _estimate(candidates[-1], n, d)[1]
    raise AnnError(
        f"a memory budget of {budget:,} bytes cannot hold {n:,} vectors of dimension {d}: "
        f"the smallest index ({candidates[-1]}) needs about {smallest:,} bytes"
    )


# --------------------------------------------------------------------------------------------------
# The structure of a FAISS index, as far as search parameters and capabilities go


@dataclass
class _Layout:
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
    def of(cls, index: Any) -> _Layout:
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


# --------------------------------------------------------------------------------------------------
# Selectors


class _Selector:
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


# --------------------------------------------------------------------------------------------------
# AnnIndex

_PARAM_NAMES = ("nprobe", "efSearch", "k_factor", "rerank", "filter_budget")


class AnnIndex:
    """A FAISS index over stable int64 ids, with its :class:`IndexInfo`.

    Thread safety: searches may run concurrently; ``add``/``remove`` must not overlap anything else.
    """

    def __init__(self, index: Any, info: IndexInfo, *, read_only: bool = False, source: Path | None = None):
        self._index = index
        self._layout = _Layout.of(index)
        self.info = info
        self._read_only = read_only
        self._source = source  # the file a memory-mapped index lives in
        self._lists_lock = threading.Lock()
        self._id_lists: _IdLists | None = None  # id -> inverted list, built on the first filtered search

    # ---- description

    @property
    def factory(self) -> str:
        return self.info.factory

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def supports_remove(self) -> bool:
        """False for HNSW and in-index refines (use ``excluded_ids``) and for memory-mapped indexes."""
        return self._layout.can_remove and not self._read_only

    @property
    def supports_add(self) -> bool:
        return not self._read_only

    @property
    def needs_vector_lookup(self) -> bool:
        """True when the tuned recall assumes search() is given ``vector_lookup`` (exact re-ranking)."""
        return self.info.params.get("rerank", 1) > 1

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (for inspection; mutate it only through this class)."""
        return self._index

    def __repr__(self) -> str:
        return f"AnnIndex({self.factory!r}, ntotal={self.ntotal}, d={self.dimension}, params={self.info.params})"

    # ---- mutation

    def add(self, vectors: np.ndarray, ids: np.ndarray, *, progress: Callable[[int, int], None] | None = None) -> None:
        """Add vectors (n, d) float32/float16 under new ids (n,), in chunks (memory stays flat).

        The ids must not already be in the index (adding an id twice stores it twice).
        Raises :class:`AnnUnsupportedError` on a read-only (memory-mapped) index.
        """
        if self._read_only:
            raise AnnUnsupportedError("this index was loaded memory-mapped read-only; load it with mmap=False to add")
        vectors = _as_matrix(vectors, self.dimension, "vectors")
        ids = _id_array(ids, "ids")
        if ids.shape[0] != vectors.shape[0]:
            raise AnnError(f"ids has {ids.shape[0]} entries for {vectors.shape[0]} vectors")
        self._id_lists = None
        for done, total in _add_chunks(self._index, vectors, ids):
            if progress:
                progress(done, total)
        self.info.n = self.ntotal

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids from the index; returns how many were removed (ids not present are ignored).

        Raises :class:`AnnUnsupportedError` where ``supports_remove`` is False: pass the retired ids
        as ``excluded_ids`` to :meth:`search` instead.
        """
        import faiss

        if not self.supports_remove:
            why = "loaded memory-mapped read-only" if self._read_only else f"a {self._layout.kind} index"
            raise AnnUnsupportedError(f"cannot remove from {self.factory!r} ({why}); exclude the ids at search time")
        ids = np.ascontiguousarray(_id_set(ids, "ids"))
        if ids.size == 0:
            return 0
        self._id_lists = None
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(ids.size, faiss.swig_ptr(ids))))
        self.info.n = self.ntotal
        return removed

    # ---- search

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        allowed_ids: np.ndarray | None = None,
        excluded_ids: np.ndarray | None = None,
        params: dict[str, int] | None = None,
        vector_lookup: VectorLookup | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores (m, k) float32, ids (m, k) int64), padded with (-inf, -1).

        ``queries`` (m, d) float32 (a single (d,) vector is accepted). ``allowed_ids``: only these ids
        may be returned (any order; sorted unique input skips a sort); ``excluded_ids``: these never
        are. Results only ever hold ids that are in the index. ``params`` overrides tuned parameters
        (``nprobe``, ``efSearch``, ``k_factor``, ``rerank``, ``filter_budget``). ``vector_lookup(ids) ->
        float32 (len(ids), d)`` gives stored vectors by id: it enables the exact path for small allowed
        sets and the exact re-ranking of compressed indexes (without it they return the codes'
        approximate order; see ``needs_vector_lookup``). See the module docstring for the filter policy.
        Memory: O(m k), plus O(len(allowed_ids)) for a filter (a bitmap over the ids, their lists),
        plus one ~16 MiB chunk of allowed vectors at a time on the exact path.
        """
        q = _f32(_as_matrix(queries, self.dimension, "queries"))
        if k < 1:
            raise AnnError("k must be >= 1")
        p = self._params(params)
        allowed = _id_set(allowed_ids, "allowed_ids")
        excluded = _id_set(excluded_ids, "excluded_ids")
        if allowed is not None and excluded is not None:
            allowed = np.setdiff1d(allowed, excluded, assume_unique=True)
            excluded = None
        if allowed is not None:
            allowed = allowed[allowed >= 0]
            if allowed.size == 0 or self.ntotal == 0:
                return _empty(q.shape[0], k)
            return self._search_filtered(q, k, p, allowed, vector_lookup)
        if self.ntotal == 0:
            return _empty(q.shape[0], k)
        n_excl = 0 if excluded is None else excluded.size
        selectivity = max(1.0 / self.ntotal, 1.0 - n_excl / self.ntotal)
        want = min(k, max(0, self.ntotal - n_excl))
        return self._ann_search(q, k, p, _Selector(None, excluded), selectivity, want, None, vector_lookup)

    def _search_filtered(
        self,
        q: np.ndarray,
        k: int,
        p: dict[str, int],
        allowed: np.ndarray,
        lookup: VectorLookup | None,
        exact_ok: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The filter policy for sorted allowed ids: post-filter large sets, the rest (and rows the
        post-filter left short) by :meth:`_search_allowed`. ``exact_ok=False`` (tuning) never takes
        the exact-subset path."""
        if self._layout.kind == "flat" or allowed.size < POSTFILTER_MIN_SELECTIVITY * self.ntotal:
            return self._search_allowed(q, k, p, allowed, lookup, exact_ok)
        scores, ids, short = self._postfilter(q, k, p, allowed, lookup)
        if short.any():
            rows = np.flatnonzero(short)
            scores[rows], ids[rows] = self._search_allowed(q[rows], k, p, allowed, lookup, exact_ok)
        return scores, ids

    def _search_allowed(
        self,
        q: np.ndarray,
        k: int,
        p: dict[str, int],
        allowed: np.ndarray,
        lookup: VectorLookup | None,
        exact_ok: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Small sets exactly over their vectors, larger ones through the selector path."""
        where = self._lists_for().lists_of(allowed)
        if not bool((where >= 0).all()):
            allowed, where = allowed[where >= 0], where[where >= 0]  # only ids in the index
            if allowed.size == 0:
                return _empty(q.shape[0], k)
        limit = HNSW_FILTER_EXACT_MAX_FLOATS if self._layout.kind == "hnsw" else FILTER_EXACT_MAX_FLOATS
        if exact_ok and allowed.size * self.dimension <= limit and self._layout.kind != "flat":
            exact = self._exact_subset(q, k, allowed, lookup)
            if exact is not None:
                return exact
        return self._filtered_ann(q, k, p, allowed, where, lookup)

    def _postfilter(
        self, q: np.ndarray, k: int, p: dict[str, int], allowed: np.ndarray, lookup: VectorLookup | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Over-fetch unfiltered and keep the allowed results: for large allowed sets, where it costs
        about one unfiltered search and none of the O(allowed) work of building a selector.

        Fetches ``POSTFILTER_OVERFETCH * k / selectivity`` results (80 at 25%, 40 at 50%) with the
        search parameters scaled by ``filter_budget``. Returns (scores, ids, short rows): a row is
        short when fewer than k allowed ids came back; the caller searches those again.
        """
        selectivity = min(1.0, allowed.size / self.ntotal)
        fetch = min(self.ntotal, math.ceil(POSTFILTER_OVERFETCH * k / selectivity))
        scores, ids = self._faiss_search(q, fetch, p, _Selector(None, None), float(p.get("filter_budget", 1)), lookup)
        pos = np.minimum(np.searchsorted(allowed, ids), allowed.size - 1)
        ok = (allowed[pos] == ids) & (ids >= 0)
        first = np.argsort(~ok, axis=1, kind="stable")[:, :k]  # allowed results first, in score order
        keep = np.take_along_axis(ok, first, axis=1)
        scores = np.where(keep, np.take_along_axis(scores, first, axis=1), -np.inf).astype(np.float32)
        ids = np.where(keep, np.take_along_axis(ids, first, axis=1), -1)
        short = keep.sum(axis=1) < min(k, allowed.size)
        return scores, ids, short

    def _filtered_ann(
        self,
        q: np.ndarray,
        k: int,
        p: dict[str, int],
        allowed: np.ndarray,
        where: np.ndarray,
        lookup: VectorLookup | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The selector path for ``allowed`` (sorted, all in the index; ``where`` their lists)."""
        selector = _Selector(allowed, None)
        if self._layout.kind == "ivf" and self._layout.idmap is None and not self._layout.wrappers:
            nlist = self._layout.leaf.nlist
            counts = np.bincount(where, minlength=nlist)
            # queries in blocks: the per-query list ranking is (queries x nlist)
            block = max(1, (1 << 22) // nlist)
            parts = [
                self._ivf_filtered_search(q[i : i + block], k, p, selector, counts, lookup)
                for i in range(0, q.shape[0], block)
            ]
            return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])
        selectivity = allowed.size / max(1, self.ntotal) / p.get("filter_budget", 1)
        return self._ann_search(q, k, p, selector, selectivity, min(k, allowed.size), allowed, lookup)

    def _params(self, override: dict[str, int] | None) -> dict[str, int]:
        p = dict(self.info.params)
        for key, value in (override or {}).items():
            if key not in _PARAM_NAMES:
                raise AnnError(f"unknown search parameter {key!r}; expected one of {_PARAM_NAMES}")
            if int(value) < 1:
                raise AnnError(f"search parameter {key} must be >= 1, got {value}")
            p[key] = int(value)
        if self._layout.kind == "ivf":
            p.setdefault("nprobe", min(8, self._layout.leaf.nlist))
        if self._layout.kind == "hnsw":
            p.setdefault("efSearch", 64)
        if self._layout.refine is not None:
            p.setdefault("k_factor", 1)
        return p

    def _exact_subset(
        self, q: np.ndarray, k: int, allowed: np.ndarray, lookup: VectorLookup | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Exact search over just the allowed vectors; None when their vectors cannot be had."""
        fetch = lookup or (self._reconstruct if self._layout.can_reconstruct else None)
        if fetch is None:
            return None
        import faiss

        top = _TopK(q.shape[0], k)
        step = _rows_per_chunk(self.dimension, q.shape[0], 16 * MiB)
        try:
            for start in range(0, allowed.size, step):
                chunk = allowed[start : start + step]
                vecs = _f32(fetch(chunk))
                if vecs.shape != (chunk.size, self.dimension):
                    raise AnnError(f"vector_lookup returned shape {vecs.shape} for {chunk.size} ids")
                # FAISS's kernel, not numpy's: it runs on the caller's OpenMP thread budget, whereas
                # numpy's threaded BLAS costs ~8 ms per call on a busy 2-core machine
                scores, rows = faiss.knn(q, vecs, min(k, chunk.size), metric=faiss.METRIC_INNER_PRODUCT)
                top.push(np.where(rows >= 0, scores, -np.inf).astype(np.float32), np.where(rows >= 0, chunk[rows], -1))
        except (RuntimeError, KeyError, IndexError) as exc:
            if lookup is not None:
                raise AnnError(f"vector_lookup failed: {exc}") from exc
            log.debug("reconstruct failed (%s); using the selector path", exc)
            return None
        return top.result()

    def _reconstruct(self, ids: np.ndarray) -> np.ndarray:
        return self._index.reconstruct_batch(np.ascontiguousarray(ids))

    def _ann_search(
        self,
        q: np.ndarray,
        k: int,
        p: dict[str, int],
        selector: _Selector,
        selectivity: float,
        want: int,
        allowed: np.ndarray | None,
        lookup: VectorLookup | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Search through FAISS with selectivity-compensated parameters, retrying rows that come back short."""
        boost = 1.0 / selectivity
        scores, ids = self._faiss_search(q, k, p, selector, boost, lookup)
        short = (ids >= 0).sum(axis=1) < want
        while short.any() and self._can_boost(p, boost):
            boost *= 4
            rows = np.flatnonzero(short)
            s2, i2 = self._faiss_search(q[rows], k, p, selector, boost, lookup)
            scores[rows], ids[rows] = s2, i2
            short[rows] = (i2 >= 0).sum(axis=1) < want
        if short.any() and allowed is not None:
            rows = np.flatnonzero(short)
            exact = self._exact_subset(q[rows], k, allowed, lookup)
            if exact is not None:
                scores[rows], ids[rows] = exact
        return scores, ids

    def _ivf_filtered_search(
        self,
        q: np.ndarray,
        k: int,
        p: dict[str, int],
        selector: _Selector,
        counts: np.ndarray,
        lookup: VectorLookup | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Filtered IVF search compensated by *local* selectivity.

        Each query probes its nearest lists, in centroid order, until they hold as many allowed
        vectors as an unfiltered search would score (tuned nprobe x mean list length), skipping lists
        that hold none. A filter uniform over the collection at selectivity p then probes about
        nprobe / p lists; a filter concentrated in one region (a taxon, one institution) probes the
        lists of that region even when the query lies elsewhere. Lists are scanned with the selector,
        so the cost of a probed list is one bitmap test per vector plus a distance per allowed one.
        """
        import faiss

        ivf = self._layout.leaf
        lists = np.flatnonzero(counts)
        m = q.shape[0]
        if lists.size == 0:
            return _empty(m, k)
        rerank = p.get("rerank", 1) if (lookup is not None and self._layout.lossy) else 1
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
        if rerank > 1:
            scores, ids = _rerank(q, ids, k, lookup)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _lists_for(self) -> _IdLists:
        with self._lists_lock:
            if self._id_lists is None:
                self._id_lists = _IdLists.of(self._layout)
            return self._id_lists

    def _can_boost(self, p: dict[str, int], boost: float) -> bool:
        """Whether the parameters used at ``boost`` were below their caps (a larger boost can help)."""
        lay = self._layout
        if lay.kind == "ivf":
            return math.ceil(p["nprobe"] * boost) < lay.leaf.nlist
        if lay.kind == "hnsw":
            return math.ceil(p["efSearch"] * boost) < EF_SEARCH_MAX
        return False  # flat with a selector is exact already

    def _faiss_search(
        self, q: np.ndarray, k: int, p: dict[str, int], selector: _Selector, boost: float, lookup: VectorLookup | None
    ) -> tuple[np.ndarray, np.ndarray]:
        rerank = p.get("rerank", 1) if (lookup is not None and self._layout.lossy) else 1
        kk = k * rerank
        params, keep = self._search_parameters(p, selector.sel, boost)
        scores, ids = self._index.search(q, kk, params=params)
        del keep
        if rerank > 1:
            scores, ids = _rerank(q, ids, k, lookup)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _search_parameters(self, p: dict[str, int], sel: Any, boost: float) -> tuple[Any, list[Any]]:
        """The SearchParameters tree for this index, with ``sel`` on the leaf (translated under an IDMap)."""
        import faiss

        lay = self._layout
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

    # ---- persistence

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to ``path`` and its info to ``path.json``, each atomically (temporary file in
        the same directory, fsync, rename). The index file is written first; :meth:`load` checks that
        the sidecar describes the file next to it (its size is recorded in ``info.file_bytes``)."""
        import faiss

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_name(path)
        try:
            if self._source is not None:
                # a memory-mapped index points into its file: writing it would record a reference to
                # that file, not the data. The file is read-only and unchanged, so copy it.
                shutil.copyfile(self._source, tmp)
            else:
                faiss.write_index(self._index, str(tmp))
            _fsync_file(tmp)
            self.info.file_bytes = tmp.stat().st_size
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _atomic_write_text(_sidecar(path), self.info.to_json())
        _fsync_dir(path.parent)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = False) -> AnnIndex:
        """Read an index saved by :meth:`save`.

        ``mmap=True`` maps the file instead of reading it (IVF lists with ``IO_FLAG_MMAP``, flat and
        HNSW storage with ``IO_FLAG_MMAP_IFC``, both read-only): the OS pages data in as searches touch
        it, so an index larger than RAM can be searched (resident: the coarse centroids and, for HNSW,
        graph metadata; after the first filtered search also the id -> list map, 4-12 bytes per
        vector). A mapped index is read-only: ``add`` and ``remove`` raise.
        """
        import faiss

        path = Path(path)
        if not path.is_file():
            raise AnnError(f"no index file at {path}")
        try:
            info = IndexInfo.from_json(_sidecar(path).read_text())
        except FileNotFoundError as exc:
            raise AnnError(f"index {path} has no sidecar {_sidecar(path).name}") from exc
        expected = info.file_bytes
        if expected is not None and expected != path.stat().st_size:
            raise AnnError(f"index {path} is {path.stat().st_size} bytes but its sidecar describes {expected}")
        flags = 0
        if mmap:
            is_ivf = any(part.startswith("IVF") for part in info.factory.split(","))
            flags = faiss.IO_FLAG_READ_ONLY | (faiss.IO_FLAG_MMAP if is_ivf else faiss.IO_FLAG_MMAP_IFC)
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise AnnError(f"cannot read index {path}: {exc}") from exc
        if index.d != info.dimension:
            raise AnnError(f"index {path} has dimension {index.d}, its sidecar says {info.dimension}")
        return cls(index, info, read_only=mmap, source=path.resolve() if mmap else None)


class _IdLists:
    """Which ids are in the index and, for IVF, which inverted list each is in.

    A dense int32 array indexed by id (4 bytes per id up to the largest id; -1 = absent) when ids
    are dense, else the sorted ids with their lists (12 bytes per vector). Built on the first filtered
    search and dropped on ``add``/``remove``.
    """

    def __init__(self, dense: np.ndarray | None, ids: np.ndarray | None, lists: np.ndarray | None):
        self.dense, self.ids, self.lists = dense, ids, lists

    @classmethod
    def of(cls, layout: _Layout) -> _IdLists:
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
    def build(cls, ids: np.ndarray, lists: np.ndarray) -> _IdLists:
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
        if self.ids.size == 0:
            return np.full(wanted.size, -1, dtype=np.int32)
        pos = np.minimum(np.searchsorted(self.ids, wanted), self.ids.size - 1)
        return np.where(self.ids[pos] == wanted, self.lists[pos], -1)


def _rank_lists(ivf: Any, q: np.ndarray, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inner products of each query with the centroids of ``lists`` and those lists, best first:
    (scores (m, L), lists (m, L)). Few lists: their centroids are copied and scored; many: the
    coarse quantizer's flat storage is searched in full and the other lists dropped."""
    import faiss

    quantizer = faiss.downcast_index(ivf.quantizer)
    flat = faiss.downcast_index(quantizer.storage) if isinstance(quantizer, faiss.IndexHNSW) else quantizer
    metric = faiss.METRIC_INNER_PRODUCT
    if not isinstance(flat, faiss.IndexFlat) or lists.size * 8 < ivf.nlist:
        sub = _f32(_centroids(ivf, flat)[lists])
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


def _empty(m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((m, k), -np.inf, dtype=np.float32), np.full((m, k), -1, dtype=np.int64)


def _rerank(q: np.ndarray, cand: np.ndarray, k: int, lookup: VectorLookup) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores for candidate ids (m, kk) from stored vectors; the best k per row.

    Rows are processed in blocks so that the gathered candidate vectors stay under ~32 MiB.
    """
    m, kk = cand.shape
    d = q.shape[1]
    top = _TopK(m, k)
    block = max(1, EXACT_CHUNK_BYTES // (4 * d * max(1, kk)))
    for start in range(0, m, block):
        c = cand[start : start + block]
        valid = c >= 0
        scores = np.full(c.shape, -np.inf, dtype=np.float32)
        if valid.any():
            uniq, inverse = np.unique(c[valid], return_inverse=True)
            vecs = _f32(lookup(uniq))
            rows, _ = np.nonzero(valid)
            scores[valid] = np.einsum("ij,ij->i", q[start + rows], vecs[inverse])
        sub = _TopK(c.shape[0], k)
        sub.push(scores, c)
        top.scores[start : start + block], top.ids[start : start + block] = sub.scores, sub.ids
    return top.result()


# --------------------------------------------------------------------------------------------------
# Building


def _add_chunks(
    index: Any, vectors: np.ndarray, ids: np.ndarray, on_chunk: Callable[[np.ndarray, np.ndarray], None] | None = None
):
    """Add in float32 chunks of ~ADD_CHUNK_BYTES; yields (done, total). ``on_chunk`` sees each chunk."""
    n, d = vectors.shape
    step = max(1024, ADD_CHUNK_BYTES // (4 * d))
    for start in range(0, n, step):
        block = _f32(vectors[start : start + step])
        block_ids = np.ascontiguousarray(ids[start : start + step])
        index.add_with_ids(block, block_ids)
        if on_chunk is not None:
            on_chunk(block, block_ids)
        yield min(n, start + step), n


def _new_faiss_index(factory: str, d: int) -> Any:
    """index_factory with inner product, wrapped in an IndexIDMap2 unless it takes ids natively (IVF)."""
    import faiss

    if factory.upper().startswith("IDMAP"):
        raise AnnError("give the factory without IDMap: ids are mapped automatically")
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise AnnError(f"invalid index factory {factory!r}: {exc}") from exc
    layout = _Layout.of(index)
    if layout.kind == "ivf" and layout.refine is None:
        ivf = layout.leaf
        ivf.cp.niter = KMEANS_NITER
        ivf.cp.seed = 1234
        return index
    return faiss.IndexIDMap2(index)


def _train_size(n: int, nlist: int) -> int:
    """Training vectors: 40 per list (FAISS wants >= 39), at least 65,536 (enough for 8-bit PQ/SQ
    codebooks, which FAISS subsamples to 256 per centroid), at most 2**20 and n."""
    return min(n, max(TRAIN_PER_LIST * nlist, 65_536), 1 << 20)


def _train_sample(vectors: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    n = vectors.shape[0]
    if size >= n:
        return _f32(vectors[:])
    rows = np.sort(rng.choice(n, size=size, replace=False))
    return _f32(vectors[rows])


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    factory: str | None = None,
    memory_budget: int | None = None,
    recall_target: float = 0.95,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    tuning_queries: np.ndarray | None = None,
) -> AnnIndex:
    """Build an index over ``vectors`` (n, d) float32/float16 (possibly a memmap) with ``ids`` (n,).

    ``factory`` forces an index_factory string (without IDMap); by default :func:`choose_index` picks
    one from n, d and ``memory_budget``. The vectors are never materialised as one float32 array:
    training reads a seeded sample (``_train_size``), adding reads float32 chunks of 64 MiB.
    Peak memory is the index itself plus the training sample plus one chunk.

    The search parameters are then tuned to the smallest values reaching recall@10 >= ``recall_target``
    on ``TUNE_QUERIES`` sampled vectors with their own ids excluded (or on ``tuning_queries`` when given),
    against exact search; recall and parameters go into ``info``. ``progress(done, total)`` is called
    after each chunk added. Everything random is seeded with ``seed``.
    """
    t0 = time.perf_counter()
    vectors = _as_matrix(vectors, None, "vectors")
    n, d = vectors.shape
    ids = _id_array(ids, "ids")
    if ids.shape[0] != n:
        raise AnnError(f"ids has {ids.shape[0]} entries for {n} vectors")
    if n == 0:
        raise AnnError("cannot build an index over no vectors")
    if ids.min() < 0:
        raise AnnError("ids must be >= 0")
    if np.unique(ids).size != n:
        raise AnnError("ids must be unique")
    if not 0.0 < recall_target <= 1.0:
        raise AnnError(f"recall_target must be in (0, 1], got {recall_target}")
    factory = factory or choose_index(n, d, memory_budget)
    rng = np.random.default_rng(seed)
    index = _new_faiss_index(factory, d)
    layout = _Layout.of(index)

    if not index.is_trained:
        nlist = layout.leaf.nlist if layout.kind == "ivf" else 1
        sample = _train_sample(vectors, _train_size(n, nlist), rng)
        _check_normalised(sample)
        log.info("training %s on %d vectors", factory, sample.shape[0])
        try:
            index.train(sample)
        except RuntimeError as exc:  # e.g. fewer training vectors than lists
            raise AnnError(f"cannot train {factory!r} on {sample.shape[0]} vectors: {exc}") from exc
        del sample
    else:
        _check_normalised(_train_sample(vectors, min(n, 1000), rng))

    # tuning queries and their exact ground truth, accumulated while adding (one pass over the data)
    tq = _TuningSet.make(vectors, ids, rng, tuning_queries, with_filters=layout.kind == "ivf")
    log.info("adding %d vectors to %s", n, factory)
    for done, total in _add_chunks(index, vectors, ids, on_chunk=tq.push):
        if progress:
            progress(done, total)

    info = IndexInfo(factory=factory, n=n, dimension=d, recall_target=recall_target)
    info.bytes_per_vector, info.memory_bytes = _estimate_safe(factory, n, d, index)
    ann = AnnIndex(index, info)
    lookup = _row_lookup(vectors, ids) if layout.lossy and layout.refine is None and layout.kind == "ivf" else None
    params, recall, filtered = _tune(ann, tq, recall_target, lookup)
    info.params, info.measured_recall = params, recall
    info.tuning = {"queries": tq.size, "k": TUNE_K, "seed": seed, "method": tq.method}
    if filtered:
        info.tuning["filtered_recall"] = filtered
    info.build_seconds = round(time.perf_counter() - t0, 3)
    if recall < recall_target:
        log.warning(
            "%s reaches recall@%d %.3f < target %.3f at the largest parameters tried",
            factory,
            TUNE_K,
            recall,
            recall_target,
        )
    log.info("built %s: n=%d params=%s recall@%d=%.3f in %.1fs", factory, n, params, TUNE_K, recall, info.build_seconds)
    return ann


def _check_normalised(sample: np.ndarray) -> None:
    norms = np.linalg.norm(sample, axis=1)
    if norms.size and np.abs(norms - 1.0).max() > 1e-2:
        raise AnnError(f"vectors must be L2-normalised (sampled norms range {norms.min():.3f}..{norms.max():.3f})")


def _estimate_safe(factory: str, n: int, d: int, index: Any) -> tuple[float, int]:
    try:
        return _estimate(factory, n, d)
    except (AnnError, ValueError):
        # a forced factory we have no formula for: fall back to the serialized size
        import faiss

        size = int(faiss.serialize_index(index).size)
        return size / max(1, n), size


def _row_lookup(vectors: np.ndarray, ids: np.ndarray) -> VectorLookup:
    """id -> stored vector, for tuning the re-rank of compressed indexes at build time."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]

    def lookup(wanted: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(sorted_ids, wanted)
        rows = order[np.minimum(pos, sorted_ids.size - 1)]
        if not np.array_equal(ids[rows], wanted):
            raise KeyError("unknown id")
        srt = np.argsort(rows)
        out = np.empty((wanted.size, vectors.shape[1]), dtype=np.float32)
        out[srt] = vectors[rows[srt]]
        return out

    return lookup


@dataclass
class _TuningFilter:
    """A synthetic filter for tuning filtered search: membership test, allowed ids, exact top-k."""

    name: str
    member: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (block vectors, block ids) -> mask
    top: _TopK
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
class _TuningSet:
    """Tuning queries and their exact top-k, unfiltered and under synthetic filters, built while
    the vectors stream past (one pass over the data)."""

    queries: np.ndarray
    query_ids: np.ndarray | None  # own ids to exclude (None for external queries)
    top: _TopK
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
    ) -> _TuningSet:
        n, d = vectors.shape
        if external is not None:
            q = _f32(_as_matrix(external, d, "tuning_queries"))
            tq = cls(q, None, _TopK(q.shape[0], TUNE_K), "external queries")
        else:
            m = min(TUNE_QUERIES, n)
            rows = np.sort(rng.choice(n, size=m, replace=False))
            tq = cls(_f32(vectors[rows]), ids[rows], _TopK(m, TUNE_K), "sampled vectors, own id excluded")
        if with_filters:
            tq.filters = [
                _TuningFilter("uniform 1%", _uniform_member(10), _TopK(tq.size, TUNE_K)),
                _TuningFilter("uniform 10%", _uniform_member(100), _TopK(tq.size, TUNE_K)),
                _TuningFilter("uniform 50%", _uniform_member(500), _TopK(tq.size, TUNE_K)),
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
        return _TuningFilter(name, lambda block, block_ids: block @ anchor >= threshold, _TopK(self.size, TUNE_K), far)

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


def _tune(
    ann: AnnIndex, tq: _TuningSet, target: float, lookup: VectorLookup | None
) -> tuple[dict[str, int], float, dict[str, float]]:
    """Smallest parameters reaching ``target`` recall@TUNE_K; the best found when none does.

    "Reaching" means the mean recall minus one standard error of that mean is >= target, so that
    recall on unseen queries is at least the target with ~84% rather than ~50% confidence (500
    queries: one standard error is ~0.005). For IVF, ``filter_budget`` is then tuned so that the
    selector path (forced, whatever the set size) reaches the target under every synthetic filter.
    Returns (params, mean recall at those params, filtered recall per synthetic filter).
    """
    lay = ann._layout
    extra = 0 if tq.query_ids is None else 1

    def score(found: np.ndarray, truth: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, float]:
        if extra:
            found = _drop_own(found, tq.query_ids if rows is None else tq.query_ids[rows], TUNE_K)
        per_query = _recall_per_query(found, truth, TUNE_K)
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
                ann._search_filtered(tq.queries[rows], TUNE_K + extra, p, allowed, lookup, exact_ok=False)[1],
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


def fits_incremental(index: AnnIndex, new_total: int, memory_budget: int | None = None) -> bool:
    """Whether adding vectors up to ``new_total`` keeps ``index``'s type appropriate (True), or a rebuild
    with another type is due (False).

    False when: the estimated size at ``new_total`` exceeds the budget; an exact index would grow past
    twice the exact threshold; :func:`choose_index` would now pick a different family (e.g. compressed
    instead of float32, or float32 instead of PQ); an IVF index's lists would be more than 4x longer or
    shorter than the nlist rule wants. The tuned parameters are stale after large growth either way:
    rebuilding also re-tunes.
    """
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    d = index.dimension
    per = index.info.bytes_per_vector or _estimate(index.factory, max(1, index.ntotal), d)[0]
    if per * new_total > budget:
        return False
    kind = index._layout.kind
    if kind == "flat":
        return new_total * d <= 2 * EXACT_MAX_SCAN_FLOATS
    if kind == "hnsw":
        return True
    try:
        wanted = choose_index(new_total, d, budget)
    except AnnError:
        return False
    if not wanted.startswith("IVF"):
        return True  # shrinking below the exact threshold: the IVF index still works
    if _code_family(wanted) != _code_family(index.factory):
        return False
    nlist = index._layout.leaf.nlist
    ideal = ivf_nlist(new_total)
    return ideal / 4 <= nlist <= ideal * 4


def _code_family(factory: str) -> str:
    code = factory.split(",")[1] if "," in factory else factory
    return "PQ" if code.startswith("PQ") else code


# --------------------------------------------------------------------------------------------------
# Files


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _temp_name(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = _temp_name(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
