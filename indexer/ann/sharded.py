"""A sharded IVF build for collections too large to build in one process's memory, merged on disk.

::

    train     a seeded sample (float16, ``train_rows``) -> the empty trained index -> trained.faiss
    add       shard by shard, in parallel (``indexer.ann.workers``: local processes or Ray tasks):
              read trained.faiss, add the shard's vectors (their own ids) in chunks -> shard-N.faiss
    merge     the shards' inverted lists copied list by list into one ``OnDiskInvertedLists`` file,
              ``PATH.ivfdata``, beside ``PATH`` (the quantizer, codebooks and list offsets)
    tune      the merged index, memory-mapped, tuned against exact ground truth gathered by the
              shards themselves while adding (each returns its top-k of the tuning queries)

Memory (the documented bound, :func:`build_memory`): training holds the sample in float16 plus the
largest coarse cluster in float32 and the empty index (centroids, HNSW graph, codebooks); each
worker holds the empty index, its shard's codes and ids (``shard_rows x (code_size + 8)`` bytes,
twice that while FAISS grows its lists) and one 64 MiB float32 chunk; merging maps the shards and
the output file (page cache, not process memory). None of it grows with n once the shard size is
fixed: a larger collection means more shards, not bigger ones. The one exception is tuning's
synthetic filters, whose allowed ids the build keeps (about 7.3 bytes per vector: 0.7 GB at 100M).

Serving: :func:`indexer.ann.io.load_index` opens ``PATH`` with ``IO_FLAG_ONDISK_SAME_DIR`` (the
``.ivfdata`` is found beside it even after the folder moved) and FAISS maps the lists read-only, so a
search process holds the quantizer and the lists it touched (page cache), not the whole file.
An on-disk index cannot take more vectors in practice (FAISS's maintainers: adding to it is "so
inefficient that it is not practically usable"), so new vectors go to a small delta index
(:mod:`indexer.ann.delta`) searched with it and merged into it now and then.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.ann.exact import TopK, f32
from indexer.ann.io import faiss_prints_to_stderr, ondisk_data_path
from indexer.ann.layout import ADD_CHUNK_BYTES, Layout, add_chunk_rows, new_faiss_index
from indexer.ann.train import pq_error, train_index
from indexer.ann.tuning_set import PUSH_WORKING_BYTES
from indexer.ann.workers import EXECUTORS, available_cores, run_tasks
from indexer.errors import AnnError
from indexer.store.pieces import Piece, sample_rows, split_pieces, total_rows

__all__ = ["ShardOptions", "build_sharded", "build_memory", "merge_ondisk", "train_rows_for", "SHARD_CODE_BYTES"]

log = logging.getLogger(__name__)

#: Codes + ids one shard holds in memory, by default (the shard size follows from the code size).
SHARD_CODE_BYTES = 256 << 20
#: The training sample, float16, is at most this large by default.
TRAIN_SAMPLE_BYTES = 4 << 30
TRAIN_PER_LIST = 40
TRAIN_MIN_PER_LIST = 16
#: efSearch of an HNSW coarse quantizer while adding (which list a vector goes to) and when served
#: (FAISS uses max(efSearch, nprobe) per query: a little above the nprobe values tuning picks).
ADD_EF_SEARCH = 64
QUANTIZER_EF_SEARCH = 128
#: Vectors sampled (after training) to measure the codes' reconstruction error: the drift baseline.
DRIFT_SAMPLE = 10_000


@dataclass(frozen=True)
class ShardOptions:
    """How a sharded build runs. ``executor``: ``local`` (worker processes), ``ray`` or ``inline``;
    ``workers``: parallel shards (None: the cores, as memory allows); ``shard_rows``: vectors per
    shard (None: ``SHARD_CODE_BYTES`` of codes); ``threads``: FAISS threads per Ray task;
    ``train_rows``: the training sample (None: :func:`train_rows_for`); ``workdir``: where shard
    files go while building (None: a hidden folder beside the output; on Ray, a shared path)."""

    executor: str = "local"
    workers: int | None = None
    shard_rows: int | None = None
    threads: int = 4
    ray_address: str | None = None
    train_rows: int | None = None
    workdir: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise AnnError(f"unknown shard executor {self.executor!r}; expected one of {EXECUTORS}")
        for name in ("workers", "shard_rows", "train_rows"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise AnnError(f"{name} must be >= 1, got {value}")


def train_rows_for(n: int, nlist: int, d: int, sample_bytes: int = TRAIN_SAMPLE_BYTES) -> int:
    """Training vectors: ``TRAIN_PER_LIST`` per list, at least 65,536, at most n and what fits in
    ``sample_bytes`` as float16 (but never below ``TRAIN_MIN_PER_LIST`` per list)."""
    want = max(TRAIN_PER_LIST * nlist, 65_536)
    cap = max(sample_bytes // (2 * d), TRAIN_MIN_PER_LIST * nlist)
    return int(min(n, want, cap))


def shard_rows_for(code_size: int, n: int, workers: int) -> int:
    per_shard = max(1, SHARD_CODE_BYTES // (code_size + 8))
    return int(max(1, min(per_shard, -(-n // max(1, workers)))))


def build_memory(factory: str, n: int, d: int, options: ShardOptions | None = None) -> dict[str, int]:
    """The documented bound on a sharded build's memory (bytes), from the factory and the options;
    ``peak`` is the larger of the training phase and the add phase (all workers together), plus the
    allowed ids of tuning's synthetic filters (7.3 bytes per vector, the one term that grows with n).
    Everything else stops growing once n fills one shard per worker: a larger n means more shards.
    Not counted: each process's own baseline (the interpreter, numpy, FAISS: ~50-100 MB apiece)."""
    from indexer.ann.choice import estimate
    from indexer.ann.train import CODEBOOK_SAMPLE

    options = options or ShardOptions()
    parts = factory.split(",")
    head = next(p for p in parts if p.startswith("IVF"))
    nlist = int(head[3:].split("_")[0])
    opq = d * d * 4 if parts[0].startswith("OPQ") else 0
    core = ",".join(p for p in parts if not p.startswith("OPQ"))
    per, fixed = estimate(core, 0, d)
    code = int(per) - 8
    workers = options.workers or (available_cores() if options.executor == "local" else 8)
    train = options.train_rows or train_rows_for(n, nlist, d)
    shard = options.shard_rows or shard_rows_for(code, n, workers)
    # the sample in float16, its largest coarse cluster (~4x the mean) and the codebook sample in float32
    training = train * d * 2 + 4 * (train // max(1, int(nlist**0.5))) * d * 4 + CODEBOOK_SAMPLE * d * 4
    # a shard's codes (twice: as added and as written), one add chunk (its vectors and their encoding,
    # layout.add_chunk_rows), and the tuning set's exact top-k working memory for that chunk
    worker = fixed + opq + 2 * shard * (code + 8) + ADD_CHUNK_BYTES + PUSH_WORKING_BYTES
    local = workers if options.executor == "local" else 1
    # tuning's synthetic filters keep their allowed ids (uniform 1%, 10%, 50%, three 10% regions)
    filters = int(0.91 * n * 8)
    return {
        "tuning_filters": filters,
        "training": int(training + fixed + opq),
        "per_worker": int(worker),
        "workers": int(workers),
        "shard_rows": int(shard),
        "train_rows": int(train),
        "peak": int(max(training + fixed + opq, local * worker + fixed + opq) + filters),
    }


@dataclass(frozen=True)
class _ShardTask:
    number: int
    pieces: list[Piece]
    trained: str
    out: str


class TuningVisitor:
    """Gathers a tuning set's exact ground truth in the shards: each gets an empty copy, pushes its
    vectors through it, and sends back the top-k it saw; :meth:`absorb` merges them."""

    def __init__(self, tuning: Any):
        self.tuning = tuning

    def fresh(self) -> Any:
        blank = copy.copy(self.tuning)
        blank.top = TopK(self.tuning.size, self.tuning.top.k)
        blank.filters = [
            dataclasses.replace(f, top=TopK(self.tuning.size, f.top.k), parts=[]) for f in self.tuning.filters
        ]
        return blank

    @staticmethod
    def state(local: Any) -> Any:
        return (local.top.scores, local.top.ids, [(f.top.scores, f.top.ids, f.parts) for f in local.filters])

    def absorb(self, state: Any) -> None:
        scores, ids, filters = state
        self.tuning.top.push(scores, ids)
        for flt, (f_scores, f_ids, parts) in zip(self.tuning.filters, filters):
            flt.top.push(f_scores, f_ids)
            flt.parts.extend(parts)


def _add_shard(task: _ShardTask, visitor: TuningVisitor | None) -> dict[str, Any]:
    """Worker side: the trained index plus this shard's vectors, written to ``task.out``."""
    import faiss

    t0 = time.perf_counter()
    index = faiss.read_index(task.trained)
    local = visitor.fresh() if visitor is not None else None
    chunk = add_chunk_rows(index)
    rows = 0
    for piece in task.pieces:
        for ids, vecs in piece.read(chunk):
            if not ids.size:
                continue
            block = f32(vecs)
            index.add_with_ids(block, np.ascontiguousarray(ids, dtype=np.int64))
            if local is not None:
                local.push(block, ids)
            rows += ids.size
    tmp = task.out + ".tmp"
    faiss.write_index(index, tmp)
    os.replace(tmp, task.out)
    state = TuningVisitor.state(local) if local is not None else None
    return {"rows": rows, "seconds": time.perf_counter() - t0, "visitor": state}


def merge_ondisk(trained: Any, shard_paths: Sequence[str], ivfdata: str) -> int:
    """Copy the shards' inverted lists, list by list, into ``ivfdata`` (an ``OnDiskInvertedLists``
    file) and point the empty ``trained`` index at it; returns the number of vectors.

    Like ``faiss.contrib.ondisk.merge_ondisk``, but the shards are read memory-mapped and freed with
    their lists afterwards (the contrib version leaves them mapped, so the shard files' disk space
    would only come back when the process exits). Ids are kept as the shards hold them: every
    shard added its vectors under their own, globally unique ids.
    """
    import faiss

    ivf = faiss.extract_index_ivf(trained)
    if ivf.ntotal != 0:
        raise AnnError("merge_ondisk needs an empty trained index")
    shards = [faiss.read_index(p, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY) for p in shard_paths]
    lists = faiss.InvertedListsPtrVector()
    for shard in shards:
        sub = faiss.extract_index_ivf(shard)
        if sub.nlist != ivf.nlist or sub.code_size != ivf.code_size:
            raise AnnError("a shard was not built from the same trained index")
        lists.push_back(sub.invlists)
    ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, ivfdata)
    ntotal = int(ondisk.merge_from_multiple(lists.data(), lists.size(), False, False))
    ivf.replace_invlists(ondisk, True)
    ondisk.this.disown()
    ivf.ntotal = ntotal
    trained.ntotal = ntotal
    del lists, shards
    return ntotal


def _quantizer_ef(ivf: Any, ef: int) -> None:
    import faiss

    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = ef


def build_sharded(
    pieces: Sequence[Piece],
    path: str | os.PathLike[str],
    *,
    factory: str,
    dimension: int,
    options: ShardOptions | None = None,
    seed: int = 0,
    make_tuning: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], Any]:
    """Train, add in shards and merge on disk into ``path`` (+ ``path.ivfdata``); returns (what the
    build did, for ``IndexInfo.build``; the tuning set). ``make_tuning(sample ids, sample vectors)``
    (optional) makes a tuning set from the training sample; it gets its exact ground truth from the
    shards. ``progress(rows done, rows)`` is called as shards finish. Nothing is
    tuned or loaded here: :func:`indexer.ann.build.build_index` does that.

    The index file is written last (atomically), so a killed build leaves no index at ``path``,
    only files a later build overwrites or a collection's writer removes.
    """
    import faiss

    options = options or ShardOptions()
    t0 = time.perf_counter()
    path = Path(path)
    n = total_rows(pieces)
    if n == 0:
        raise AnnError("cannot build an index over no vectors")
    index = new_faiss_index(factory, dimension)
    layout = Layout.of(index)
    if layout.kind != "ivf" or layout.idmap is not None or layout.refine is not None:
        raise AnnError(f"a sharded build needs an IVF index without an in-index refine, not {factory!r}")
    ivf = layout.leaf
    cores = available_cores()
    workers = options.workers or max(1, cores if options.executor == "local" else 8)
    shard_rows = options.shard_rows or shard_rows_for(ivf.code_size, n, workers)
    rng = np.random.default_rng(seed)

    train_n = options.train_rows or train_rows_for(n, ivf.nlist, dimension)
    sample_ids, sample = sample_rows(pieces, train_n, rng)
    sample = sample.astype(np.float16, copy=False)
    tuning = make_tuning(sample_ids, sample) if make_tuning is not None else None
    del sample_ids
    log.info("training %s on %d vectors", factory, sample.shape[0])
    trained_info = train_index(index, sample, seed=seed)
    t_train = time.perf_counter() - t0
    del sample
    _, held_out = sample_rows(pieces, min(n, DRIFT_SAMPLE), np.random.default_rng(seed + 1))
    baseline = pq_error(index, held_out)
    del held_out

    work = Path(options.workdir) if options.workdir else path.parent / f".shards-{path.name}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        trained_path = str(work / "trained.faiss")
        _quantizer_ef(ivf, ADD_EF_SEARCH)
        faiss.write_index(index, trained_path)
        groups = split_pieces(pieces, shard_rows)
        tasks = [_ShardTask(i, g, trained_path, str(work / f"shard-{i:05d}.faiss")) for i, g in enumerate(groups)]
        visitor = TuningVisitor(tuning) if tuning is not None else None
        log.info("adding %d vectors in %d shards (%s, %d workers)", n, len(tasks), options.executor, workers)
        t1 = time.perf_counter()
        done_rows, added = 0, 0
        for i, result in run_tasks(
            _add_shard,
            tasks,
            visitor,
            executor=options.executor,
            workers=min(workers, len(tasks)),
            threads=options.threads,
            ray_address=options.ray_address,
        ):
            if visitor is not None:
                visitor.absorb(result["visitor"])
            added += result["rows"]
            done_rows += sum(p.rows for p in tasks[i].pieces)
            if progress:
                progress(done_rows, n)
        t_add = time.perf_counter() - t1
        t2 = time.perf_counter()
        ivfdata = ondisk_data_path(path)
        with faiss_prints_to_stderr():
            merged = merge_ondisk(index, [t.out for t in tasks], str(ivfdata))
        if merged != added:
            raise AnnError(f"the merged index holds {merged} vectors, the shards added {added}")
        tmp = path.with_name(f".{path.name}.tmp")
        _quantizer_ef(ivf, QUANTIZER_EF_SEARCH)
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
        t_merge = time.perf_counter() - t2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "storage": "ondisk",
        "executor": options.executor,
        "workers": workers,
        "shards": len(tasks),
        "shard_rows": shard_rows,
        "training": trained_info,
        "pq_error": None if np.isnan(baseline) else round(baseline, 6),
        "seconds": {
            "train": round(t_train, 2),
            "add": round(t_add, 2),
            "merge": round(t_merge, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
        "ntotal": added,
        "ivfdata_bytes": ivfdata.stat().st_size,
    }, tuning
