"""The build runner: scan -> diff -> work -> encode -> commit, then the ANN index.

One function, :func:`build`, joins the stages:

1. **scan** every source into a staging table (:mod:`~indexer.build.scan`);
2. **diff** it against the live images (:mod:`~indexer.build.diff`): unchanged rows are skipped,
   rows whose metadata alone changed are re-committed with their stored vector, new and changed
   files are processed;
3. **work**: those rows piece by piece, remote media downloaded one piece ahead
   (:mod:`~indexer.build.work`), decoded and preprocessed by an executor (:mod:`~indexer.build.executor`:
   local worker processes, or Ray), one failure per bad item, never an exception out of a worker;
4. **encode** in batches (:mod:`~indexer.build.encode`), reusing a stored vector when the file's content
   hash is already indexed (a renamed or copied file);
5. **commit** every ``commit_every`` images or ``commit_seconds`` seconds (:mod:`~indexer.build.commit`:
   a crash loses at most one unit of work, never committed work), and finally bring the ANN index
   up to date from the stored vectors (:func:`indexer.ann.update_index`).

Nothing here prints: progress goes through tqdm (when enabled), everything else through logging.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from indexer.ann import TuningInputs, update_index
from indexer.ann.sharded import ShardOptions
from indexer.build.commit import record_finished_build
from indexer.build.context import BuildRun, Committer, progress_bar
from indexer.build.diff import classify
from indexer.build.encode import commit_results
from indexer.build.executor import make_executor
from indexer.build.options import BuildOptions, BuildReport
from indexer.build.scan import scan_sources
from indexer.build.sources.base import Source
from indexer.build.target import LazyModel, ModelChoice, open_target
from indexer.build.work import WorkList, update_metadata_only
from indexer.errors import DiskFullError

__all__ = ["build"]

log = logging.getLogger(__name__)


def build(
    collection_path: str | os.PathLike,
    sources: Sequence[Source],
    *,
    model_name: str | None = None,
    revision: str | None = None,
    model: Any = None,
    device: str = "auto",
    precision: str = "auto",
    preprocess: str | None = None,
    options: BuildOptions = BuildOptions(),
) -> BuildReport:
    """Index ``sources`` into the collection at ``collection_path`` (created if needed).

    Resumable and incremental: run it again with the same arguments and only what is not yet
    committed (new, changed, or failed for a transient reason) is processed. Raises
    CollectionLockedError at once if another writer is active, ModelMismatchError if the
    collection was built with another model, SourceError if a source cannot be read at all.
    """
    started = time.monotonic()
    choice = ModelChoice(model_name, revision, device, precision, preprocess, model)
    collection, lazy, writer = open_target(collection_path, choice)
    report = BuildReport(collection=str(collection.path))
    with writer:
        at_start = writer.generation.number
        run = BuildRun(
            writer.con, writer, options, report, Committer(writer, options.commit_every, options.commit_seconds)
        )
        scan_sources(run, sources)
        classify(run, sources)
        try:
            update_metadata_only(run)
            _decode_and_encode(run, lazy, device, options.cache_dir or str(collection.path / "cache" / "media"))
            if lazy.loaded:
                report.precision = lazy().precision
        except DiskFullError:
            raise  # nothing more fits; what was committed before is intact
        except BaseException:
            run.committer.commit()  # whatever else happens (Ctrl-C, SIGTERM included), what is done is committed
            raise
        run.committer.commit()
        if options.build_index:
            report.index = update_index(
                writer,
                factory=options.index_factory,
                memory_budget=options.memory_budget,
                recall_target=options.recall_target,
                tuning=TuningInputs(model=model),  # text tuning phrases embedded with the build's model
                shards=ShardOptions(executor=options.executor, ray_address=options.ray_address),
            )
        record_finished_build(run, sources, started, at_start)
    if lazy.loaded:  # once per machine and model: the text tower for text queries without torch
        from bioclip.text_onnx import export_text_encoder

        export_text_encoder(lazy())
    report.seconds = time.monotonic() - started
    log.info(
        "indexed %d (reused %d, metadata updated %d), unchanged %d, failed %d in %.1fs",
        *(report.encoded, report.reused, report.metadata_updated, report.unchanged, report.failed, report.seconds),
    )
    return report


def _decode_and_encode(run: BuildRun, lazy: LazyModel, device: str, cache_dir: str) -> None:
    work = WorkList(run, cache_dir)
    total = work.count()
    if total == 0:
        return  # nothing to encode: the model is not loaded (torch is not even imported)
    model = lazy()
    executor = make_executor(run, model, device)
    run = dataclasses.replace(run, progress=progress_bar(total, run.options.progress))
    pieces = iter(work)
    try:
        for results in executor.run(pieces):
            commit_results(run, model, results)
            run.advance(results.count)
    finally:
        pieces.close()  # stops the download thread
        if run.progress is not None:
            run.progress.close()
