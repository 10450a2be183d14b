"""Tuning queries per query kind and their exact results, gathered in the one pass that adds the
vectors to the index.

* ``image``: ``TUNE_QUERIES`` stored vectors sampled (seeded), each with its own id excluded from
  the exact and the approximate results (a stored vector would otherwise find itself first; with its
  own id removed it is statistically a held-out image query), unless the caller gives image queries.
* ``text``: what the caller gives (a collection's embedded taxa and phrases, a user's file, logged
  queries: :mod:`indexer.ann.text_queries`, :mod:`indexer.ann.maintenance`).
* ``mixed``: given, or made from the text queries and the sampled stored vectors as the engine
  makes a combined query: ``w * text + image``, normalised, with w cycling over 1, 2, 3 (the README
  tells users to weight text 2-3 against a picture) and the image's own id excluded.

Each kind is capped at ``TUNE_QUERIES`` (a seeded subsample). Filtered search is tuned on synthetic
filters whose exact results come from the same pass: 1%, 10% and 50% of the ids (by hash), and
``TUNE_REGIONS`` regions, each the ~10% of vectors most similar to one *stored* vector (as a taxon
or one institution's holdings are). Anchors and thresholds always come from the stored sample,
whatever the tuning queries are: a text query is close to no image, and a region drawn around one
would be empty or arbitrary. Each kind is judged on the third of its queries least similar to the
anchor (the hard case: a filter concentrated away from the query).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from indexer.ann.exact import EXACT_CHUNK_BYTES, TopK, f32, rows_per_chunk
from indexer.ann.info import QUERY_KINDS, check_kind
from indexer.errors import EmptyTuningSetError, TuningSetError

__all__ = ["KindQueries", "TuningSet", "TUNE_K", "TUNE_QUERIES", "TUNE_REGIONS", "MIXED_TEXT_WEIGHTS"]

TUNE_K = 10
TUNE_QUERIES = 500
TUNE_REGIONS = 3
MIXED_TEXT_WEIGHTS = (1.0, 2.0, 3.0)


@dataclass(frozen=True)
class KindQueries:
    """Tuning queries of one kind: unit rows (m, d) float32, the id each must not find (-1: none;
    a stored vector used as a query excludes itself), and what they are, in words for the user."""

    vectors: np.ndarray
    exclude: np.ndarray
    description: str
    source: str = "given"  # sampled | collection | file | log | given | derived

    @classmethod
    def of(cls, vectors: np.ndarray, description: str, source: str = "given", d: int | None = None) -> KindQueries:
        """Checked and normalised queries. Raises :class:`EmptyTuningSetError` for no rows and
        :class:`TuningSetError` for a wrong shape, non-finite values or zero vectors."""
        arr = np.asarray(vectors)
        if arr.ndim == 1 and arr.size and d is not None and arr.size == d:
            arr = arr.reshape(1, -1)
        if arr.size == 0:
            raise EmptyTuningSetError(f"the tuning set {description!r} is empty")
        if arr.ndim != 2 or (d is not None and arr.shape[1] != d):
            want = f"(m, {d})" if d is not None else "(m, d)"
            raise TuningSetError(f"the tuning set {description!r} must have shape {want}, got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating):
            raise TuningSetError(f"the tuning set {description!r} must hold floats, got {arr.dtype}")
        arr = f32(arr)
        norms = np.linalg.norm(arr, axis=1)
        if not np.isfinite(arr).all() or (norms == 0).any():
            raise TuningSetError(f"the tuning set {description!r} has zero or non-finite vectors")
        return cls(f32(arr / norms[:, None]), np.full(arr.shape[0], -1, dtype=np.int64), description, source)

    @property
    def size(self) -> int:
        return int(self.vectors.shape[0])

    def subsample(self, m: int, rng: np.random.Generator) -> KindQueries:
        if self.size <= m:
            return self
        rows = np.sort(rng.choice(self.size, size=m, replace=False))
        return KindQueries(self.vectors[rows], self.exclude[rows], self.description, self.source)

    def describe(self) -> str:
        return f"{self.size} {self.description}"


@dataclass
class _TuningFilter:
    """A synthetic filter: membership test, exact top-k of every tuning query among its ids, the
    query rows it is judged on per kind (None: all), the allowed ids gathered while adding."""

    name: str
    member: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (block vectors, block ids) -> mask
    top: TopK
    rows: dict[str, np.ndarray] | None = None
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
    """Every kind's tuning queries in one matrix (``kinds`` maps a kind to its rows), with their
    exact top-k, unfiltered and under the synthetic filters, built while the vectors stream past."""

    queries: np.ndarray
    exclude: np.ndarray  # (M,) id each query row must not find, -1 for none
    kinds: dict[str, slice]
    described: dict[str, KindQueries]
    top: TopK
    filters: list[_TuningFilter] = field(default_factory=list)

    @classmethod
    def make(
        cls,
        vectors: np.ndarray,
        ids: np.ndarray,
        rng: np.random.Generator,
        given: Mapping[str, KindQueries | np.ndarray] | None,
        with_filters: bool,
    ) -> TuningSet:
        """The tuning set for an index over ``vectors`` / ``ids`` (before they are added):
        ``given`` queries per kind (arrays are taken as ``given`` ones), the image sample when
        no image queries are given, mixed queries derived from the text ones when not given."""
        n, d = vectors.shape
        m = min(TUNE_QUERIES, n)
        rows = np.sort(rng.choice(n, size=m, replace=False))
        sample = KindQueries(
            f32(vectors[rows]),
            np.asarray(ids[rows], dtype=np.int64),
            "sampled stored vectors, own id excluded",
            "sampled",
        )
        sets: dict[str, KindQueries] = {"image": sample}
        for kind, q in (given or {}).items():
            check_kind(kind)
            sets[kind] = q if isinstance(q, KindQueries) else KindQueries.of(q, f"given {kind} queries", d=d)
            if sets[kind].vectors.shape[1] != d:
                raise TuningSetError(f"the {kind} tuning queries have dimension {sets[kind].vectors.shape[1]}, not {d}")
        if "text" in sets and "mixed" not in sets:
            sets["mixed"] = _mixed(sets["text"], sample, rng)
        sets = {k: sets[k].subsample(TUNE_QUERIES, rng) for k in QUERY_KINDS if k in sets}
        slices, start = {}, 0
        for kind, q in sets.items():
            slices[kind] = slice(start, start + q.size)
            start += q.size
        allq = np.concatenate([q.vectors for q in sets.values()])
        excl = np.concatenate([q.exclude for q in sets.values()])
        ts = cls(allq, excl, slices, sets, TopK(start, TUNE_K))
        if with_filters:
            ts.filters = [
                _TuningFilter("uniform 1%", _uniform_member(10), TopK(start, TUNE_K)),
                _TuningFilter("uniform 10%", _uniform_member(100), TopK(start, TUNE_K)),
                _TuningFilter("uniform 50%", _uniform_member(500), TopK(start, TUNE_K)),
            ]
            ts.filters += [ts._region(f"region 10% #{i + 1}", sample.vectors, rng, 0.1) for i in range(TUNE_REGIONS)]
        return ts

    @property
    def size(self) -> int:
        return int(self.queries.shape[0])

    def _region(self, name: str, stored: np.ndarray, rng: np.random.Generator, fraction: float) -> _TuningFilter:
        """The ~``fraction`` of vectors most similar to one stored vector: anchor and threshold (the
        (1 - fraction) quantile of the stored sample's similarities to it) come from stored vectors;
        each kind is judged on the third of its queries least similar to the anchor."""
        anchor = stored[int(rng.integers(stored.shape[0]))].copy()
        threshold = float(np.quantile(stored @ anchor, 1.0 - fraction))
        closeness = self.queries @ anchor
        rows = {}
        for kind, sl in self.kinds.items():
            own = np.arange(sl.start, sl.stop)
            rows[kind] = np.sort(own[np.argsort(closeness[sl])[: max(1, own.size // 3)]])
        return _TuningFilter(name, lambda block, block_ids: block @ anchor >= threshold, TopK(self.size, TUNE_K), rows)

    def push(self, block: np.ndarray, block_ids: np.ndarray) -> None:
        """Fold a block of the vectors being added into every exact top-k, a slice of the block at a
        time so that the score matrix of every tuning query against it stays within
        ``EXACT_CHUNK_BYTES`` (the whole 64 MiB add chunk against 1,500 queries would be 200 MB of
        scores, several times that with the selection's temporaries, in each shard worker)."""
        cols = rows_per_chunk(block.shape[1], self.size, EXACT_CHUNK_BYTES)
        for start in range(0, block.shape[0], cols):
            self._push(block[start : start + cols], block_ids[start : start + cols])

    def _push(self, block: np.ndarray, block_ids: np.ndarray) -> None:
        scores = self.queries @ block.T
        hit = self.exclude[:, None] == block_ids[None, :]
        if hit.any():
            scores[hit] = -np.inf
        self.top.push(scores, block_ids)
        for flt in self.filters:
            keep = flt.member(block, block_ids)
            if keep.any():
                flt.top.push(scores[:, keep], block_ids[keep])
                flt.parts.append(block_ids[keep])

    def rows(self, kind: str) -> np.ndarray:
        sl = self.kinds[kind]
        return np.arange(sl.start, sl.stop)

    def truth(self) -> np.ndarray:
        return self.top.result()[1]


#: What :meth:`TuningSet.push` holds at once beyond its block, in bytes: the score matrix, its
#: negation and the selection's int64 indexes and gathered copies (about 6 score matrices).
PUSH_WORKING_BYTES = 6 * EXACT_CHUNK_BYTES


def _mixed(text: KindQueries, sample: KindQueries, rng: np.random.Generator) -> KindQueries:
    """Combined queries as the engine forms them: ``w * text + image``, normalised, w cycling over
    ``MIXED_TEXT_WEIGHTS``, each with a sampled stored vector as its picture (own id excluded)."""
    m = min(TUNE_QUERIES, max(text.size, sample.size))
    t = text.vectors[rng.integers(0, text.size, m)]
    pick = rng.integers(0, sample.size, m)
    w = np.resize(np.asarray(MIXED_TEXT_WEIGHTS, dtype=np.float32), m)[:, None]
    q = w * t + sample.vectors[pick]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    weights = "/".join(f"{x:g}" for x in MIXED_TEXT_WEIGHTS)
    return KindQueries(
        f32(q),
        sample.exclude[pick].copy(),
        f"combinations of {weights} x a text query + a sampled stored vector (own id excluded)",
        "derived",
    )
