"""Building an index from stored vectors: train on a seeded sample, add in chunks, tune.

Training uses a seeded sample of ``min(n, max(40 * nlist, 65536), 2**20)`` vectors: 40 per list (FAISS
asks for at least 39), and at least 65,536 for the SQ/PQ codebooks, trained on the same sample (FAISS
subsamples to 256 per centroid). Vectors are added in float32 chunks (:func:`indexer.ann.layout.add_chunks`),
so memory stays flat whatever n is, and the same pass accumulates the exact ground truth for tuning
(:mod:`indexer.ann.tuning`): the vectors are read once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from indexer.ann.choice import choose_index, estimate
from indexer.ann.exact import as_matrix, f32, id_array
from indexer.ann.index import AnnIndex
from indexer.ann.info import IndexInfo
from indexer.ann.layout import Layout, add_chunks, new_faiss_index
from indexer.ann.tuning import TUNE_K, TuningSet, tune
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
    factory = factory or choose_index(n, d, memory_budget)
    rng = np.random.default_rng(seed)
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
    tq = TuningSet.make(vectors, ids, rng, tuning_queries, with_filters=layout.kind == "ivf")
    log.info("adding %d vectors to %s", n, factory)
    for done, total in add_chunks(index, vectors, ids, on_chunk=tq.push):
        if progress:
            progress(done, total)

    info = IndexInfo(factory=factory, n=n, dimension=d, recall_target=recall_target)
    info.bytes_per_vector, info.memory_bytes = _estimate_safe(factory, n, d, index)
    ann = AnnIndex(index, info)
    lookup = ArrayVectors(vectors, ids) if layout.lossy and layout.refine is None and layout.kind == "ivf" else None
    params, recall, filtered = tune(ann, tq, recall_target, lookup)
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
        return estimate(factory, n, d)
    except (AnnError, ValueError):
        # a forced factory we have no formula for: fall back to the serialized size
        import faiss

        size = int(faiss.serialize_index(index).size)
        return size / max(1, n), size
