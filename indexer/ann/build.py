"""Building an index from stored vectors: train on a seeded sample, add in chunks, tune.

Training uses a seeded sample of ``min(n, max(40 * nlist, 65536), 2**20)`` vectors: 40 per list (FAISS
asks for at least 39), and at least 65,536 for the SQ/PQ codebooks, trained on the same sample (FAISS
subsamples to 256 per centroid). Vectors are added in float32 chunks (:func:`indexer.ann.layout.add_chunks`),
so memory stays flat whatever n is, and the same pass accumulates the exact ground truth of every
query kind's tuning queries (:mod:`indexer.ann.tuning_set`): the vectors are read once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from indexer.ann import params as params_module
from indexer.ann.choice import candidates, estimate
from indexer.ann.exact import as_matrix, f32, id_array
from indexer.ann.index import AnnIndex
from indexer.ann.info import IndexInfo
from indexer.ann.layout import Layout, add_chunks, new_faiss_index
from indexer.ann.tuning import tune
from indexer.ann.tuning_set import TUNE_K, KindQueries, TuningSet
from indexer.errors import AnnError
from indexer.store.vectors import ArrayVectors

__all__ = ["build_index", "TRAIN_PER_LIST"]

log = logging.getLogger(__name__)

TRAIN_PER_LIST = 40


def _train_size(n: int, nlist: int) -> int:
    """Training vectors: 40 per list (FAISS wants >= 39), at least 65,536 (enough for 8-bit PQ/SQ
    codebooks, which FAISS subsamples to 256 per centroid), at most 2**20 and n."""
    return min(n, max(TRAIN_PER_LIST * nlist, 65_536), 1 << 20)


def _train_sample(vectors: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    n = vectors.shape[0]
    if size >= n:
        return f32(vectors[:])
    rows = np.sort(rng.choice(n, size=size, replace=False))
    return f32(vectors[rows])


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    *,
    factory: str | None = None,
    memory_budget: int | None = None,
    recall_target: float = 0.95,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    tuning_queries: Mapping[str, KindQueries | np.ndarray] | None = None,
) -> AnnIndex:
    """Build an index over ``vectors`` (n, d) float32/float16 (possibly a memmap) with ``ids`` (n,).

    ``factory`` forces an index_factory string (without IDMap); by default :func:`choose_index` picks
    one from n, d and ``memory_budget``. The vectors are never materialised as one float32 array:
    training reads a seeded sample (``_train_size``), adding reads float32 chunks of 64 MiB.
    Peak memory is the index itself plus the training sample plus one chunk.

    The search parameters are then tuned per query kind (:mod:`indexer.ann.tuning`) to the smallest
    values reaching recall@10 >= ``recall_target`` against exact search: image queries on
    ``TUNE_QUERIES`` sampled stored vectors with their own ids excluded, text (and mixed) queries on
    ``tuning_queries`` (kind -> vectors or :class:`KindQueries`; mixed ones are derived from the
    text ones when not given). Kinds without queries are not tuned: they are searched with the
    image parameters. What was found goes into ``info.kinds``.

    When the automatic choice misses the target for a kind within the latency budget, and exact
    search is its last resort (:func:`indexer.ann.choice.candidates`), the collection gets exact
    search instead; the more compressed inverted-file types are not tried, as they share the
    inverted lists that missed and only lose precision. ``progress(done, total)`` is called after
    each chunk added. Everything random is seeded with ``seed``.
    """
    vectors = as_matrix(vectors, None, "vectors")
    n, d = vectors.shape
    ids = id_array(ids, "ids")
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
    job = _Job(vectors, ids, recall_target, seed, progress, dict(tuning_queries or {}))
    if factory:
        return job.run(factory)
    options = candidates(n, d, memory_budget)
    ann = job.run(options[0])
    missed = {k: v["note"] for k, v in ann.info.kinds.items() if not v["met"]}
    if missed and options[-1] == "Flat" and options[0] != "Flat":
        log.warning(
            "%s misses the recall target for %s queries (%s); using exact search, the last resort at this size",
            options[0],
            ", ".join(missed),
            "; ".join(missed.values()),
        )
        exact = job.run("Flat")
        exact.info.tuning["instead_of"] = {"factory": options[0], "missed": missed}
        return exact
    return ann


class _Job:
    """One collection's vectors and the build settings, run for one factory at a time."""

    def __init__(
        self,
        vectors: np.ndarray,
        ids: np.ndarray,
        target: float,
        seed: int,
        progress: Callable[[int, int], None] | None,
        given: dict[str, KindQueries | np.ndarray],
    ):
        self.vectors, self.ids, self.target, self.seed = vectors, ids, target, seed
        self.progress, self.given = progress, given

    def run(self, factory: str) -> AnnIndex:
        t0 = time.perf_counter()
        vectors, ids = self.vectors, self.ids
        n, d = vectors.shape
        rng = np.random.default_rng(self.seed)
        index = new_faiss_index(factory, d)
        layout = Layout.of(index)
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
        ts = TuningSet.make(vectors, ids, rng, self.given, with_filters=layout.kind == "ivf")
        log.info("adding %d vectors to %s", n, factory)
        for done, total in add_chunks(index, vectors, ids, on_chunk=ts.push):
            if self.progress:
                self.progress(done, total)

        info = IndexInfo(factory=factory, n=n, dimension=d, recall_target=self.target)
        info.bytes_per_vector, info.memory_bytes = _estimate_safe(factory, n, d, index)
        ann = AnnIndex(index, info)
        lookup = ArrayVectors(vectors, ids) if layout.lossy and layout.refine is None and layout.kind == "ivf" else None
        kinds = tune(ann, ts, self.target, lookup, budget_floats=params_module.LATENCY_BUDGET_FLOATS)
        info.kinds = {kind: t.to_dict() for kind, t in kinds.items()}
        info.params, info.measured_recall = dict(kinds["image"].params), round(kinds["image"].recall, 4)
        info.tuning = {"k": TUNE_K, "seed": self.seed, "queries": {k: t.queries for k, t in kinds.items()}}
        info.build_seconds = round(time.perf_counter() - t0, 3)
        for kind, t in kinds.items():
            if not t.met:
                log.warning("%s, %s queries: %s", factory, kind, t.note)
        log.info(
            "built %s: n=%d in %.1fs; %s",
            factory,
            n,
            info.build_seconds,
            "; ".join(f"{k}: {t.params} recall@{TUNE_K} {t.recall:.3f}" for k, t in kinds.items()),
        )
        return ann


def _check_normalised(sample: np.ndarray) -> None:
    norms = np.linalg.norm(sample, axis=1)
    if norms.size and np.abs(norms - 1.0).max() > 1e-2:
        raise AnnError(f"vectors must be L2-normalised (sampled norms range {norms.min():.3f}..{norms.max():.3f})")


def _estimate_safe(factory: str, n: int, d: int, index: Any) -> tuple[float, int]:
    try:
        return estimate(factory, n, d)
    except (AnnError, ValueError):
        # a forced factory we have no formula for: fall back to the serialized size
        import faiss

        size = int(faiss.serialize_index(index).size)
        return size / max(1, n), size
