"""The on-disk collection: a directory that describes itself and survives any crash.

Layout (see docs/ARCHITECTURE.md)::

    COLLECTION/
      collection.json                  format version, model, dimension, preprocessing (written once)
      generations/gen-NNNNNNNN.json    one published state each; the newest complete one is current
      segments/seg-NNNNNNNN.parquet    metadata rows of one commit, ids contiguous within the file
      segments/seg-NNNNNNNN.f16.npy    their vectors, float16 (n, d), same order
      segments/del-NNNNNNNN.parquet    ids retired by one commit
      segments/fail-NNNNNNNN.parquet   failures recorded by one commit
      index/...                        ANN index files (derived data, rebuildable from the vectors)
      writer.lock                      flock held by the one writing process

Contracts:

- Immutability: a data file, once renamed into place, is never modified. A commit writes its files
  under temporary names, fsyncs them, renames them, and only then writes the generation file that
  lists them (also via fsync + rename). A crash at any moment leaves the previous generation intact
  and at worst some unreferenced files, which the next writer deletes.
- Readers never block and never take locks: they read the newest generation file and the files it
  lists. Files referenced by any of the last ``KEEP_GENERATIONS`` generations are never deleted, so a
  reader that opened a recent generation keeps working while a writer publishes new ones.
- One writer at a time: ``Collection.writer()`` takes a non-blocking exclusive flock on
  ``writer.lock`` and raises ``CollectionLockedError`` at once if another process holds it. The
  kernel releases the lock when the process dies, even on SIGKILL.
- Ids: every image row gets the next integer id at commit; ids are never reused (``next_id`` only
  grows, and is published with the rows that used it). A retired id (re-encoded, pruned) stays
  retired.
"""

from __future__ import annotations

import bisect
import datetime as _dt
import errno
import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.errors import (
    CollectionError,
    CollectionLockedError,
    CollectionNotFoundError,
    FormatVersionError,
)
from indexer.schema import ALL_COLUMNS, COLUMN_TYPES, arrow_schema, quote_ident

__all__ = [
    "FORMAT_VERSION",
    "Collection",
    "Snapshot",
    "Writer",
    "FAILURE_SCHEMA",
    "is_collection",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "collection.json"
KEEP_GENERATIONS = 5

_GEN_RE = re.compile(r"^gen-(\d{8})\.json$")

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
_DELETE_SCHEMA = pa.schema([("id", pa.int64())])

# Writer-lock descriptors this process holds. A forked child (a decode worker) inherits them, and
# an flock lasts until every descriptor of it is closed: a worker outliving a killed indexer would
# keep the collection locked. So every forked child closes its copies at once.
_HELD_LOCK_FDS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or all of it."""
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def _write_parquet_atomic(path: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    tmp = _tmp_name(path)
    pq.write_table(table, tmp, compression="zstd", row_group_size=65536)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def is_collection(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


@dataclass(frozen=True)
class SegmentInfo:
    """One committed unit of images: rows with ids ``min_id .. min_id + rows - 1``."""

    n: int
    rows: int
    min_id: int

    @property
    def max_id(self) -> int:
        return self.min_id + self.rows - 1

    def to_dict(self) -> dict:
        return {"n": self.n, "rows": self.rows, "min_id": self.min_id}


@dataclass(frozen=True)
class Generation:
    """A published state of the collection (the content of one ``gen-*.json``)."""

    number: int
    created: str
    segments: tuple[SegmentInfo, ...] = ()
    deletes: tuple[int, ...] = ()  # file numbers of del-*.parquet
    failures: tuple[int, ...] = ()  # file numbers of fail-*.parquet
    next_id: int = 0
    next_file: int = 1
    images: int = 0
    deleted: int = 0
    failed: int = 0
    index: dict | None = None
    extra_keys: tuple[str, ...] = ()
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "generation": self.number,
            "created": self.created,
            "segments": [s.to_dict() for s in self.segments],
            "deletes": list(self.deletes),
            "failures": list(self.failures),
            "next_id": self.next_id,
            "next_file": self.next_file,
            "images": self.images,
            "deleted": self.deleted,
            "failed": self.failed,
            "index": self.index,
            "extra_keys": list(self.extra_keys),
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Generation:
        version = d.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"generation {d.get('generation')} was written by a newer format (version {version}); "
                f"this bioclip-search reads version {FORMAT_VERSION}: upgrade bioclip-search"
            )
        return cls(
            number=int(d["generation"]),
            created=d.get("created", ""),
            segments=tuple(SegmentInfo(int(s["n"]), int(s["rows"]), int(s["min_id"])) for s in d.get("segments", [])),
            deletes=tuple(int(x) for x in d.get("deletes", [])),
            failures=tuple(int(x) for x in d.get("failures", [])),
            next_id=int(d.get("next_id", 0)),
            next_file=int(d.get("next_file", 1)),
            images=int(d.get("images", 0)),
            deleted=int(d.get("deleted", 0)),
            failed=int(d.get("failed", 0)),
            index=d.get("index"),
            extra_keys=tuple(d.get("extra_keys", [])),
            stats=dict(d.get("stats", {})),
        )

    @classmethod
    def empty(cls) -> Generation:
        return cls(number=0, created=_utcnow().isoformat() + "Z")

    def referenced_files(self) -> set[str]:
        """Names (relative to the collection) of every file this generation needs."""
        names = set()
        for s in self.segments:
            names.add(f"segments/seg-{s.n:08d}.parquet")
            names.add(f"segments/seg-{s.n:08d}.f16.npy")
        for n in self.deletes:
            names.add(f"segments/del-{n:08d}.parquet")
        for n in self.failures:
            names.add(f"segments/fail-{n:08d}.parquet")
        if self.index:
            for key in ("path", "sidecar"):
                if self.index.get(key):
                    names.add(self.index[key])
            names.update(self.index.get("files", []))
        return names


class Collection:
    """A collection directory. Cheap to construct; reading state goes through ``snapshot()``."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path).resolve()
        self.manifest = manifest

    # -- opening and creating -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> Collection:
        """Open an existing collection; raise a named error if it is missing, damaged or too new."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            if path.exists():
                raise CollectionNotFoundError(f"{path} is not a bioclip-search collection (no {MANIFEST})")
            raise CollectionNotFoundError(f"collection not found: {path}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CollectionError(f"cannot read {manifest_path}: {exc}") from exc
        version = manifest.get("format_version")
        if not isinstance(version, int):
            raise CollectionError(f"{manifest_path} has no format_version")
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{path} was written by a newer bioclip-search (collection format {version}; "
                f"this version reads format {FORMAT_VERSION}): upgrade bioclip-search to open it"
            )
        return cls(path, manifest)

    @classmethod
    def create(cls, path: str | os.PathLike, model: dict, *, dimension: int) -> Collection:
        """Create an empty collection for ``model`` (a ``ClipModel.describe()`` dict)."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise CollectionError(f"a collection already exists at {path}")
        if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise CollectionError(f"{path} exists and is not empty; choose a new folder for the collection")
        for sub in ("generations", "segments", "index"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        from indexer import __version__

        manifest = {
            "format_version": FORMAT_VERSION,
            "created": _utcnow().isoformat() + "Z",
            "created_by": f"bioclip-search {__version__}",
            "model": model,
            "dimension": int(dimension),
            "vector_dtype": "float16",
            "metric": "inner_product",
        }
        atomic_write_json(path / MANIFEST, manifest)
        return cls(path, manifest)

    # -- properties ---------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def model(self) -> dict:
        return dict(self.manifest["model"])

    def file(self, name: str) -> Path:
        return self.path / name

    # -- generations --------------------------------------------------------------------

    def generation_numbers(self) -> list[int]:
        try:
            names = os.listdir(self.path / "generations")
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for n in names if (m := _GEN_RE.match(n)))

    def latest_generation_number(self) -> int:
        nums = self.generation_numbers()
        return nums[-1] if nums else 0

    def read_generation(self, number: int) -> Generation:
        if number == 0:
            return Generation.empty()
        p = self.path / "generations" / f"gen-{number:08d}.json"
        try:
            return Generation.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise CollectionError(f"cannot read {p}: {exc}") from exc

    def latest_generation(self) -> Generation:
        return self.read_generation(self.latest_generation_number())

    def snapshot(self, number: int | None = None) -> Snapshot:
        gen = self.read_generation(self.latest_generation_number() if number is None else number)
        return Snapshot(self, gen)

    # -- writing ------------------------------------------------------------------------

    def writer(self) -> Writer:
        """Take the writer lock and return a Writer (a context manager that releases it)."""
        return Writer(self)


class Snapshot:
    """A read-only view of one generation. Thread-safe for reading; never takes locks."""

    def __init__(self, collection: Collection, generation: Generation):
        self.collection = collection
        self.generation = generation
        self._starts = [s.min_id for s in generation.segments]
        self._vec_cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def number(self) -> int:
        return self.generation.number

    @property
    def dimension(self) -> int:
        return self.collection.dimension

    # -- files -------------------------------------------------------------------------

    def segment_paths(self, segments: Sequence[SegmentInfo] | None = None) -> list[str]:
        segs = self.generation.segments if segments is None else segments
        return [str(self.collection.path / "segments" / f"seg-{s.n:08d}.parquet") for s in segs]

    def delete_paths(self) -> list[str]:
        return [str(self.collection.path / "segments" / f"del-{n:08d}.parquet") for n in self.generation.deletes]

    def failure_paths(self) -> list[str]:
        return [str(self.collection.path / "segments" / f"fail-{n:08d}.parquet") for n in self.generation.failures]

    # -- vectors -----------------------------------------------------------------------

    def segment_vectors(self, seg: SegmentInfo) -> np.ndarray:
        """The float16 (rows, d) vectors of a segment, memory-mapped (cached per snapshot)."""
        with self._lock:
            arr = self._vec_cache.get(seg.n)
            if arr is None:
                p = self.collection.path / "segments" / f"seg-{seg.n:08d}.f16.npy"
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

    def deleted_ids(self) -> np.ndarray:
        """Every retired id (sorted int64)."""
        if not self.generation.deletes:
            return np.empty(0, dtype=np.int64)
        import pyarrow.parquet as pq

        parts = [pq.read_table(p, columns=["id"]).column("id").to_numpy() for p in self.delete_paths()]
        return np.unique(np.concatenate(parts).astype(np.int64))

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
                keep = ~np.isin(ids, deleted, assume_unique=True)
                if not keep.all():
                    yield ids[keep], np.asarray(vecs[keep])
                    continue
            yield ids, vecs

    def load_vectors(self, segments: Sequence[SegmentInfo] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All live ``(ids, float32 vectors)`` of the given segments (default: all)."""
        ids_parts, vec_parts = [], []
        for ids, vecs in self.iter_vectors(segments):
            ids_parts.append(ids)
            vec_parts.append(np.asarray(vecs, dtype=np.float32))
        if not ids_parts:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dimension), dtype=np.float32)
        return np.concatenate(ids_parts), np.concatenate(vec_parts)

    def get_vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 vectors for the given ids, in order. Raises KeyError for an id never committed."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        segs = self.generation.segments
        for i, id_ in enumerate(ids):
            j = bisect.bisect_right(self._starts, int(id_)) - 1
            if j < 0 or id_ > segs[j].max_id:
                raise KeyError(int(id_))
            out[i] = self.segment_vectors(segs[j])[int(id_) - segs[j].min_id]
        return out

    # -- metadata ----------------------------------------------------------------------

    def images_sql(self, segments: Sequence[SegmentInfo] | None = None) -> str:
        """A SELECT over the live image rows of this generation (every column of schema.ALL_COLUMNS).

        Paths are inlined as string literals (they are the collection's own file names).
        """
        segs = self.generation.segments if segments is None else segments
        cols = ", ".join(quote_ident(c) for c in ALL_COLUMNS)
        if not segs:
            nulls = ", ".join(
                f"CAST(NULL AS {COLUMN_TYPES.get(c, 'VARCHAR')}) AS {quote_ident(c)}" for c in ALL_COLUMNS
            )
            return f"SELECT {nulls} WHERE false"
        files = _sql_list(self.segment_paths(segs))
        sql = f"SELECT {cols} FROM read_parquet({files}, union_by_name = true)"
        if self.generation.deletes:
            sql += f" WHERE id NOT IN (SELECT id FROM read_parquet({_sql_list(self.delete_paths())}))"
        return sql

    def failures_sql(self) -> str:
        """A SELECT over the live failures: the newest failure per key whose key is not indexed.
        A newest record without a reason marks the failure resolved (its file was pruned)."""
        if not self.generation.failures:
            cols = ", ".join(f"CAST(NULL AS {_arrow_to_duck(f.type)}) AS {quote_ident(f.name)}" for f in FAILURE_SCHEMA)
            return f"SELECT {cols} WHERE false"
        files = _sql_list(self.failure_paths())
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
        con.execute(f"CREATE {kind} images AS {self.images_sql()}")
        con.execute(f"CREATE VIEW failures AS {self.failures_sql()}")
        return con


def _sql_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _arrow_to_duck(t: pa.DataType) -> str:
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMP"
    return "VARCHAR"


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
        self._lock_fd: int | None = None
        self._acquire_lock()
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
            self._release_lock()
            raise

    # -- lock ---------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        import fcntl

        path = self.collection.path / "writer.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                holder = ""
                try:
                    holder = (self.collection.path / "writer.lock").read_text().strip()
                except OSError:
                    pass
                raise CollectionLockedError(
                    f"another indexer is writing to {self.collection.path}"
                    + (f" ({holder})" if holder else "")
                    + "; wait for it to finish (searching the collection meanwhile is fine)"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} since {_utcnow().isoformat()}Z".encode())
        self._lock_fd = fd
        _HELD_LOCK_FDS.add(fd)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            import fcntl

            _HELD_LOCK_FDS.discard(self._lock_fd)
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def close(self) -> None:
        try:
            self.con.close()
        except Exception:  # pragma: no cover
            pass
        self._release_lock()

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
                os.unlink(col.path / "generations" / f"gen-{n:08d}.json")
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
            f"CREATE TABLE live AS SELECT id, key, source, size, mtime, sha256, meta_hash FROM ({snap.images_sql()})"
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
        vectors (n, d), L2-normalised float. Returns the ids they will have once committed."""
        n = rows.num_rows
        vectors = np.asarray(vectors)
        if vectors.shape != (n, self.collection.dimension):
            raise ValueError(f"vectors have shape {vectors.shape}, expected {(n, self.collection.dimension)}")
        if n == 0:
            return np.empty(0, dtype=np.int64)
        ids = np.arange(self.next_id, self.next_id + n, dtype=np.int64)
        self.next_id += n
        table = _conform(rows, ids)
        self._pending_rows.append(table)
        self._pending_vecs.append(vectors.astype(np.float16))
        self._pending_count += n
        return ids

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
        now = _utcnow()
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

    def commit(self, *, index: dict | None | bool = False, stats: dict | None = None) -> int | None:
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
        seg_dir = col.path / "segments"

        if self._pending_rows:
            table = pa.concat_tables(self._pending_rows)
            vecs = np.concatenate(self._pending_vecs)
            first = int(table.column("id")[0].as_py())
            _write_npy_atomic(seg_dir / f"seg-{file_n:08d}.f16.npy", vecs)
            _write_parquet_atomic(seg_dir / f"seg-{file_n:08d}.parquet", table)
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
            _write_parquet_atomic(
                seg_dir / f"del-{file_n:08d}.parquet", pa.table({"id": retire}, schema=_DELETE_SCHEMA)
            )
            deletes.append(file_n)
            deleted += int(retire.size)
            self.con.register("_retired", pa.table({"id": retire}))
            self.con.execute("DELETE FROM live WHERE id IN (SELECT id FROM _retired)")
            self.con.unregister("_retired")
        if self._pending_fail:
            ftable = pa.concat_tables(self._pending_fail)
            _write_parquet_atomic(seg_dir / f"fail-{file_n:08d}.parquet", ftable)
            failures.append(file_n)
            self.con.register("_fails", ftable)
            self.con.execute("DELETE FROM failed WHERE key IN (SELECT key FROM _fails)")
            self.con.execute(
                "INSERT INTO failed SELECT key, source, location, stage, reason, detail, size, mtime, failed_at "
                "FROM (SELECT *, row_number() OVER (PARTITION BY key ORDER BY failed_at DESC) AS r FROM _fails) "
                "WHERE r = 1 AND reason IS NOT NULL AND key NOT IN (SELECT key FROM live)"
            )
            self.con.unregister("_fails")
        _fsync_dir(seg_dir)

        images = self.con.execute("SELECT count(*) FROM live").fetchall()[0][0]
        failed = self.con.execute("SELECT count(*) FROM failed").fetchall()[0][0]
        new_stats = dict(gen.stats)
        if stats:
            new_stats.update(stats)
        new = Generation(
            number=gen.number + 1,
            created=_utcnow().isoformat() + "Z",
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
        atomic_write_json(col.path / "generations" / f"gen-{new.number:08d}.json", new.to_dict())
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
    now = _utcnow()
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
