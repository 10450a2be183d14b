"""The on-disk index of a large collection: built from shards, tuned, saved with its sidecar.

:func:`build_ondisk_index` is the sharded counterpart of :func:`indexer.ann.build.build_index`: it
reads the vectors as picklable pieces (:mod:`indexer.store.pieces`) rather than one array, writes
``PATH`` and ``PATH.ivfdata`` itself (:mod:`indexer.ann.sharded`), then opens the result
memory-mapped and tunes its search parameters to the recall target against exact ground truth that
the shards gathered while adding. The result is read-only: new vectors go to a delta index
(:mod:`indexer.ann.delta`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from indexer.ann import params as params_module
from indexer.ann.choice import estimate
from indexer.ann.index import AnnIndex
from indexer.ann.info import IndexInfo
from indexer.ann.io import ondisk_data_path, write_sidecar
from indexer.ann.sharded import ShardOptions, build_sharded
from indexer.ann.tuning import tune
from indexer.ann.tuning_set import TUNE_K, KindQueries, TuningSet
from indexer.errors import AnnError
from indexer.store.pieces import Piece
from indexer.store.vectors import VectorLookup

__all__ = ["build_ondisk_index", "resident_bytes"]

log = logging.getLogger(__name__)


def resident_bytes(factory: str, d: int) -> int:
    """What an on-disk index of ``factory`` keeps in process memory when served, whatever n:
    the coarse centroids (and their HNSW graph), the codebooks and the list offsets."""
    _, fixed = estimate(factory.split(",", 1)[1] if factory.startswith("OPQ") else factory, 0, d)
    opq = d * d * 4 if factory.startswith("OPQ") else 0
    nlist = int(next(p for p in factory.split(",") if p.startswith("IVF"))[3:].split("_")[0])
    return int(fixed + opq + nlist * 48)


def build_ondisk_index(
    pieces: Sequence[Piece],
    path: str | os.PathLike[str],
    *,
    factory: str,
    dimension: int,
    recall_target: float = 0.95,
    seed: int = 0,
    options: ShardOptions | None = None,
    tuning_queries: Mapping[str, KindQueries | np.ndarray] | None = None,
    vector_lookup: VectorLookup | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AnnIndex:
    """Build, tune and save an on-disk IVF index over ``pieces`` at ``path``; returns it, open
    memory-mapped read-only.

    ``vector_lookup`` (ids -> stored float32 vectors) is what exact re-ranking of compressed codes
    reads at search time; tuning measures recall with it, so searches must pass it too
    (``AnnIndex.needs_vector_lookup``). ``tuning_queries``: queries per kind (``text``, ``image``,
    ``mixed``; :mod:`indexer.ann.tuning_set`), each kind tuned to the target as in
    :func:`indexer.ann.build.build_index`. Raises :class:`AnnError`.
    """
    if not 0.0 < recall_target <= 1.0:
        raise AnnError(f"recall_target must be in (0, 1], got {recall_target}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed + 2)

    def make_tuning(ids: np.ndarray, vecs: np.ndarray) -> TuningSet:
        return TuningSet.make(vecs, ids, rng, tuning_queries, with_filters=True)

    build, tq = build_sharded(
        pieces,
        path,
        factory=factory,
        dimension=dimension,
        options=options,
        seed=seed,
        make_tuning=make_tuning,
        progress=progress,
    )
    n = int(build["ntotal"])
    info = IndexInfo(factory=factory, n=n, dimension=dimension, recall_target=recall_target, build=build)
    per, _ = estimate(factory.split(",", 1)[1] if factory.startswith("OPQ") else factory, n, dimension)
    info.bytes_per_vector = per
    info.memory_bytes = resident_bytes(factory, dimension)
    write_sidecar(path, info)
    ann = AnnIndex.load(path)
    lossy = ann.layout.lossy and ann.layout.refine is None
    t1 = time.perf_counter()
    kinds = tune(
        ann, tq, recall_target, vector_lookup if lossy else None, budget_floats=params_module.LATENCY_BUDGET_FLOATS
    )
    ann.info.kinds = {kind: t.to_dict() for kind, t in kinds.items()}
    ann.info.params, ann.info.measured_recall = dict(kinds["image"].params), round(kinds["image"].recall, 4)
    ann.info.tuning = {"k": TUNE_K, "seed": seed, "queries": {k: t.queries for k, t in kinds.items()}}
    ann.info.build["seconds"]["tune"] = round(time.perf_counter() - t1, 2)
    ann.info.build_seconds = round(time.perf_counter() - t0, 3)
    write_sidecar(path, ann.info)
    for kind, t in kinds.items():
        if not t.met:
            log.warning("%s, %s queries: %s", factory, kind, t.note)
    log.info(
        "built %s on disk: n=%d in %.1fs (%s + %s); %s",
        factory,
        n,
        ann.info.build_seconds,
        os.path.basename(os.fspath(path)),
        ondisk_data_path(path).name,
        "; ".join(f"{k}: {t.params} recall@{TUNE_K} {t.recall:.3f}" for k, t in kinds.items()),
    )
    return ann
