"""The state an engine serves: one generation's metadata (in-memory DuckDB), ANN index and
not-yet-indexed vectors, with the caches that only this generation's data determines.

A :class:`ServedState` is never mutated once published (its caches fill in); :func:`load_state`
makes the next one, reusing what it can of the previous state: the same DuckDB connection gets the
new rows and loses the retired ones in one transaction (so concurrent readers see one state or the
other), the same ANN index object while the index file is the same, the vectors of segments already
loaded.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.dwc import install_fold, lift_from_extra, normalise_query
from indexer.errors import FilterError
from indexer.search import metadata_file
from indexer.search.filters import Filter
from indexer.search.taxonomy import Taxonomy
from indexer.search.values import ColumnValues
from indexer.store import Collection, Snapshot
from indexer.store.generations import SegmentInfo
from indexer.store.ids import member
from indexer.store.replacements import Replacement, find_replacement
from indexer.store.schema import DERIVED_COLUMNS, ROW_ORDER, quote_ident

__all__ = [
    "ServedState",
    "StateOptions",
    "load_state",
    "connect_metadata",
    "metadata_cursor",
    "compact_images",
    "FILTER_CACHE_BYTES",
]

log = logging.getLogger(__name__)

#: Bytes of selected-id arrays kept per generation (8 bytes per id: 1M ids = 8 MiB).
FILTER_CACHE_BYTES = 256 << 20

#: A process that starts from an older generation's persisted metadata persists it again for its
#: own generation when it added at least this fraction of rows (a whole copy of the table).
REPERSIST_FRACTION = 0.1


class _IdCache:
    """LRU of Filter -> (sorted, read-only id array, notices), bounded by the arrays' bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Filter, tuple[np.ndarray, list[str]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Filter) -> tuple[np.ndarray, list[str]] | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def put(self, key: Filter, ids: np.ndarray, notices: list[str]) -> None:
        if ids.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = (ids, notices)
            self._bytes += ids.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= old.nbytes


@dataclass(frozen=True)
class StateOptions:
    """How states are loaded: ``mmap_index`` (None: memory-map indexes over 2M vectors), the
    budget of the per-generation filter cache, and whether large generations' metadata is served
    from (and persisted to) a file (:mod:`indexer.search.metadata_file`)."""

    mmap_index: bool | None = None
    filter_cache_bytes: int = FILTER_CACHE_BYTES
    metadata_file: bool = True  # large generations start from a persisted file (metadata_file)


@dataclass(eq=False)
class ServedState:
    """Everything needed to answer queries against one generation (see the module docstring).

    ``con``: DuckDB connection with ``images`` (a table) and ``failures`` (a view); ``index``: the
    ANN index (None: search exactly) covering segments ``covers``; ``delta_ids`` / ``delta_vecs``:
    the live vectors no index covers; ``deleted``: every retired id (sorted).
    """

    snapshot: Snapshot
    con: Any
    index: Any
    index_path: str | None
    covers: set[int]
    delta_ids: np.ndarray
    delta_vecs: np.ndarray
    deleted: np.ndarray
    filter_cache_bytes: int = FILTER_CACHE_BYTES
    filters: _IdCache = field(init=False)
    index_excluded: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        self.segments = {s.n for s in self.snapshot.generation.segments}
        self.update_files = set(self.snapshot.generation.updates)
        self.delete_files = set(self.snapshot.generation.deletes)
        self.filters = _IdCache(self.filter_cache_bytes)
        self.index_excluded = self._index_excluded()
        self._taxonomy: Taxonomy | None = None
        self.values = ColumnValues(self.cursor)
        self._lock = threading.Lock()

    def _index_excluded(self) -> np.ndarray | None:
        """Retired ids the ANN index may still hold (None: none). An index that removes retired ids
        and has seen every retirement holds none, so unfiltered searches need no selector."""
        if self.index is None or not self.deleted.size:
            return None
        entry = self.snapshot.generation.index or {}
        if entry.get("removes_deleted") and int(entry.get("deleted_seen", -1)) == int(self.deleted.size):
            return None
        return self.deleted

    @property
    def generation(self):
        return self.snapshot.generation

    def cursor(self) -> Any:
        """A cursor of the state's connection (one per thread: DuckDB connections are not shared),
        on the compressed metadata database."""
        return metadata_cursor(self.con)

    def taxonomy(self) -> Taxonomy:
        with self._lock:
            if self._taxonomy is None:
                self._taxonomy = Taxonomy.from_connection(self.cursor())
            return self._taxonomy

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """float32 (len(ids), d) stored vectors of ``ids``, in order (see Snapshot.get_vectors)."""
        return self.snapshot.get_vectors(ids)

    def replacement(self, image_id: int) -> Replacement | None:
        """What became of ``image_id`` if it was retired (see :mod:`indexer.store.replacements`);
        None when it is live or was never an id of this collection."""
        return find_replacement(self.snapshot, self.cursor(), int(image_id))

    def is_retired(self, image_id: int) -> bool:
        if not self.deleted.size:
            return False
        i = int(np.searchsorted(self.deleted, image_id))
        return i < self.deleted.size and int(self.deleted[i]) == image_id

    # -- metadata --------------------------------------------------------------------------------

    def filter_sql(self, flt: Filter) -> tuple[str, list, list[str]]:
        """(SQL condition, parameters, notices) of ``flt`` for this collection."""
        # The taxonomy (one GROUP BY over the collection) is built only when a filter needs it.
        needs_taxonomy = any(c.field.strip().lower() == "taxon" for c in flt.conditions)
        return flt.to_sql(self.generation.extra_keys, self.taxonomy() if needs_taxonomy else None, self.values)

    def execute(self, sql: str, params: list | None = None) -> list[tuple]:
        """Rows of a read-only query over ``images`` / ``failures``; a value DuckDB cannot compare is
        the user's filter, not a crash: a FilterError."""
        import duckdb

        try:
            return self.cursor().execute(sql, list(params or [])).fetchall()
        except duckdb.Error as exc:
            raise FilterError(f"cannot apply the filters: {str(exc).splitlines()[0]}") from None

    def allowed(self, flt: Filter) -> tuple[np.ndarray, list[str]]:
        """(sorted ids passing ``flt``, notices); cached per filter for this generation."""
        cached = self.filters.get(flt)
        if cached is not None:
            return cached
        import duckdb

        sql, params, notices = self.filter_sql(flt)
        try:
            rel = self.cursor().execute(f"SELECT id FROM images WHERE {sql}", params)
            ids = np.asarray(rel.fetchnumpy()["id"], dtype=np.int64)
        except duckdb.Error as exc:
            raise FilterError(f"cannot apply the filters: {str(exc).splitlines()[0]}") from None
        # Ids are unique (one row per id) and come back in table order (by taxonomy, see ROW_ORDER),
        # sorted within a taxon. np.sort, not np.unique: numpy's hash-based unique is far slower on
        # large arrays.
        if ids.size > 1 and not bool((ids[1:] > ids[:-1]).all()):
            ids = np.sort(ids, kind="stable")
        ids.flags.writeable = False
        self.filters.put(flt, ids, list(notices))
        return ids, list(notices)

    def metadata(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        """id -> every column of its row, for the live ones among ``ids``."""
        if not ids:
            return {}
        cur = self.cursor()
        # "id = ANY(list)" is a semi-join DuckDB answers fast; an IN list of k parameters becomes k
        # OR-ed comparisons over every row.
        rel = cur.execute(f"SELECT * EXCLUDE ({_DERIVED}) FROM images WHERE id = ANY(?)", [list(ids)])
        cols = [d[0] for d in rel.description]
        return {row[0]: dict(zip(cols, row)) for row in rel.fetchall()}


_DERIVED = ", ".join(quote_ident(c) for c in DERIVED_COLUMNS)

#: The in-memory database holding ``images``: compressed (DuckDB compresses its row groups as a
#: database file's: dictionary, FSST, RLE and bit-packing), about a ninth of the plain in-memory
#: table's memory for Darwin Core rows (``bench/metadata_scale.py``).
METADATA_DB = "meta"


def connect_metadata() -> Any:
    """A DuckDB connection whose default database is a compressed in-memory one (``METADATA_DB``),
    with ``bioclip_fold`` defined there."""
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute(f"ATTACH ':memory:' AS {METADATA_DB} (COMPRESS)")
    con.execute(f"USE {METADATA_DB}")
    install_fold(con)
    return con


def metadata_cursor(con: Any) -> Any:
    # A cursor starts on the connection's first database, not the one the connection USEs.
    cur = con.cursor()
    cur.execute(f"USE {METADATA_DB}")
    return cur


def compact_images(con: Any) -> None:
    """Rewrite ``images`` in :data:`ROW_ORDER` and compress it (a checkpoint of the in-memory
    database). Run once a load has inserted everything; incremental inserts append after it."""
    present = {r[0] for r in con.execute("DESCRIBE images").fetchall()}
    order = ", ".join(quote_ident(c) for c in ROW_ORDER if c in present)
    con.execute(f"CREATE OR REPLACE TABLE images AS SELECT * FROM images ORDER BY {order}")
    con.execute(f"CHECKPOINT {METADATA_DB}")


def load_state(collection: Collection, number: int, previous: ServedState | None, options: StateOptions) -> ServedState:
    """The state of generation ``number``, built on ``previous`` where it can be."""
    snap = collection.snapshot(number)
    gen = snap.generation
    con = _metadata(collection, snap, previous, options)
    entry = gen.index
    index, index_path, covers = None, None, set()
    if entry:
        index_path = entry["path"]
        covers = set(entry.get("covers", []))
        if previous is not None and previous.index_path == index_path:
            index = previous.index
        else:
            index = _open_index(collection, entry, options.mmap_index)
            if index is None:
                covers = set()
    uncovered = [s for s in gen.segments if s.n not in covers]
    deleted = snap.deleted_ids()
    delta_ids, delta_vecs = _delta(snap, uncovered, previous, covers)
    return ServedState(
        snapshot=snap,
        con=con,
        index=index,
        index_path=index_path,
        covers=covers,
        delta_ids=delta_ids,
        delta_vecs=delta_vecs,
        deleted=deleted,
        filter_cache_bytes=options.filter_cache_bytes,
    )


def _open_index(collection: Collection, entry: dict, mmap: bool | None) -> Any:
    from indexer.ann import AnnIndex

    path = collection.path / entry["path"]
    if mmap is None:
        mmap = bool(entry.get("info", {}).get("n", 0) > 2_000_000)
    try:
        return AnnIndex.load(str(path), mmap=mmap)
    except Exception as exc:  # derived data: search exactly rather than fail
        log.warning("cannot open the ANN index %s (%s); searching exactly", path, exc)
        return None


def _delta(
    snap: Snapshot, uncovered: list, previous: ServedState | None, covers: set[int]
) -> tuple[np.ndarray, np.ndarray]:
    if previous is not None and previous.covers == covers and previous.delta_ids is not None:
        # Reuse vectors already loaded for segments that are still uncovered.
        known = previous.segments - previous.covers
        new = [s for s in uncovered if s.n not in known]
        ids_new, vecs_new = snap.load_vectors(new)
        ids = np.concatenate([previous.delta_ids, ids_new])
        vecs = np.concatenate([previous.delta_vecs, vecs_new])
        deleted = snap.deleted_ids()
        if deleted.size and ids.size:
            keep = ~member(ids, deleted)
            ids, vecs = ids[keep], vecs[keep]
        return ids, vecs
    return snap.load_vectors(uncovered)


def _apply_increment(con: Any, snap: Snapshot, base: metadata_file.Lineage) -> int:
    """Bring the served metadata of ``base`` (in ``con``) to ``snap``'s generation, which extends
    it: its new rows, the superseding rows of updated images, less the retired ones, in one
    transaction, so that concurrent readers see one state or the other. Returns the rows it
    inserted, superseded and retired."""
    gen = snap.generation
    segments, updates, deletes = set(base.segments), set(base.updates), set(base.deletes)
    new_segs = [s for s in gen.segments if s.n not in segments]
    new_upds = [n for n in gen.updates if n not in updates]
    new_dels = [n for n in gen.deletes if n not in deletes]
    if new_segs or new_upds or new_dels:
        cur = metadata_cursor(con)
        cur.execute("BEGIN TRANSACTION")
        try:
            if new_segs:
                _insert_rows(cur, snap, new_segs, live=False)
            if new_upds:
                _apply_updates(cur, snap, new_upds)
            if new_dels:
                cur.execute(f"DELETE FROM images WHERE id IN ({snap.retired_sql(new_dels)})")
            cur.execute("CREATE OR REPLACE VIEW failures AS " + snap.failures_sql())
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
    return sum(s.rows for s in new_segs) + max(0, gen.updated - base.updated) + max(0, gen.deleted - base.deleted)


def _metadata(collection: Collection, snap: Snapshot, previous: ServedState | None, options: StateOptions) -> Any:
    gen = snap.generation
    if previous is not None and metadata_file.Lineage.of(previous.generation).extended_by(gen):
        # Incremental: the same connection, brought to this generation.
        _apply_increment(previous.con, snap, metadata_file.Lineage.of(previous.generation))
        return previous.con
    large = options.metadata_file and gen.images >= metadata_file.METADATA_FILE_MIN_ROWS
    if large:
        con = _from_persisted(collection, snap)
        if con is not None:
            return con
    con = connect_metadata()
    con.execute(f"CREATE TABLE images AS {snap.images_sql([])}")
    _insert_rows(con, snap, list(gen.segments), live=True)
    if gen.updates:
        _apply_updates(con, snap, list(gen.updates))
    compact_images(con)
    con.execute(f"CREATE VIEW failures AS {snap.failures_sql()}")
    # An ART index on id turns the metadata join of a page of hits into index lookups (a scan of
    # the id column otherwise); DuckDB keeps it up to date through the incremental inserts and
    # deletes above.
    con.execute("CREATE INDEX images_id ON images (id)")
    if large:
        metadata_file.save_served_file(con, METADATA_DB, collection, gen)
    return con


def _from_persisted(collection: Collection, snap: Snapshot) -> Any | None:
    """The served metadata of ``snap``'s generation from the newest persisted file of it or of a
    generation it extends (:mod:`indexer.search.metadata_file`); None when there is none."""
    import duckdb

    gen = snap.generation
    for _number, path in metadata_file.persisted(collection, gen.number):
        base = metadata_file.read_lineage(path)
        if base is None or not base.extended_by(gen):
            continue
        con = metadata_file.open_copy(path, base.images, METADATA_DB)
        if con is None:
            continue
        try:
            install_fold(con)
            added = _apply_increment(con, snap, base)
            con.execute(f"CREATE OR REPLACE VIEW failures AS {snap.failures_sql()}")
            if added >= REPERSIST_FRACTION * max(1, base.images):
                # worth a new file: sorted and compressed again, so the appended rows do not
                # scatter each taxon's rows over new row groups file after file
                compact_images(con)
            con.execute("CREATE INDEX IF NOT EXISTS images_id ON images (id)")
        except duckdb.Error as exc:  # e.g. a file of a layout the fingerprint did not tell apart
            log.warning("cannot bring the persisted metadata %s up to date (%s); loading the generation", path, exc)
            con.close()
            continue
        log.info(
            "served metadata of generation %d from %s (%d rows added, updated or retired since)",
            gen.number,
            path.name,
            added,
        )
        if added >= REPERSIST_FRACTION * max(1, base.images):
            metadata_file.save_served_file(con, METADATA_DB, collection, gen)
        return con
    return None


def _apply_updates(con: Any, snap: Snapshot, numbers: list[int]) -> None:
    """Replace the rows of ``images`` superseded in the update files ``numbers`` by their newest
    superseding rows (of ids still live), appended in id order."""
    con.execute(f"CREATE TEMP TABLE _superseding AS {snap.updates_sql(numbers)}")
    try:
        con.execute("DELETE FROM images WHERE id IN (SELECT id FROM _superseding)")
        retired = f" WHERE id NOT IN ({snap.retired_sql()})" if snap.generation.deletes else ""
        con.execute(f"INSERT INTO images SELECT * FROM _superseding{retired} ORDER BY id")
    finally:
        con.execute("DROP TABLE _superseding")


def _insert_rows(con: Any, snap: Snapshot, segments: list[SegmentInfo], *, live: bool) -> None:
    """Insert the rows of ``segments`` into ``images``; rows written before this version normalised
    their Darwin Core values (an older collection) are normalised on the way in (originals kept in
    ``verbatim``), so that collections built earlier answer filters the same way. The next build
    stores them normalised."""
    old = snap.segments_to_normalise(segments)
    current = [s for s in segments if s not in old]
    if current:
        con.execute(f"INSERT INTO images {snap.images_sql(current, live=live)}")
    if old:
        rows = sum(s.rows for s in old)
        log.info(
            "%s: normalising the Darwin Core values of %d rows written by an earlier version (in memory; "
            "the next build stores them)",
            snap.collection.path,
            rows,
        )
        normalised = normalise_query(con, f"({lift_from_extra(f'({snap.images_sql(old, live=live)})')})")
        try:
            con.execute(f"INSERT INTO images {normalised.sql}")
        finally:
            normalised.drop(con)
