"""The single writer of a collection: buffers changes and publishes them as new generations.

Contracts:

- Immutability: a data file, once renamed into place, is never modified. A commit writes its files
  atomically (:mod:`indexer.store.files`), and only then the generation file that lists them. A
  crash at any moment leaves the previous generation intact and at worst some unreferenced files,
  which the next writer deletes.
- Ids: every image row gets the next integer id at commit; ids are never reused (``next_id`` only
  grows, and is published with the rows that used it). A retired id (re-encoded, pruned) stays
  retired.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa

from indexer.dwc import normalise_query
from indexer.errors import CollectionError
from indexer.store.files import atomic_file, atomic_write_json
from indexer.store.generations import (
    KEEP_GENERATIONS,
    Generation,
    SegmentInfo,
    deletes_file,
    failures_file,
    generation_file,
    segment_file,
    utc_stamp,
    utcnow,
    vectors_file,
)
from indexer.store.lock import WriterLock
from indexer.store.schema import META_VERSION, arrow_schema
from indexer.store.snapshot import FAILURE_SCHEMA, Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from indexer.store.collection import Collection

__all__ = ["Writer"]

log = logging.getLogger(__name__)

_DELETE_SCHEMA = pa.schema([("id", pa.int64())])


def _write_parquet(path: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    with atomic_file(path) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=65536)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)


class Writer:
    """The single writer of a collection. Use as a context manager.

    ``add`` / ``retire`` / ``record_failures`` buffer changes; ``commit`` writes them as one
    segment and publishes a new generation. Anything not committed is lost on a crash, anything
    committed is kept. The writer keeps a small in-memory DuckDB table of the live images'
    identities (``live``: id, key, source, size, mtime, sha256, meta_hash) and of the live failures
    (``failed``), for the pipeline to diff a source against without re-reading Parquet.
    """

    def __init__(self, collection: Collection):
        self.collection = collection
        self._lock = WriterLock(collection.path)
        self._lock.acquire()
        try:
            self.generation = collection.latest_generation()
            self._clean_orphans()
            self._pending_rows: list[pa.Table] = []
            self._pending_vecs: list[np.ndarray] = []
            self._pending_retire: list[np.ndarray] = []
            self._pending_fail: list[pa.Table] = []
            self._pending_count = 0
            self.next_id = self.generation.next_id
            self._extra_keys = set(self.generation.extra_keys)
            self.con = self._load_state()
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        try:
            self.con.close()
        except Exception:  # pragma: no cover
            pass
        self._lock.release()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- state --------------------------------------------------------------------------

    def _clean_orphans(self) -> None:
        """Delete files that no retained generation references (left by a killed writer)."""
        col = self.collection
        numbers = col.generation_numbers()
        keep_numbers = numbers[-KEEP_GENERATIONS:]
        referenced: set[str] = set()
        for n in keep_numbers:
            try:
                referenced |= col.read_generation(n).referenced_files()
            except CollectionError:
                # A damaged old generation must not stop us; its files stay (nothing is lost).
                log.warning("generation %d is unreadable; keeping all files", n)
                return
        removed = 0
        for sub in ("segments", "index"):
            d = col.path / sub
            if not d.is_dir():
                continue
            for name in os.listdir(d):
                rel = f"{sub}/{name}"
                if rel not in referenced:
                    try:
                        os.unlink(d / name)
                        removed += 1
                    except OSError as exc:  # pragma: no cover
                        log.warning("cannot remove unreferenced %s: %s", rel, exc)
        for n in numbers[:-KEEP_GENERATIONS]:
            try:
                os.unlink(col.path / generation_file(n))
            except OSError:  # pragma: no cover
                pass
        for name in os.listdir(col.path / "generations"):
            if name.startswith("."):  # temp files of an interrupted publish
                try:
                    os.unlink(col.path / "generations" / name)
                except OSError:  # pragma: no cover
                    pass
        if removed:
            log.info("removed %d files left over by an interrupted run", removed)

    def _load_state(self):
        import duckdb

        snap = Snapshot(self.collection, self.generation)
        con = duckdb.connect(":memory:")
        con.execute(
            # A row normalised by an earlier version (or none) has no usable digest: the build
            # re-commits its metadata (normalised; its vector kept), whatever the hash says.
            "CREATE TABLE live AS SELECT id, key, source, size, mtime, sha256, "
            f"CASE WHEN coalesce(meta_version, 0) >= {META_VERSION} THEN meta_hash END AS meta_hash "
            f"FROM ({snap.images_sql()})"
        )
        con.execute(
            "CREATE TABLE failed AS SELECT key, source, location, stage, reason, detail, size, mtime, failed_at "
            f"FROM ({snap.failures_sql()})"
        )
        return con

    def snapshot(self) -> Snapshot:
        """A snapshot of the last generation this writer published (or started from)."""
        return Snapshot(self.collection, self.generation)

    @property
    def pending(self) -> int:
        """Number of buffered changes (rows added + ids retired + failures) not yet committed."""
        return self._pending_count

    # -- buffering ----------------------------------------------------------------------

    def add(self, rows: pa.Table, vectors: np.ndarray) -> np.ndarray:
        """Buffer image rows (any subset of the schema's columns; ``key`` required) with their
        vectors (n, d), L2-normalised float. Returns the ids they will have once committed. Rows
        without ``meta_version`` get their Darwin Core values normalised (originals in ``verbatim``)."""
        n = rows.num_rows
        vectors = np.asarray(vectors)
        if vectors.shape != (n, self.collection.dimension):
            raise ValueError(f"vectors have shape {vectors.shape}, expected {(n, self.collection.dimension)}")
        if n == 0:
            return np.empty(0, dtype=np.int64)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        table = self._normalised(_conform(rows, ids))
        self._pending_rows.append(table)
        self._pending_vecs.append(vectors.astype(np.float16))
        self._pending_count += n
        return ids

    def _normalised(self, table: pa.Table) -> pa.Table:
        """``table`` with its Darwin Core values normalised (:func:`indexer.dwc.normalise_query`)
        unless every row already is (a build's rows are, from its scan): every stored row is."""
        if table.column("meta_version").null_count == 0:
            return table
        con = self.con
        con.register("_to_normalise", table)
        normalised = normalise_query(con, "_to_normalise")
        try:
            out = con.sql(f"{normalised.sql} ORDER BY id").to_arrow_table()
        finally:
            normalised.drop(con)
            con.unregister("_to_normalise")
        return out.select(table.column_names).cast(table.schema)

    def retire(self, ids: Sequence[int] | np.ndarray) -> None:
        """Buffer the retirement of ids (a changed or removed image's old vector)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size:
            self._pending_retire.append(ids)
            self._pending_count += int(ids.size)

    def record_failures(self, rows: pa.Table) -> None:
        """Buffer failures: columns of FAILURE_SCHEMA (``failed_at`` filled in if absent). A row
        whose ``reason`` is null clears the key's recorded failure."""
        if rows.num_rows == 0:
            return
        cols = {}
        now = utcnow()
        for f in FAILURE_SCHEMA:
            if f.name in rows.column_names:
                cols[f.name] = rows.column(f.name).cast(f.type)
            elif f.name == "failed_at":
                cols[f.name] = pa.array([now] * rows.num_rows, f.type)
            else:
                cols[f.name] = pa.nulls(rows.num_rows, f.type)
        self._pending_fail.append(pa.table(cols, schema=FAILURE_SCHEMA))
        self._pending_count += rows.num_rows

    # -- commit -------------------------------------------------------------------------

    def commit(self, *, index: dict | None | Literal[False] = False, stats: dict | None = None) -> int | None:
        """Write buffered changes as one segment and publish a new generation.

        ``index``: False keeps the current index entry, None drops it, a dict replaces it (see
        ``publish_index``). Returns the new generation number, or None if there was nothing to do.
        """
        if not self._pending_count and index is False and stats is None:
            return None
        col = self.collection
        gen = self.generation
        file_n = gen.next_file
        segments = list(gen.segments)
        deletes = list(gen.deletes)
        failures = list(gen.failures)
        deleted = gen.deleted

        if self._pending_rows:
            table = pa.concat_tables(self._pending_rows)
            vecs = np.concatenate(self._pending_vecs)
            first = int(table.column("id")[0].as_py())
            _write_npy(col.path / vectors_file(file_n), vecs)
            _write_parquet(col.path / segment_file(file_n), table)
            segments.append(SegmentInfo(file_n, table.num_rows, first))
            self._note_extra_keys(table)
            self.con.register(
                "_new_rows", table.select(["id", "key", "source", "size", "mtime", "sha256", "meta_hash"])
            )
            self.con.execute("INSERT INTO live SELECT * FROM _new_rows")
            self.con.execute("DELETE FROM failed WHERE key IN (SELECT key FROM _new_rows)")
            self.con.unregister("_new_rows")
        if self._pending_retire:
            retire = np.unique(np.concatenate(self._pending_retire))
            _write_parquet(col.path / deletes_file(file_n), pa.table({"id": retire}, schema=_DELETE_SCHEMA))
            deletes.append(file_n)
            deleted += int(retire.size)
            self.con.register("_retired", pa.table({"id": retire}))
            self.con.execute("DELETE FROM live WHERE id IN (SELECT id FROM _retired)")
            self.con.unregister("_retired")
        if self._pending_fail:
            ftable = pa.concat_tables(self._pending_fail)
            _write_parquet(col.path / failures_file(file_n), ftable)
            failures.append(file_n)
            self.con.register("_fails", ftable)
            self.con.execute("DELETE FROM failed WHERE key IN (SELECT key FROM _fails)")
            self.con.execute(
                "INSERT INTO failed SELECT key, source, location, stage, reason, detail, size, mtime, failed_at "
                "FROM (SELECT *, row_number() OVER (PARTITION BY key ORDER BY failed_at DESC) AS r FROM _fails) "
                "WHERE r = 1 AND reason IS NOT NULL AND key NOT IN (SELECT key FROM live)"
            )
            self.con.unregister("_fails")

        images = self.con.execute("SELECT count(*) FROM live").fetchall()[0][0]
        failed = self.con.execute("SELECT count(*) FROM failed").fetchall()[0][0]
        new_stats = dict(gen.stats)
        if stats:
            new_stats.update(stats)
        new = Generation(
            number=gen.number + 1,
            created=utc_stamp(),
            segments=tuple(segments),
            deletes=tuple(deletes),
            failures=tuple(failures),
            next_id=self.next_id,
            next_file=file_n + 1,
            images=int(images),
            deleted=deleted,
            failed=int(failed),
            index=gen.index if index is False else index,
            extra_keys=tuple(sorted(self._extra_keys)),
            stats=new_stats,
        )
        atomic_write_json(col.path / generation_file(new.number), new.to_dict())
        self.generation = new
        self._pending_rows, self._pending_vecs, self._pending_retire, self._pending_fail = [], [], [], []
        self._pending_count = 0
        log.debug("published generation %d (%d images)", new.number, images)
        return new.number

    def publish_index(self, entry: dict | None) -> int:
        """Publish a new generation whose ANN index entry is ``entry``.

        ``entry`` holds at least ``path`` (relative to the collection) and ``covers`` (the segment
        numbers whose vectors it holds); other keys (factory, info) are kept as given. Buffered
        changes are committed with it.
        """
        number = self.commit(index=entry)
        assert number is not None
        return number

    def new_file_name(self, prefix: str, suffix: str) -> str:
        """A fresh name under ``index/`` for a derived file of the next generation."""
        return f"index/{prefix}-{self.generation.number + 1:08d}{suffix}"

    def _note_extra_keys(self, table: pa.Table) -> None:
        if "extra" not in table.column_names:
            return
        con = self.con
        con.register("_extra", table.select(["extra"]))
        try:
            keys = con.execute(
                "SELECT DISTINCT unnest(json_keys(extra)) FROM _extra WHERE extra IS NOT NULL"
            ).fetchall()
        finally:
            con.unregister("_extra")
        self._extra_keys.update(k for (k,) in keys if k)


def _conform(rows: pa.Table, ids: np.ndarray) -> pa.Table:
    """Cast ``rows`` to the full segment schema, setting ``id`` and ``indexed_at``."""
    schema = arrow_schema()
    n = rows.num_rows
    now = utcnow()
    arrays = []
    for f in schema:
        if f.name == "id":
            arrays.append(pa.array(ids, pa.int64()))
        elif f.name == "indexed_at":
            arrays.append(pa.array([now] * n, f.type))
        elif f.name in rows.column_names:
            col = rows.column(f.name)
            if col.type != f.type:
                col = _safe_cast(col, f.type, f.name)
            arrays.append(col)
        else:
            arrays.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _safe_cast(col: pa.ChunkedArray, to: pa.DataType, name: str) -> pa.ChunkedArray:
    """Cast, turning values that do not parse into nulls (a bad ``year`` must not lose the image)."""
    import pyarrow.compute as pc

    try:
        return col.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        stripped = pc.utf8_trim_whitespace(col)
        if pa.types.is_integer(to):
            ok = pc.match_substring_regex(stripped, r"^[+-]?\d{1,9}(\.0*)?$")
            cleaned = pc.if_else(ok, pc.replace_substring_regex(stripped, r"\.0*$", ""), pa.scalar(None, pa.string()))
            return cleaned.cast(to)
        if pa.types.is_floating(to):
            ok = pc.match_substring_regex(stripped, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
            return pc.if_else(ok, stripped, pa.scalar(None, pa.string())).cast(to)
    log.warning("column %s: cannot convert %s to %s; stored as null", name, col.type, to)
    return pa.nulls(len(col), to)
