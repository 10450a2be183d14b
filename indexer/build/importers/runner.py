"""The import runner: embedding files -> a collection, resumable and incremental by id.

:func:`import_embeddings` opens (or creates, for the declared model) the collection under the
writer lock, then reads every file of every source in batches (:mod:`.readers`), checks and
normalises the vectors (:mod:`.vectors`), maps the metadata as labels CSVs are mapped
(:mod:`.mapping`), compares each id with the collection (:mod:`.batch`) and commits every
``commit_every`` rows or ``commit_seconds``: a crash loses at most one unit, never committed work.
A file fully imported is recorded (size, time, rows, the column options) with the commit holding its
last rows, so a re-run skips it without reading it; ``recheck`` reads it again. At the end
``prune`` retires the ids these sources no longer hold, and the ANN index is brought up to date
from the stored vectors (:func:`indexer.ann.update_index`), as a build does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from indexer.ann import update_index
from indexer.build.commit import _minimal_ancestors
from indexer.build.context import progress_bar
from indexer.build.importers.batch import ImportRun
from indexer.build.importers.detect import open_reader
from indexer.build.importers.mapping import MetadataMapper
from indexer.build.importers.options import ImportOptions, ImportReport
from indexer.build.importers.readers import EmbeddingReader, FileInfo
from indexer.build.importers.target import DeclaredModel, open_import_target

__all__ = ["import_embeddings"]

log = logging.getLogger(__name__)

_BATCH_BYTES = 64 << 20


def import_embeddings(
    collection_path: str | os.PathLike,
    sources: Sequence[str | EmbeddingReader],
    *,
    model: DeclaredModel | None = None,
    options: ImportOptions | None = None,
) -> ImportReport:
    """Import the embeddings of ``sources`` (paths, folders, globs, or readers) into a collection.

    ``model`` declares the model the vectors were made with (needed for a new collection unless the
    files name it; checked against an existing collection's). Raises SourceError naming the file for
    a file that cannot be used at all (unreadable, no id or vector column, vectors of another
    dimension), ModelMismatchError, CollectionLockedError; one bad row is a recorded failure.
    """
    started = time.monotonic()
    options = options or ImportOptions()
    declared = model or DeclaredModel()
    readers = [open_reader(s, options) if isinstance(s, (str, os.PathLike)) else s for s in sources]
    from_files = [(r.declared_model, r.name) for r in readers if r.declared_model]
    collection, writer = open_import_target(collection_path, declared, from_files)
    report = ImportReport(collection=str(collection.path), dimension=collection.dimension)
    report.model = str(collection.model.get("name") or collection.model.get("source"))
    with writer:
        run = ImportRun(writer, options, report)
        plan = [(r, f) for r in readers for f in r.files()]
        report.files = len(plan)
        report.kinds = {r.name: r.kind for r in readers}
        total = sum(f.rows or 0 for _, f in plan)
        bar = progress_bar(total, options.progress, "importing")
        try:
            for reader, info in plan:
                _import_file(run, reader, info, bar)
        finally:
            run.commit()  # whatever happens (Ctrl-C included), what is done is committed
            if bar is not None:
                bar.close()
        if options.prune:
            _prune(run, readers)
            run.commit()
        if options.build_index:
            report.index = update_index(
                writer,
                factory=options.index_factory,
                memory_budget=options.memory_budget,
                recall_target=options.recall_target,
            )
        report.seconds = time.monotonic() - started
        run.commit({"last_import": _summary(report), "sources": _sources(writer, readers, run)})
        report.generation = writer.generation.number
        report.images = writer.generation.images
    report.seconds = time.monotonic() - started
    log.info(
        "imported %d, replaced %d, metadata updated %d, unchanged %d, failed %d in %.1fs",
        *(report.imported, report.replaced, report.metadata_updated, report.unchanged, report.failed, report.seconds),
    )
    if report.renormalised:
        log.info("%d vectors were not unit length and were normalised", report.renormalised)
    return report


def _signature(reader: EmbeddingReader, info: FileInfo, options: ImportOptions) -> dict:
    return {
        **info.signature(),
        "source": reader.name,
        "kind": reader.kind,
        "columns": dataclasses.asdict(options.columns),
    }


def _import_file(run: ImportRun, reader: EmbeddingReader, info: FileInfo, bar) -> None:
    options, report = run.options, run.report
    signature = _signature(reader, info, options)
    if not options.recheck and run.records.get(info.path) == signature:
        report.files_skipped += 1
        report.unchanged += info.rows or 0
        if options.prune:  # the ids it holds stay: find them
            for raw in reader.batches(info, 1 << 16, ids_only=True):
                run.kept.append(_live_ids(run, raw.ids))
        if bar is not None:
            bar.update(info.rows or 0)
        log.debug("%s: imported before and unchanged; skipped", info.path)
        return
    rows = options.batch_rows or max(1024, _BATCH_BYTES // (4 * run.writer.collection.dimension))
    mapper: MetadataMapper | None = None
    for raw in reader.batches(info, rows):
        columns = tuple(raw.metadata.column_names)
        if mapper is None or mapper.columns != columns:
            mapper = MetadataMapper(columns)
        run.add_batch(raw, reader.name, mapper)
        if bar is not None:
            bar.update(raw.num_rows)
            bar.set_postfix(failed=report.failed, refresh=False)
    run.note_file_done(info.path, signature)
    run.maybe_commit()


def _live_ids(run: ImportRun, keys: pa.Array) -> np.ndarray:
    con = run.writer.con
    con.register("_k", pa.table({"key": keys}))
    try:
        got = con.execute("SELECT l.id FROM _k JOIN live l USING (key)").fetchnumpy()["id"]
    finally:
        con.unregister("_k")
    return np.asarray(got, dtype=np.int64)


def _prune(run: ImportRun, readers: Sequence[EmbeddingReader]) -> None:
    """Retire the live ids of these sources that this import neither kept nor added."""
    con = run.writer.con
    kept = np.unique(np.concatenate(run.kept)) if run.kept else np.empty(0, dtype=np.int64)
    con.register("_kept", pa.table({"id": kept}))
    con.register("_src", pa.table({"name": [r.name for r in readers]}))
    try:
        gone = con.execute(
            "SELECT id FROM live WHERE source IN (SELECT name FROM _src) AND id < ? "
            "AND id NOT IN (SELECT id FROM _kept)",
            [run.first_id],
        ).fetchnumpy()["id"]
    finally:
        con.unregister("_kept")
        con.unregister("_src")
    if len(gone):
        run.writer.retire(np.asarray(gone, dtype=np.int64))
        run.report.pruned = int(len(gone))
        log.info("pruning %d ids no longer in the sources", len(gone))


def _summary(report: ImportReport) -> dict:
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": report.files,
        "rows": report.rows,
        "imported": report.imported,
        "replaced": report.replaced,
        "unchanged": report.unchanged,
        "renormalised": report.renormalised,
        "failed": report.failed,
        "seconds": round(report.seconds, 3),
    }


def _sources(writer, readers: Sequence[EmbeddingReader], run: ImportRun) -> dict:
    """The generation's ``sources`` entry, with the folders local images of each source live in
    (the only places the app serves images from)."""
    known = dict(writer.generation.stats.get("sources") or {})
    for r in readers:
        folders = _minimal_ancestors(sorted(run.folders.get(r.name, set())))
        if len(folders) > 256:
            folders = [os.path.commonpath(folders)]
        before = (known.get(r.name) or {}).get("root") or []
        known[r.name] = {"type": f"import:{r.kind}", "root": sorted(set(before) | set(folders))}
    return known
