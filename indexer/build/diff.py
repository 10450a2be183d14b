"""Stage 2, diff: the scanned rows against the collection's live images and recorded failures.

Every row of ``scan`` gets an ``action`` in the ``work`` table: ``scan-failure`` (recorded),
``unchanged`` (skipped), ``metadata`` (its new metadata superseding the old, same id and vector), ``known-failure`` (not
tried again unless it may pass now), ``new`` or ``changed`` (decoded and encoded). A file is
changed when its size or modification time is (``--rehash`` also compares content hashes);
``--prune`` retires images whose files are gone and clears their failures.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

import pyarrow as pa

from indexer.build.context import BuildRun, progress_bar
from indexer.build.options import TRANSIENT_REASONS
from indexer.build.sources.base import Source
from indexer.locations import kind_sql
from indexer.media.localfs import read_file

__all__ = ["classify"]

log = logging.getLogger(__name__)


def classify(run: BuildRun, sources: Sequence[Source]) -> None:
    """Split ``scan`` into: scan failures, unchanged, metadata-only, to fetch; find pruned ids."""
    con, writer, options, report = run.con, run.writer, run.options, run.report
    same_file = "s.size IS NOT DISTINCT FROM l.size AND s.mtime IS NOT DISTINCT FROM l.mtime"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE work AS SELECT s.*, l.id AS old_id, l.meta_hash AS old_meta_hash, "
        f"CASE WHEN s.error_reason IS NOT NULL THEN 'scan-failure' "
        f"WHEN l.id IS NULL THEN 'new' "
        f"WHEN {same_file} AND s.size IS NOT NULL AND s.meta_hash = l.meta_hash THEN 'unchanged' "
        f"WHEN {same_file} AND s.size IS NOT NULL THEN 'metadata' "
        # Remote and archive items have no size/mtime: they are unchanged unless their metadata is.
        f"WHEN s.size IS NULL AND l.size IS NULL AND s.meta_hash = l.meta_hash THEN 'unchanged' "
        f"WHEN s.size IS NULL AND l.size IS NULL THEN 'metadata' "
        "ELSE 'changed' END AS action "
        "FROM scan s LEFT JOIN live l ON s.key = l.key"
    )
    # Known failures are not tried again unless the file changed, the reason may pass, or asked.
    if not options.retry_failed:
        con.execute(
            "UPDATE work SET action = 'known-failure' FROM failed f WHERE work.key = f.key "
            "AND work.action = 'new' AND work.size IS NOT DISTINCT FROM f.size "
            "AND work.mtime IS NOT DISTINCT FROM f.mtime AND NOT list_contains(?, f.reason)",
            [sorted(TRANSIENT_REASONS)],
        )
    if options.rehash:
        _rehash(run)
    counts = dict(con.execute("SELECT action, count(*) FROM work GROUP BY action").fetchall())
    report.unchanged = counts.get("unchanged", 0)
    report.skipped_failed = counts.get("known-failure", 0)

    # Scan failures: recorded unless the same failure is already recorded.
    fails = con.sql(
        "SELECT w.key, w.source, w.location, 'scan' AS stage, w.error_reason AS reason, w.error_detail AS detail, "
        "w.size, w.mtime FROM work w LEFT JOIN failed f ON w.key = f.key "
        "WHERE w.action = 'scan-failure' AND (f.key IS NULL OR f.reason IS DISTINCT FROM w.error_reason "
        "OR f.size IS DISTINCT FROM w.size OR f.mtime IS DISTINCT FROM w.mtime)"
    ).to_arrow_table()
    if fails.num_rows:
        writer.record_failures(fails)
    for reason, n in con.execute(
        "SELECT error_reason, count(*) FROM work WHERE action = 'scan-failure' GROUP BY 1"
    ).fetchall():
        report.failed_by_reason[reason] = report.failed_by_reason.get(reason, 0) + n
    # A previously indexed key that now fails to scan keeps its old vector (nothing is lost).

    if options.prune:
        names = [s.name for s in sources]
        con.register("_sources", pa.table({"name": names}))
        gone = con.execute(
            "SELECT id FROM live WHERE source IN (SELECT name FROM _sources) AND key NOT IN (SELECT key FROM scan)"
        ).fetchall()
        if gone:
            writer.retire([i for (i,) in gone], reason="pruned")
            report.pruned = len(gone)
            log.info("pruning %d images whose files are gone", len(gone))
        # Failures of files that are gone are cleared too (a record without a reason).
        cleared = con.sql(
            "SELECT key, source, location, 'pruned' AS stage, CAST(NULL AS VARCHAR) AS reason, "
            "'the file is gone' AS detail, size, mtime FROM failed "
            "WHERE source IN (SELECT name FROM _sources) AND key NOT IN (SELECT key FROM scan)"
        ).to_arrow_table()
        con.unregister("_sources")
        if cleared.num_rows:
            writer.record_failures(cleared)
            report.pruned_failures = cleared.num_rows
            log.info("clearing %d failures of files that are gone", cleared.num_rows)


def _rehash(run: BuildRun) -> None:
    """``--rehash``: a local file whose size and modification time look unchanged is read and
    hashed; if its bytes differ from what was indexed it is re-encoded (and its old vector
    retired). Catches a file rewritten with its old timestamp. Reads every byte; decodes nothing."""
    from concurrent.futures import ThreadPoolExecutor

    con, report, options = run.con, run.report, run.options
    rows = con.execute(
        "SELECT w.key, w.location, l.sha256 FROM work w JOIN live l ON w.key = l.key "
        "WHERE w.action IN ('unchanged', 'metadata') AND w.size IS NOT NULL "
        f"AND {kind_sql('w.location')} = 'file'"
    ).fetchall()

    def differs(row) -> str | None:
        key, location, sha = row
        try:
            data = read_file(location, max_bytes=options.max_bytes)
        except Exception:  # unreadable now: the build reads it again and records why
            return key
        return key if hashlib.sha256(data).hexdigest() != sha else None

    changed: list[str] = []
    bar = progress_bar(len(rows), options.progress, "hashing")
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 2) * 2)) as pool:
        for key in pool.map(differs, rows):
            if key is not None:
                changed.append(key)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    report.rehashed = len(rows)
    if changed:
        con.register("_rehashed", pa.table({"key": pa.array(changed, pa.string())}))
        con.execute("UPDATE work SET action = 'changed' WHERE key IN (SELECT key FROM _rehashed)")
        con.unregister("_rehashed")
        log.info("%d files have new content with an unchanged size and time", len(changed))
