"""The single writer of a collection: buffers changes and publishes them as new generations.

Contracts:

- Immutability: a data file, once renamed into place, is never modified. A commit writes its files
  atomically (:mod:`indexer.store.files`), and only then the generation file that lists them. A
  crash at any moment leaves the previous generation intact and at worst some unreferenced files,
  which the next writer deletes.
- Ids: every image row gets the next integer id at commit; ids are never reused (``next_id`` only
  grows, and is published with the rows that used it). A retired id (re-encoded, pruned) stays
  retired, and its retirement records the id that replaced it, if one did, and why.
- Identity: new metadata for an image already committed (an edited label, a new column) is a
  superseding row with the same id (``update``), written to an update file; readers take the
  newest row of an id, its vector stays where it is, and the ANN index is not touched. Only new
  or changed pixels get new ids.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from indexer.dwc import normalise_query
from indexer.errors import CollectionError
from indexer.store.files import atomic_file, atomic_write_json, disk_full_error, is_out_of_space
from indexer.store.generations import (
    KEEP_GENERATIONS,
    Generation,
    SegmentInfo,
    deletes_file,
    failures_file,
    generation_file,
    segment_file,
    updates_file,
    utc_stamp,
    utcnow,
    vectors_file,
)
from indexer.store.lock import WriterLock
from indexer.store.replacements import RETIRE_REASONS
from indexer.store.rows import conform, last_per_id
from indexer.store.schema import META_VERSION
from indexer.store.snapshot import FAILURE_SCHEMA, RETIREMENT_SCHEMA, Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from indexer.store.collection import Collection

__all__ = ["Writer"]

log = logging.getLogger(__name__)

_DELETE_SCHEMA = pa.schema([f for f in RETIREMENT_SCHEMA if f.name != "commit"])
#: The identity columns the writer keeps of every live image (the ``live`` table); an update
#: carries over the ones its rows do not give (``_CARRIED``).
_LIVE_COLUMNS = ("id", "key", "source", "size", "mtime", "sha256", "meta_hash", "width", "height", "indexed_at")
_CARRIED = ("sha256", "width", "height", "indexed_at")


def _write_parquet(path: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    with atomic_file(path) as f:
        pq.write_table(table, f, compression="zstd", row_group_size=65536)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)


class Writer:
    """The single writer of a collection. Use as a context manager.

    ``add`` / ``update`` / ``retire`` / ``record_failures`` buffer changes; ``commit`` writes them
    as one segment (and update, retirement, failure files) and publishes a new generation. Anything
    not committed is lost on a crash, anything committed is kept. The writer keeps a small
    in-memory DuckDB table of the live images' identities (``live``: id, key, source, size, mtime,
    sha256, meta_hash, width, height, indexed_at) and of the live failures (``failed``), for the
    pipeline to diff a source against without re-reading Parquet.
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
            self._pending_updates: list[pa.Table] = []
            self._pending_retire: list[pa.Table] = []
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
        removed += _clean_served_metadata(col.path / "metadata")
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
        # A row normalised by an earlier version (or none) has no usable digest: the build
        # re-commits its metadata (normalised, under the same id), whatever the hash says.
        digest = f"CASE WHEN coalesce(meta_version, 0) >= {META_VERSION} THEN meta_hash END AS meta_hash"
        live_cols = ", ".join(digest if c == "meta_hash" else c for c in _LIVE_COLUMNS)
        con.execute(f"CREATE TABLE live AS SELECT {live_cols} FROM ({snap.images_sql()})")
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
        table = self._normalised(conform(rows, ids))
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

    def update(self, rows: pa.Table, ids: Sequence[int] | np.ndarray) -> None:
        """Buffer new metadata for live images ``ids`` (one row each, any subset of the schema's
        columns; ``key`` required): superseding rows with the same ids and vectors. Columns the rows
        do not give among sha256, width, height and indexed_at are carried over from the current row.
        Raises ValueError for an id that is not live."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size != rows.num_rows:
            raise ValueError(f"{rows.num_rows} rows for {ids.size} ids")
        if ids.size == 0:
            return
        con = self.con
        con.register("_upd_ids", pa.table({"id": ids, "pos": np.arange(ids.size, dtype=np.int64)}))
        try:
            carried = con.sql(
                f"SELECT u.pos, {', '.join('l.' + c for c in _CARRIED)} FROM _upd_ids u LEFT JOIN live l USING (id) "
                "ORDER BY u.pos"
            ).to_arrow_table()
            missing = con.execute(
                "SELECT min(id), count(*) FROM _upd_ids WHERE id NOT IN (SELECT id FROM live)"
            ).fetchall()[0]
        finally:
            con.unregister("_upd_ids")
        if missing[1]:
            raise ValueError(f"cannot update image {missing[0]} (and {missing[1] - 1} more): not a live image")
        for name in _CARRIED:
            if name not in rows.column_names:
                rows = rows.append_column(name, carried.column(name))
        self._pending_updates.append(self._normalised(conform(rows, ids)))
        self._pending_count += int(ids.size)

    def retire(
        self,
        ids: Sequence[int] | np.ndarray,
        *,
        replaced_by: Sequence[int | None] | np.ndarray | None = None,
        reason: str | None = None,
    ) -> None:
        """Buffer the retirement of ids (a changed or removed image's old vector), recording why
        (one of RETIRE_REASONS, or None: not said) and, aligned with ``ids``, the id that replaced
        each (None: none)."""
        if reason is not None and reason not in RETIRE_REASONS:
            raise ValueError(f"unknown retirement reason {reason!r}; expected one of {sorted(RETIRE_REASONS)}")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not ids.size:
            return
        if replaced_by is None:
            successors = pa.nulls(ids.size, pa.int64())
        else:
            successors = pa.array(list(replaced_by), pa.int64())
            if len(successors) != ids.size:
                raise ValueError(f"{len(successors)} successors for {ids.size} retired ids")
        self._pending_retire.append(
            pa.table({"id": ids, "replaced_by": successors, "reason": pa.array([reason] * ids.size, pa.string())})
        )
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
        """Write buffered changes as one segment (and update, retirement and failure files) and
        publish a new generation.

        ``index``: False keeps the current index entry, None drops it, a dict replaces it (see
        ``publish_index``). Returns the new generation number, or None if there was nothing to do.
        All or nothing: if anything fails before the generation is published (a full disk raises
        DiskFullError), the files this commit wrote are removed, the changes stay buffered and the
        last published generation is untouched.
        """
        if not self._pending_count and index is False and stats is None:
            return None
        col = self.collection
        gen = self.generation
        con = self.con
        written: list[Path] = []
        extra_keys = set(self._extra_keys)
        con.execute("BEGIN TRANSACTION")
        try:
            new = self._write_commit(gen, written, extra_keys, index, stats)
            atomic_write_json(col.path / generation_file(new.number), new.to_dict())
        except BaseException as exc:
            # Published only if the generation file is in place (a signal may land just after).
            if not (col.path / generation_file(gen.number + 1)).exists():
                con.execute("ROLLBACK")
                for path in written:
                    path.unlink(missing_ok=True)
                if is_out_of_space(exc):
                    raise disk_full_error(col.path, self._pending_bytes(), self._describe_pending()) from None
                raise
            new = self.collection.read_generation(gen.number + 1)
        con.execute("COMMIT")
        self.generation = new
        self._extra_keys = extra_keys
        self._pending_rows, self._pending_vecs, self._pending_fail = [], [], []
        self._pending_updates, self._pending_retire = [], []
        self._pending_count = 0
        log.debug("published generation %d (%d images)", new.number, new.images)
        return new.number

    def _write_commit(
        self, gen: Generation, written: list[Path], extra_keys: set[str], index: Any, stats: dict | None
    ) -> Generation:
        """Write the buffered changes' files (appending each to ``written``) and bring the live and
        failed tables up to date (inside the caller's transaction); the generation to publish."""
        col, con = self.collection, self.con
        file_n = gen.next_file
        segments, updates = list(gen.segments), list(gen.updates)
        deletes, failures = list(gen.deletes), list(gen.failures)
        deleted, updated = gen.deleted, gen.updated

        def write(name: str, table: pa.Table) -> None:
            written.append(col.path / name)
            _write_parquet(col.path / name, table)

        if self._pending_rows:
            table = pa.concat_tables(self._pending_rows)
            first = int(table.column("id")[0].as_py())
            written.append(col.path / vectors_file(file_n))
            _write_npy(col.path / vectors_file(file_n), np.concatenate(self._pending_vecs))
            write(segment_file(file_n), table)
            segments.append(SegmentInfo(file_n, table.num_rows, first))
            extra_keys |= self._extra_keys_of(table)
            con.register("_new_rows", table.select(list(_LIVE_COLUMNS)))
            con.execute("INSERT INTO live SELECT * FROM _new_rows")
            con.execute("DELETE FROM failed WHERE key IN (SELECT key FROM _new_rows)")
            con.unregister("_new_rows")
        if self._pending_updates:
            utable = last_per_id(pa.concat_tables(self._pending_updates))
            write(updates_file(file_n), utable)
            updates.append(file_n)
            updated += utable.num_rows
            extra_keys |= self._extra_keys_of(utable)
            con.register("_upd_rows", utable.select(list(_LIVE_COLUMNS)))
            con.execute("DELETE FROM live WHERE id IN (SELECT id FROM _upd_rows)")
            con.execute("INSERT INTO live SELECT * FROM _upd_rows")
            con.unregister("_upd_rows")
        if self._pending_retire:
            retire = last_per_id(pa.concat_tables(self._pending_retire))
            write(deletes_file(file_n), retire.cast(_DELETE_SCHEMA))
            deletes.append(file_n)
            deleted += retire.num_rows
            con.register("_retired", retire.select(["id"]))
            con.execute("DELETE FROM live WHERE id IN (SELECT id FROM _retired)")
            con.unregister("_retired")
        if self._pending_fail:
            ftable = pa.concat_tables(self._pending_fail)
            write(failures_file(file_n), ftable)
            failures.append(file_n)
            con.register("_fails", ftable)
            con.execute("DELETE FROM failed WHERE key IN (SELECT key FROM _fails)")
            con.execute(
                "INSERT INTO failed SELECT key, source, location, stage, reason, detail, size, mtime, failed_at "
                "FROM (SELECT *, row_number() OVER (PARTITION BY key ORDER BY failed_at DESC) AS r FROM _fails) "
                "WHERE r = 1 AND reason IS NOT NULL AND key NOT IN (SELECT key FROM live)"
            )
            con.unregister("_fails")

        images = con.execute("SELECT count(*) FROM live").fetchall()[0][0]
        failed = con.execute("SELECT count(*) FROM failed").fetchall()[0][0]
        return Generation(
            number=gen.number + 1,
            created=utc_stamp(),
            segments=tuple(segments),
            updates=tuple(updates),
            deletes=tuple(deletes),
            failures=tuple(failures),
            next_id=self.next_id,
            next_file=file_n + 1,
            images=int(images),
            deleted=deleted,
            updated=updated,
            failed=int(failed),
            index=gen.index if index is False else index,
            extra_keys=tuple(sorted(extra_keys)),
            stats={**gen.stats, **(stats or {})},
        )

    def _pending_bytes(self) -> int:
        """About how many bytes committing the buffered changes writes (Arrow sizes are an upper
        bound of the compressed Parquet), plus room for the generation file."""
        tables = self._pending_rows + self._pending_updates + self._pending_retire + self._pending_fail
        return sum(v.nbytes for v in self._pending_vecs) + sum(t.nbytes for t in tables) + (64 << 10)

    def _describe_pending(self) -> str:
        n_rows = sum(t.num_rows for t in self._pending_rows)
        n_upd = sum(t.num_rows for t in self._pending_updates)
        parts = [f"{n_rows:,} images" if n_rows else "", f"{n_upd:,} metadata updates" if n_upd else ""]
        return "committing " + (" and ".join(p for p in parts if p) or "the build's records")

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

    def _extra_keys_of(self, table: pa.Table) -> set[str]:
        """The keys of the ``extra`` JSON objects of ``table``'s rows."""
        if "extra" not in table.column_names:
            return set()
        con = self.con
        con.register("_extra", table.select(["extra"]))
        try:
            keys = con.execute(
                "SELECT DISTINCT unnest(json_keys(extra)) FROM _extra WHERE extra IS NOT NULL"
            ).fetchall()
        finally:
            con.unregister("_extra")
        return {k for (k,) in keys if k}


#: A temporary file of an interrupted write of persisted served metadata is removed after this long
#: (a write of 100M rows takes minutes).
STALE_SERVED_TEMP_S = 6 * 3600


def _clean_served_metadata(folder: Path) -> int:
    """Keep only the newest served-metadata file a search process persisted
    (:mod:`indexer.search.metadata_file`: one later generations can start from) and remove
    temporary files of interrupted writes; returns how many files went."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0

    def number(name: str) -> int:
        n = name[len("served-") :].split("-", 1)[0]
        return int(n) if n.isdigit() else -1

    served = sorted((n for n in names if n.startswith("served-") and n.endswith(".duckdb")), key=number)
    doomed = served[:-1]
    now = time.time()
    for name in names:
        if name.startswith(".served-"):
            try:
                if now - os.stat(folder / name).st_mtime > STALE_SERVED_TEMP_S:
                    doomed.append(name)
            except OSError:  # pragma: no cover
                pass
    removed = 0
    for name in doomed:
        try:
            os.unlink(folder / name)
            removed += 1
        except OSError as exc:  # pragma: no cover
            log.warning("cannot remove metadata/%s: %s", name, exc)
    return removed
