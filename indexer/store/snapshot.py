"""A read-only view of one published generation: its files, vectors and metadata as SQL.

Readers never block and never take locks: a snapshot reads the files one generation lists, which
no writer modifies or deletes while the generation is among the last ``KEEP_GENERATIONS``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from indexer.errors import CollectionError
from indexer.store.generations import (
    Generation,
    SegmentInfo,
    deletes_file,
    failures_file,
    segment_file,
    updates_file,
    vectors_file,
)
from indexer.store.ids import member
from indexer.store.pieces import VectorPiece
from indexer.store.schema import ALL_COLUMNS, COLUMN_TYPES, META_VERSION, quote_ident, sql_string_list
from indexer.store.vectors import SegmentVectors

if TYPE_CHECKING:  # pragma: no cover
    from indexer.store.collection import Collection

__all__ = ["Snapshot", "FAILURE_SCHEMA", "RETIREMENT_SCHEMA"]

#: The columns of a ``fail-*.parquet`` file (and of the ``failures`` relation).
FAILURE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("source", pa.string()),
        ("location", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("failed_at", pa.timestamp("us")),
    ]
)

#: The columns of a ``del-*.parquet`` file (format 1 files have only ``id``), plus ``commit``, the
#: file's number, in :meth:`Snapshot.retirements`. ``reason`` is one of RETIRE_REASONS.
RETIREMENT_SCHEMA = pa.schema(
    [("id", pa.int64()), ("replaced_by", pa.int64()), ("reason", pa.string()), ("commit", pa.int64())]
)


class Snapshot:
    """A read-only view of one generation. Thread-safe for reading; never takes locks."""

    def __init__(self, collection: Collection, generation: Generation):
        self.collection = collection
        self.generation = generation
        self._vec_cache: dict[int, np.ndarray] = {}
        self._retirements: pa.Table | None = None
        self._lock = threading.Lock()
        segs = generation.segments
        self._lookup = SegmentVectors(
            [s.min_id for s in segs], [s.max_id for s in segs], lambda j: self.segment_vectors(segs[j]), self.dimension
        )

    @property
    def number(self) -> int:
        return self.generation.number

    @property
    def dimension(self) -> int:
        return self.collection.dimension

    # -- files -------------------------------------------------------------------------

    def _paths(self, names: Sequence[str]) -> list[str]:
        return [str(self.collection.path / name) for name in names]

    def segment_paths(self, segments: Sequence[SegmentInfo] | None = None) -> list[str]:
        segs = self.generation.segments if segments is None else segments
        return self._paths([segment_file(s.n) for s in segs])

    def update_paths(self, numbers: Sequence[int] | None = None) -> list[str]:
        return self._paths([updates_file(n) for n in (self.generation.updates if numbers is None else numbers)])

    def delete_paths(self, numbers: Sequence[int] | None = None) -> list[str]:
        return self._paths([deletes_file(n) for n in (self.generation.deletes if numbers is None else numbers)])

    def failure_paths(self) -> list[str]:
        return self._paths([failures_file(n) for n in self.generation.failures])

    # -- vectors -----------------------------------------------------------------------

    def segment_vectors(self, seg: SegmentInfo) -> np.ndarray:
        """The float16 (rows, d) vectors of a segment, memory-mapped (cached per snapshot)."""
        with self._lock:
            arr = self._vec_cache.get(seg.n)
            if arr is None:
                p = self.collection.path / vectors_file(seg.n)
                try:
                    arr = np.load(p, mmap_mode="r")
                except (OSError, ValueError) as exc:
                    raise CollectionError(f"cannot read vectors {p}: {exc}") from exc
                if arr.shape != (seg.rows, self.dimension):
                    raise CollectionError(
                        f"{p} has shape {arr.shape}, expected {(seg.rows, self.dimension)}: the collection is damaged"
                    )
                self._vec_cache[seg.n] = arr
            return arr

    @property
    def vector_lookup(self) -> SegmentVectors:
        """The stored vectors by id (a :data:`~indexer.store.vectors.VectorLookup`, with ``stored``
        for the float16 rows themselves)."""
        return self._lookup

    def get_vectors(self, ids: Any) -> np.ndarray:
        """float32 (len(ids), d) stored vectors of ``ids``, in order (retired ones included): one
        gather per segment touched. Raises KeyError for an id no segment of this generation holds."""
        return self._lookup(ids)

    def deleted_ids(self) -> np.ndarray:
        """Every retired id (sorted int64)."""
        if not self.generation.deletes:
            return np.empty(0, dtype=np.int64)
        import pyarrow.parquet as pq

        parts = [pq.read_table(p, columns=["id"]).column("id").to_numpy() for p in self.delete_paths()]
        return np.unique(np.concatenate(parts).astype(np.int64))

    def retirements(self) -> pa.Table:
        """Every retirement record of this generation (cached): ``id``, ``replaced_by`` (the id that
        replaced it; null when none did, or in a format 1 file, which holds only ids), ``reason``
        (null in format 1) and ``commit`` (the number of the commit that retired it)."""
        with self._lock:
            if self._retirements is None:
                import pyarrow.parquet as pq

                parts = []
                for n, path in zip(self.generation.deletes, self.delete_paths()):
                    t = pq.read_table(path)
                    cols = {
                        f.name: t.column(f.name).cast(f.type)
                        if f.name in t.column_names
                        else pa.nulls(t.num_rows, f.type)
                        for f in RETIREMENT_SCHEMA
                        if f.name != "commit"
                    }
                    cols["commit"] = pa.array([n] * t.num_rows, pa.int64())
                    parts.append(pa.table(cols, schema=RETIREMENT_SCHEMA))
                self._retirements = pa.concat_tables(parts) if parts else RETIREMENT_SCHEMA.empty_table()
            return self._retirements

    def iter_vectors(
        self, segments: Sequence[SegmentInfo] | None = None, *, deleted: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(ids, float16 vectors)`` per segment, leaving out retired ids.

        Memory stays at one segment's vectors (the files are memory-mapped).
        """
        if deleted is None:
            deleted = self.deleted_ids()
        for seg in self.generation.segments if segments is None else segments:
            vecs = self.segment_vectors(seg)
            ids = np.arange(seg.min_id, seg.min_id + seg.rows, dtype=np.int64)
            if deleted.size:
                keep = ~member(ids, deleted)
                if not keep.all():
                    yield ids[keep], np.asarray(vecs[keep])
                    continue
            yield ids, vecs

    def vector_pieces(
        self, segments: Sequence[SegmentInfo] | None = None, *, deleted: np.ndarray | None = None
    ) -> list[VectorPiece]:
        """One picklable :class:`~indexer.store.pieces.VectorPiece` per segment (retired ids left
        out), for builds that read the vectors in other processes or on other machines."""
        if deleted is None:
            deleted = self.deleted_ids()
        out = []
        for seg in self.generation.segments if segments is None else segments:
            lo, hi = np.searchsorted(deleted, [seg.min_id, seg.min_id + seg.rows])
            retired = deleted[lo:hi] if hi > lo else None
            path = str(self.collection.path / vectors_file(seg.n))
            out.append(VectorPiece(path, seg.min_id, 0, seg.rows, retired))
        return out

    def load_vectors(
        self, segments: Sequence[SegmentInfo] | None = None, *, dtype: Any = np.float32
    ) -> tuple[np.ndarray, np.ndarray]:
        """All live ``(ids, vectors)`` of the given segments (default: all), concatenated, as
        ``dtype`` (float16 keeps half the memory of float32)."""
        ids_parts, vec_parts = [], []
        for ids, vecs in self.iter_vectors(segments):
            ids_parts.append(ids)
            vec_parts.append(np.asarray(vecs, dtype=dtype))
        if not ids_parts:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dimension), dtype=dtype)
        return np.concatenate(ids_parts), np.concatenate(vec_parts)

    # -- metadata ----------------------------------------------------------------------

    def images_sql(self, segments: Sequence[SegmentInfo] | None = None, *, live: bool = True) -> str:
        """A SELECT of every column of schema.ALL_COLUMNS over the image rows of this generation.

        Without ``segments``: one row per id, its newest (a row of an update file supersedes the
        id's segment row and older updates); ``live`` leaves out retired ids. With ``segments``
        (a subset): those segments' rows as committed, updates not applied.

        Paths are inlined as string literals (they are the collection's own file names).
        """
        segs = self.generation.segments if segments is None else segments
        if not segs:
            nulls = ", ".join(
                f"CAST(NULL AS {COLUMN_TYPES.get(c, 'VARCHAR')}) AS {quote_ident(c)}" for c in ALL_COLUMNS
            )
            return f"SELECT {nulls} WHERE false"
        paths = self.segment_paths(segs)
        # Segments written by an older version lack the newer columns: null, of the schema's type.
        present = set().union(*(_parquet_columns(*_file_id(p)) for p in paths))
        cols = ", ".join(
            quote_ident(c) if c in present else f"CAST(NULL AS {COLUMN_TYPES.get(c, 'VARCHAR')}) AS {quote_ident(c)}"
            for c in ALL_COLUMNS
        )
        sql = f"SELECT {cols} FROM read_parquet({sql_string_list(paths)}, union_by_name = true)"
        names = ", ".join(quote_ident(c) for c in ALL_COLUMNS)
        if segments is None and self.generation.updates:
            newest = self.updates_sql()
            sql = f"SELECT {names} FROM ({sql}) WHERE id NOT IN (SELECT id FROM ({newest})) UNION ALL {newest}"
        if live and self.generation.deletes:
            sql = f"SELECT {names} FROM ({sql}) WHERE id NOT IN ({self.retired_sql()})"
        return sql

    def segments_to_normalise(self, segments: Sequence[SegmentInfo] | None = None) -> list[SegmentInfo]:
        """The segments (default: all) holding rows whose Darwin Core values were not normalised by
        this version (written before ``meta_version`` existed, or by an older normalisation); read
        from the files' footers, which are cached (segment files never change)."""
        segs = self.generation.segments if segments is None else segments
        paths = self.segment_paths(segs)
        return [s for s, p in zip(segs, paths) if _parquet_min_meta_version(*_file_id(p)) < META_VERSION]

    def updates_sql(self, numbers: Sequence[int] | None = None) -> str:
        """A SELECT of the newest superseding row per id among the given update files (default: all
        of this generation's), every column of schema.ALL_COLUMNS; retired ids included."""
        paths = self.update_paths(numbers)
        # Files written before a column was added lack it: null, of the schema's type.
        present = set().union(*(_parquet_columns(*_file_id(p)) for p in paths))
        cols = ", ".join(
            quote_ident(c) if c in present else f"CAST(NULL AS {COLUMN_TYPES.get(c, 'VARCHAR')}) AS {quote_ident(c)}"
            for c in ALL_COLUMNS
        )
        files = sql_string_list(paths)
        # The newest row per id wins; zero-padded file names order like commit numbers.
        return (
            f"SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY id ORDER BY filename DESC) AS _newest "
            f"FROM read_parquet({files}, union_by_name = true, filename = true)) WHERE _newest = 1"
        )

    def retired_sql(self, numbers: Sequence[int] | None = None) -> str:
        """A SELECT of the ids retired by the given commits (default: every commit of this generation)."""
        return f"SELECT id FROM read_parquet({sql_string_list(self.delete_paths(numbers))})"

    def failures_sql(self) -> str:
        """A SELECT over the live failures: the newest failure per key whose key is not indexed.
        A newest record without a reason marks the failure resolved (its file was pruned)."""
        if not self.generation.failures:
            cols = ", ".join(f"CAST(NULL AS {_arrow_to_duck(f.type)}) AS {quote_ident(f.name)}" for f in FAILURE_SCHEMA)
            return f"SELECT {cols} WHERE false"
        files = sql_string_list(self.failure_paths())
        live_keys = f"SELECT key FROM ({self.images_sql()})"
        # The newest record per key wins; zero-padded file names order like commit numbers.
        return (
            "SELECT * EXCLUDE (_rank, filename) FROM ("
            "SELECT *, row_number() OVER (PARTITION BY key ORDER BY filename DESC, failed_at DESC) AS _rank "
            f"FROM read_parquet({files}, filename = true)) "
            f"WHERE _rank = 1 AND reason IS NOT NULL AND key NOT IN ({live_keys})"
        )

    def connect(self, *, materialize: bool = True):
        """A new in-memory DuckDB connection with ``images`` and ``failures`` relations.

        ``materialize`` copies the live metadata into memory (fast lookups and filters, and the
        connection no longer reads the segment files); otherwise they are views over Parquet.
        """
        import duckdb

        con = duckdb.connect(":memory:")
        kind = "TABLE" if materialize else "VIEW"
        sql = self.images_sql()
        if materialize and self.generation.updates:
            # Superseding rows come out of a window in hash order: in id order again, lookups by
            # id and ranges of ids skip the rest of the table as they do without updates.
            sql = f"SELECT * FROM ({sql}) ORDER BY id"
        con.execute(f"CREATE {kind} images AS {sql}")
        con.execute(f"CREATE VIEW failures AS {self.failures_sql()}")
        return con


def _file_id(path: str) -> tuple[str, int, int]:
    """(path, size, mtime in ns): the key of a file's cached footer facts (a collection deleted and
    made again at the same path has new files under the old names)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise CollectionError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return path, st.st_size, st.st_mtime_ns


@lru_cache(maxsize=65536)
def _parquet_columns(path: str, size: int = 0, mtime_ns: int = 0) -> frozenset[str]:
    """The column names of a segment file (its footer; cached: segment files are immutable)."""
    import pyarrow.parquet as pq

    try:
        return frozenset(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as exc:
        raise CollectionError(f"cannot read {path}: {exc}") from exc


@lru_cache(maxsize=65536)
def _parquet_min_meta_version(path: str, size: int = 0, mtime_ns: int = 0) -> int:
    """The lowest ``meta_version`` of a segment's rows (0 when a row has none), from its footer."""
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as exc:
        raise CollectionError(f"cannot read {path}: {exc}") from exc
    names = meta.schema.names
    if "meta_version" not in names:
        return 0
    i = names.index("meta_version")
    low = None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(i).statistics
        if stats is None or not stats.has_min_max or stats.null_count:
            return 0
        low = stats.min if low is None else min(low, stats.min)
    return int(low) if low is not None else META_VERSION


def _arrow_to_duck(t: pa.DataType) -> str:
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    return "VARCHAR"
