"""Which FAISS index a collection gets, from its size, dimension and a memory budget.

In order of preference, the first that fits the budget (estimated resident bytes, :func:`estimate`):

* ``Flat`` (exact) while one query scans at most ``EXACT_MAX_SCAN_FLOATS`` floats: exact search is
  what every other type falls back to, and below that size it answers within the single-query
  latency budget on one core.
* ``IVF{nlist},PQ{d/2}x4fsr`` (d/4 + 8 bytes per vector), FAISS's fast-scan PQ: 4-bit codes of the
  residuals, two dimensions a sub-quantizer, scanned with SIMD lookups in registers, and an exact
  re-rank of ``rerank`` x k candidates against the collection's stored vectors (``vector_lookup``).
  It is preferred to float32 lists for the automatic choice because a text query (far from every
  image: the modality gap) must probe ~4x more lists than an image query for the same recall, and
  scanning a fast-scan list costs a fraction of scanning float32 vectors: at 1M x 512 text queries
  reach recall@10 0.95 at ~1.1 ms where ``IVF4096,Flat`` needs ~5 ms, image queries at ~0.6 ms
  instead of ~1.1 ms, in 1/16 of the memory (``bench/query_kinds.py``). Not for on-disk indexes
  (FAISS keeps fast-scan lists in its own blocked layout, which the on-disk lists cannot hold).
* ``IVF{nlist},Flat`` when the float32 vectors fit: it supports ``remove``, memory-mapped loading of
  the vectors themselves, and filtered search that stays correct at low selectivity. HNSW is accepted
  when forced (``factory="HNSW32"``) but never chosen: its filtered graph search degrades under
  selective filters, it cannot remove, and on text queries (far from every image: the modality
  gap) it reaches the recall target only past the latency budget, if at all (``bench/search.py``).
* ``IVF{nlist},SQ8`` (d + 8 bytes per vector) when float32 does not fit.
* ``IVF{nlist},PQ{m}`` (m + 8 bytes per vector) when even SQ8 does not fit: the largest m that fits,
  keeping sub-vectors of at least ``PQ_MIN_SUBDIM`` dimensions to bound training time. PQ alone ranks
  poorly, so the refine step is an exact re-rank of ``rerank`` x k candidates against the collection's
  stored vectors (``vector_lookup``), which costs no index RAM. In-index refines (``,RFlat``,
  ``,Refine(SQ8)``) are accepted when forced but never chosen: wherever they fit, IVF-SQ8 fits too.
* ``nlist`` is the power of two nearest to 4 sqrt(n), with at least 39 training vectors per list;
  from ``HNSW_QUANTIZER_MIN_NLIST`` lists on, the coarse quantizer is itself an HNSW32 graph
  (``IVF{nlist}_HNSW32``) so assigning vectors and queries to lists stays cheap.

The measurements behind these thresholds (latency and recall per type at 1M x 512) are in the
README's benchmark section and printed by ``bench/search.py``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from indexer.errors import AnnError

if TYPE_CHECKING:  # pragma: no cover
    from indexer.ann.index import AnnIndex

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "EXACT_MAX_SCAN_FLOATS",
    "EXACT_FALLBACK_MAX_FLOATS",
    "candidates",
    "choose_index",
    "estimate",
    "fast_scan_code",
    "is_fast_scan",
    "fits_incremental",
    "ivf_nlist",
]

GiB = 1 << 30
DEFAULT_MEMORY_BUDGET = 16 * GiB
"""Budget used when none is given: generous for one serving machine; pass the real figure."""
EXACT_MAX_SCAN_FLOATS = 1 << 25
"""Flat (exact) while n * d <= this: 65,536 x 512 or 43,690 x 768."""
EXACT_FALLBACK_MAX_FLOATS = 2 * EXACT_MAX_SCAN_FLOATS
"""Up to this n * d, exact search (at most twice the single-query budget) is the automatic choice's
last resort when the inverted-file types miss the recall target for a query kind within the
latency budget (:func:`candidates`)."""
HNSW_QUANTIZER_MIN_NLIST = 16_384
FAST_SCAN_BLOCK = 32
"""Codes a fast-scan list stores per block (FAISS's ``bbs``): a list's last block is padded to it."""
PQ_MAX_M = 128
PQ_MIN_SUBDIM = 8
_IDMAP2_BYTES = 8 + 40  # id_map entry + unordered_map reverse entry (approximate)
_IVF_ID_BYTES = 8


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
    is slow on CPU (slower per sub-quantizer, on fewer points), and with exact re-ranking more code
    bytes only save re-ranked candidates."""
    return [m for m in (128, 96, 64, 48, 32, 24, 16, 8, 4) if m <= PQ_MAX_M and m * PQ_MIN_SUBDIM <= d and d % m == 0]


def fast_scan_code(d: int) -> str | None:
    """The fast-scan PQ code for dimension d (two dimensions a 4-bit sub-quantizer, residuals
    encoded), or None when d is odd."""
    return f"PQ{d // 2}x4fsr" if d >= 2 and d % 2 == 0 else None


def is_fast_scan(factory: str) -> bool:
    """Whether ``factory``'s code is a fast-scan one (``...fs`` / ``...fsr``)."""
    code = factory.split(",")[-1]
    return code.endswith(("fs", "fsr"))


def _ivf_prefix(nlist: int) -> str:
    return f"IVF{nlist}_HNSW32" if nlist >= HNSW_QUANTIZER_MIN_NLIST else f"IVF{nlist}"


def estimate(factory: str, n: int, d: int) -> tuple[float, int]:
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
    per: float
    if head == "Flat":
        per = 4 * d
    elif head.startswith("HNSW") and head[4:].isdigit() and code == "Flat":
        per = 4 * d + 2 * int(head[4:]) * 4 * 1.05  # level 0 has 2M links; upper levels add ~5%
    elif head.startswith("IVF"):
        nlist_text, _, quantizer = head[3:].partition("_")
        if not nlist_text.isdigit():
            raise AnnError(f"cannot estimate the size of {factory!r}")
        nlist = int(nlist_text)
        code_bytes = _code_bytes(code, d, factory)
        fixed = nlist * d * 4 + nlist * 64 + (nlist * 2 * 32 * 4 if quantizer else 0)
        if is_fast_scan(code):  # each list's last block is padded
            fixed += nlist * FAST_SCAN_BLOCK * (code_bytes + _IVF_ID_BYTES) // 2
        per = code_bytes + _IVF_ID_BYTES
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
        m, _, bits = code[2:].removesuffix("r").removesuffix("fs").partition("x")
        if m.isdigit() and (not bits or bits.isdigit()):
            return math.ceil(int(m) * int(bits or 8) / 8)
    raise AnnError(f"cannot estimate the size of {factory!r}")


def candidates(n: int, d: int, memory_budget: int | None = None, *, ondisk: bool = False) -> list[str]:
    """Every index_factory string :func:`choose_index` would consider for n vectors of dimension d
    that fits ``memory_budget``, in order of preference (the first is its choice; the build tries
    the next when one misses the recall target of a query kind within the latency budget, see
    :func:`indexer.ann.build.build_index`): Flat alone while exact search is within the
    single-query budget, else fast-scan PQ with exact re-ranking (not ``ondisk``), then the other
    inverted-file types from the least to the most compressed, and Flat last while it costs at
    most twice that budget. Raises :class:`AnnError` when even the smallest PQ code does not fit."""
    if n < 0 or d < 1:
        raise AnnError(f"invalid collection size n={n}, d={d}")
    budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise AnnError(f"memory budget must be positive, got {memory_budget}")
    flat_fits = estimate("Flat", n, d)[1] <= budget
    if n * d <= EXACT_MAX_SCAN_FLOATS and flat_fits:
        return ["Flat"]
    prefix = _ivf_prefix(ivf_nlist(n))
    fast = fast_scan_code(d)
    every = [f"{prefix},{fast}"] if fast and not ondisk else []
    every += [f"{prefix},Flat", f"{prefix},SQ8"] + [f"{prefix},PQ{m}" for m in _pq_choices(d)]
    fitting = [f for f in every if estimate(f, n, d)[1] <= budget]
    if fitting and flat_fits and n * d <= EXACT_FALLBACK_MAX_FLOATS:
        fitting.append("Flat")  # the last resort when the others miss a query kind's target
    if not fitting:
        smallest = estimate(every[-1], n, d)[1]
        raise AnnError(
            f"a memory budget of {budget:,} bytes cannot hold {n:,} vectors of dimension {d}: "
            f"the smallest index ({every[-1]}) needs about {smallest:,} bytes"
        )
    return fitting


def choose_index(n: int, d: int, memory_budget: int | None = None, *, ondisk: bool = False) -> str:
    """The FAISS index_factory string for n vectors of dimension d within ``memory_budget`` bytes.

    ``None`` means ``DEFAULT_MEMORY_BUDGET`` (16 GiB). In order of preference, the first that fits:
    ``Flat`` while n * d <= 2**25; ``IVF{nlist},PQ{d/2}x4fsr`` (not ``ondisk``); ``IVF{nlist},Flat``;
    ``IVF{nlist},SQ8``; ``IVF{nlist},PQ{m}`` with the largest m that fits (see the module docstring).
    Raises :class:`AnnError` when even the smallest PQ code does not fit. When the first choice misses the recall target for a
    query kind within the latency budget, the build moves on to the next of :func:`candidates`.
    """
    return candidates(n, d, memory_budget, ondisk=ondisk)[0]


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
    per = index.info.bytes_per_vector or estimate(index.factory, max(1, index.ntotal), d)[0]
    if per * new_total > budget:
        return False
    kind = index.layout.kind
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
    have, want = _code_family(index.factory), _code_family(wanted)
    if have != want and not (want == "PQfs" and have in ("Flat", "SQ8")):
        return False  # (float32 and SQ8 lists that still fit are kept where fast-scan is now preferred)
    nlist = index.layout.leaf.nlist
    ideal = ivf_nlist(new_total)
    return ideal / 4 <= nlist <= ideal * 4


def _code_family(factory: str) -> str:
    code = factory.split(",")[1] if "," in factory else factory
    if code.startswith("PQ"):
        return "PQfs" if is_fast_scan(code) else "PQ"
    return code
