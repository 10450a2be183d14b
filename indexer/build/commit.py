"""Stage 5, commit: failures recorded against their rows, and what a finished build records.

Committing itself is the writer's (:class:`indexer.store.Writer`), paced by the
:class:`~indexer.build.context.Committer`: every ``commit_every`` images or ``commit_seconds``, so a
crash loses at most one unit of work, never committed work. At the end a build records in the
generation's ``stats`` a summary of itself and, per source, the folders its local files live in
(the only places the app serves images from).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

import pyarrow as pa

from indexer.build.context import BuildRun
from indexer.build.options import TRANSIENT_REASONS, BuildReport
from indexer.build.sources.base import Source

__all__ = ["Failure", "record_item_failures", "record_finished_build"]

log = logging.getLogger(__name__)

#: One item's failure: (row of its table, stage, reason, detail).
Failure = tuple[int, str, str, str]


def record_item_failures(run: BuildRun, chunk: pa.Table, failures: Sequence[Failure]) -> None:
    """Record failures of rows of ``chunk`` (a table of ``work`` rows) and count them."""
    writer, report = run.writer, run.report
    idx = pa.array([f[0] for f in failures], pa.int64())
    rows = chunk.take(idx).select(["key", "source", "location", "size", "mtime"])
    rows = rows.append_column("stage", pa.array([f[1] for f in failures], pa.string()))
    rows = rows.append_column("reason", pa.array([f[2] for f in failures], pa.string()))
    rows = rows.append_column("detail", pa.array([f[3] for f in failures], pa.string()))
    writer.record_failures(rows)
    # A changed file that no longer reads (truncated, overwritten with something else) loses its
    # old vector: it described content that is gone. The failure is listed; fixing the file and
    # building again indexes it. A transient failure (a download timeout) keeps the old vector.
    if "old_id" in chunk.column_names:
        old_ids = chunk.column("old_id").to_pylist()
        stale = [old_ids[f[0]] for f in failures if old_ids[f[0]] is not None and f[2] not in TRANSIENT_REASONS]
        if stale:
            writer.retire(stale, reason="unreadable")
            report.replaced_by_failure += len(stale)
    for f in failures:
        report.failed_by_reason[f[2]] = report.failed_by_reason.get(f[2], 0) + 1
        log.debug("failed %s: %s %s", chunk.column("location")[f[0]].as_py(), f[2], f[3])


def record_finished_build(run: BuildRun, sources: Sequence[Source], started: float, at_start: int) -> None:
    """Publish the build's summary and the sources' folders in the generation's ``stats``, unless
    the build changed nothing (no commit since generation ``at_start``, the same folders): a rebuild
    with nothing to do writes no new generation, so readers have nothing to reload."""
    writer, report = run.writer, run.report
    report.seconds = time.monotonic() - started
    stats = writer.generation.stats
    known = dict(stats.get("sources") or {})
    roots = _source_roots(run.con, sources)
    unchanged = writer.generation.number == at_start and "last_build" in stats
    if not (unchanged and all(known.get(name) == value for name, value in roots.items())):
        known.update(roots)
        writer.commit(stats={"last_build": _summary_stats(report), "sources": known})
    report.generation = writer.generation.number
    report.images = writer.generation.images


def _summary_stats(report: BuildReport) -> dict:
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scanned": report.scanned,
        "encoded": report.encoded,
        "reused": report.reused,
        "failed": report.failed,
        "seconds": round(report.seconds, 3),
        "precision": report.precision,
    }


def _source_roots(con, sources: Sequence[Source]) -> dict[str, dict]:
    """Where each source's local files live: the folders the app may serve images from.

    A folder source's root; a ``--media-root`` directory; otherwise the fewest folders that hold
    every local file the source lists (never wider than needed: the app shows nothing outside).
    """
    out: dict[str, dict] = {}
    for src in sources:
        roots: list[str] = []
        for attr in ("root",):
            value = getattr(src, attr, None)
            if isinstance(value, (str, os.PathLike)):
                roots.append(os.path.abspath(os.fspath(value)))
        # Where followed symbolic links lead (a folder source with --follow-symlinks).
        roots += [os.fspath(d) for d in getattr(src, "linked_roots", None) or ()]
        media = getattr(src, "roots", None)
        if isinstance(media, dict):
            roots += [os.path.abspath(os.fspath(d)) for d in media.values()]
        dirs = [
            d
            for (d,) in con.execute(
                "SELECT DISTINCT regexp_replace(location, '/[^/]*$', '') FROM scan "
                "WHERE source = ? AND starts_with(location, '/')",
                [src.name],
            ).fetchall()
        ]
        dirs = [d for d in dirs if d and not any(_within(d, r) for r in roots)]
        extra = _minimal_ancestors(dirs)
        if len(extra) > 256:
            extra = [os.path.commonpath(extra)]
        out[src.name] = {"type": type(src).__name__, "root": sorted(set(roots + extra))}
    return out


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _minimal_ancestors(dirs: list[str]) -> list[str]:
    out: list[str] = []
    for d in sorted(set(dirs)):
        if not out or not _within(d, out[-1]):
            out.append(d)
    return out
