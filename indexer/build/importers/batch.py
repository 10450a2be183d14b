"""One batch of an import: rows checked, mapped, compared with the collection, buffered in the writer.

Per row, by its id (the collection's ``key``): a new id is added; an id the collection already
holds keeps its stored vector when the new one is the same (after normalisation, at float16) and
its metadata too (``unchanged``), is re-committed with the new metadata (``metadata``), or is
replaced, its old vector retired (``replaced``). An id seen earlier in the same import is a
duplicate (the first one is kept). A row that cannot be used (no id, no vector, wrong dimension,
NaN, infinite, zero) is recorded as a failure naming the file and row, and the import goes on; a
known id whose new row is unusable loses its old vector, as a changed file that no longer reads
does in a build.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from indexer.build.importers.mapping import MetadataMapper, resolve_locations
from indexer.build.importers.options import ImportOptions, ImportReport
from indexer.build.importers.readers import RawBatch
from indexer.build.importers.vectors import check_vectors
from indexer.build.sources._common import HTTP_URL_RE
from indexer.store import Writer

__all__ = ["ImportRun"]

log = logging.getLogger(__name__)


@dataclass
class ImportRun:
    """One import in progress: the writer (and its ``live`` / ``failed`` tables), the options, the
    report, the file records to publish with the next commit, and what prune needs."""

    writer: Writer
    options: ImportOptions
    report: ImportReport
    records: dict[str, dict] = field(default_factory=dict)
    folders: dict[str, set[str]] = field(default_factory=dict)
    kept: list[np.ndarray] = field(default_factory=list)  # old ids found unchanged (never retired)
    first_id: int = 0  # ids from here on were added by this import
    _pending_keys: set[str] = field(default_factory=set)
    _records_dirty: bool = False
    _last_commit: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.first_id = self.writer.next_id
        self.records = dict(self.writer.generation.stats.get("imports") or {})

    # -- committing ---------------------------------------------------------------------

    def note_file_done(self, path: str, record: dict) -> None:
        """Record a file as imported; published with the commit that holds its last rows."""
        self.records[path] = record
        self._records_dirty = True

    def maybe_commit(self) -> None:
        w = self.writer
        if w.pending >= self.options.commit_every or (
            w.pending and time.monotonic() - self._last_commit >= self.options.commit_seconds
        ):
            self.commit()

    def commit(self, extra_stats: dict | None = None) -> None:
        stats = dict(extra_stats or {})
        if self._records_dirty:
            stats["imports"] = dict(self.records)
        if self.writer.pending or stats:
            self.writer.commit(stats=stats or None)
            self._records_dirty = False
        self._pending_keys.clear()
        self._last_commit = time.monotonic()

    # -- one batch ----------------------------------------------------------------------

    def add_batch(self, raw: RawBatch, source: str, mapper: MetadataMapper) -> None:
        writer, report = self.writer, self.report
        n = raw.num_rows
        report.rows += n
        assert raw.vectors is not None
        checked = check_vectors(raw.vectors, writer.collection.dimension, raw.file, raw.first_row)
        if checked.renormalised:
            report.renormalised += checked.renormalised
            lo, hi = checked.norm_range or (1.0, 1.0)
            old = report.norm_range or [lo, hi]
            report.norm_range = [min(old[0], lo), max(old[1], hi)]
        reasons, details = checked.reasons, checked.details
        keys = pc.utf8_trim_whitespace(raw.ids)
        no_id = pc.fill_null(pc.equal(keys, ""), True).to_numpy(zero_copy_only=False) | ~keys.is_valid().to_numpy(
            zero_copy_only=False
        )
        key_list = keys.to_pylist()
        for i in np.flatnonzero(no_id):
            row = raw.first_row + int(i)
            key_list[i] = f"{raw.file}#row{row}"
            reasons[i], details[i] = "no-id", f"{raw.file}, row {row}: no id"
        meta = mapper.apply(writer.con, raw.metadata, n)
        location, size, mtime, folders = resolve_locations(raw.locations, raw.base_dir)
        if folders:
            self.folders.setdefault(source, set()).update(folders)
        media = meta.column("mediaURL")
        is_url = pc.fill_null(pc.match_substring_regex(location, HTTP_URL_RE), False)
        url = pc.if_else(is_url, location, pa.scalar(None, pa.string()))
        meta = meta.set_column(meta.schema.get_field_index("mediaURL"), "mediaURL", pc.coalesce(media, url))
        rows = meta.append_column("key", pa.array(key_list, pa.string()))
        rows = rows.append_column("source", pa.array([source] * n, pa.string()))
        rows = rows.append_column("location", location.cast(pa.string()))
        rows = rows.append_column("size", size)
        rows = rows.append_column("mtime", mtime)
        self._apply(rows, checked.vectors, reasons, details, no_id)

    def _apply(self, rows: pa.Table, vectors: np.ndarray, reasons: list, details: list, no_id: np.ndarray) -> None:
        writer, report = self.writer, self.report
        n = rows.num_rows
        old_id, old_meta, dup_in_batch = self._lookup(rows, no_id)
        keys = rows.column("key").to_pylist()
        dup = dup_in_batch | np.array(
            [(k in self._pending_keys) or (o >= self.first_id) for k, o in zip(keys, old_id)], dtype=bool
        )
        bad = np.array([r is not None for r in reasons], dtype=bool)
        dup &= ~bad
        report.duplicates += int(dup.sum())
        known = (old_id >= 0) & ~dup
        same_vec = np.zeros(n, dtype=bool)
        check = np.flatnonzero(known & ~bad)
        if check.size:
            stored = writer.snapshot().get_vectors(old_id[check])
            fresh = vectors[check].astype(np.float16).astype(np.float32)
            same_vec[check] = (stored == fresh).all(axis=1)
        meta_hash = rows.column("meta_hash").to_pylist()
        same_meta = np.array([m == o for m, o in zip(meta_hash, old_meta)], dtype=bool)
        unchanged = known & ~bad & same_vec & same_meta
        meta_only = known & ~bad & same_vec & ~same_meta
        replaced = known & ~bad & ~same_vec
        new = (old_id < 0) & ~bad & ~dup
        add = np.flatnonzero(new | meta_only | replaced)
        report.unchanged += int(unchanged.sum())
        report.metadata_updated += int(meta_only.sum())
        report.replaced += int(replaced.sum())
        report.imported += int(new.sum())
        if unchanged.any():
            self.kept.append(old_id[unchanged])
        if add.size:
            writer.add(rows.take(pa.array(add)), vectors[add])
            self._pending_keys.update(keys[i] for i in add)
        stale = known & bad
        retire = np.flatnonzero(meta_only | replaced | stale)
        if retire.size:
            writer.retire(old_id[retire])
        report.replaced_by_failure += int(stale.sum())
        failed = np.flatnonzero(bad)
        if failed.size:
            self._record_failures(
                rows.take(pa.array(failed)), [reasons[i] for i in failed], [details[i] for i in failed]
            )
        self.maybe_commit()

    def _lookup(self, rows: pa.Table, no_id: np.ndarray) -> tuple[np.ndarray, list, np.ndarray]:
        """(old id or -1, old meta_hash or None, repeated earlier in the batch) per row."""
        n = rows.num_rows
        con = self.writer.con
        con.register("_b", pa.table({"key": rows.column("key"), "_pos": pa.array(np.arange(n, dtype=np.int64))}))
        try:
            got = con.execute(
                "SELECT b._pos, l.id, l.meta_hash, row_number() OVER (PARTITION BY b.key ORDER BY b._pos) AS r "
                "FROM _b b LEFT JOIN live l ON b.key = l.key ORDER BY b._pos"
            ).fetchnumpy()
        finally:
            con.unregister("_b")
        old_id = np.asarray(_filled(got["id"], -1), dtype=np.int64)
        old_meta = [None if m is None else str(m) for m in _objects(got["meta_hash"])]
        dup = (np.asarray(got["r"]) > 1) & ~no_id
        return old_id, old_meta, dup

    def _record_failures(self, rows: pa.Table, reasons: list[str], details: list[str]) -> None:
        con, report = self.writer.con, self.report
        for r in reasons:
            report.failed_by_reason[r] = report.failed_by_reason.get(r, 0) + 1
        table = rows.select(["key", "source", "location", "size", "mtime"])
        table = table.append_column("stage", pa.array(["import"] * rows.num_rows, pa.string()))
        table = table.append_column("reason", pa.array(reasons, pa.string()))
        table = table.append_column("detail", pa.array(details, pa.string()))
        # The same failure recorded by an earlier run is not recorded again.
        con.register("_f", table)
        try:
            known = set(con.execute("SELECT f.key, f.reason FROM failed f JOIN _f USING (key, reason)").fetchall())
        finally:
            con.unregister("_f")
        if known:
            keep = [i for i, (k, r) in enumerate(zip(table.column("key").to_pylist(), reasons)) if (k, r) not in known]
            table = table.take(pa.array(keep, pa.int64()))
        if table.num_rows:
            self.writer.record_failures(table)
            log.debug("%d unusable rows, first: %s", table.num_rows, table.column("detail")[0].as_py())


def _filled(values: Any, fill: int) -> np.ndarray:
    if isinstance(values, np.ma.MaskedArray):
        return values.filled(fill)
    arr = np.asarray(values, dtype=object)
    return np.array([fill if v is None else v for v in arr], dtype=np.int64)


def _objects(values: Any) -> list:
    if isinstance(values, np.ma.MaskedArray):
        return [None if m else v for v, m in zip(values.data.tolist(), np.ma.getmaskarray(values).tolist())]
    return list(values)
