"""The served metadata of a generation, persisted: a DuckDB file a search process starts from.

Loading ``images`` for serving reads every segment, sorts the rows by taxonomy and compresses them
(:func:`indexer.search.state.compact_images`): about 3.6 s per million Darwin Core rows on one core,
minutes at 100M. For large collections that work is done once per generation: the first process that
loads the generation writes the finished database (sorted, compressed, with its id index) to
``COLLECTION/metadata/served-GGGGGGGG-....duckdb``, with a record of what it holds (its
:class:`Lineage`: the generation's segments, update and retirement files). The next process that
opens that generation, or a later one that only added to it (new segments, updates, retirements: no
compaction in between), copies the file to a private temporary one, attaches it and applies what was
added since, as a running engine applies a new generation: a file copy at disk speed and the new
rows, instead of the whole load. The served database is then file-backed, so its memory is DuckDB's
buffer pool (what filters touch) rather than the whole table.

The file is derived data, like the ANN index: ignored when unreadable, when it does not hold an
ancestor of the generation served, or when it was written for another table layout (the code's
:data:`LAYOUT_VERSION`, the normalisation version, the columns and row order: a fingerprint in its
name) or DuckDB version; never needed. A collection the process may not write to is served the usual
way. Private copies go to the system's temporary folder (``TMPDIR``; put it on disk, not in memory,
for large collections): each is removed with its connection, at exit, or, after a crash, by the next
process that opens one.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from indexer.store import Collection
from indexer.store.generations import Generation

__all__ = [
    "METADATA_FILE_MIN_ROWS",
    "LAYOUT_VERSION",
    "Lineage",
    "served_file",
    "persisted",
    "read_lineage",
    "open_copy",
    "save_served_file",
]

log = logging.getLogger(__name__)

METADATA_FILE_MIN_ROWS = 1_000_000
"""Generations with at least this many rows are served from a persisted file (below, loading takes
a few seconds and the file would only cost disk)."""

LAYOUT_VERSION = 1
"""The served table's layout; a file of another layout is ignored. Raise it with any change to
what :func:`indexer.search.state.load_state` builds that the fingerprint (normalisation version,
columns and their types, row order) does not see."""

FOLDER = "metadata"
_PREFIX = "served-"
_TEMP_PREFIX = "bioclip-served-"
_LINEAGE_TABLE = "served_lineage"


@dataclass(frozen=True)
class Lineage:
    """What a persisted file holds: generation ``number`` (created ``created``) with ``images``
    live rows, made of these segments, update files and retirement files (``updated`` and
    ``deleted``: the generation's cumulative counts of superseding and retired rows)."""

    number: int
    created: str
    images: int
    segments: tuple[int, ...]
    updates: tuple[int, ...]
    deletes: tuple[int, ...]
    updated: int = 0
    deleted: int = 0

    @classmethod
    def of(cls, gen: Generation) -> Lineage:
        segments = tuple(s.n for s in gen.segments)
        return cls(
            gen.number,
            gen.created,
            gen.images,
            segments,
            tuple(gen.updates),
            tuple(gen.deletes),
            gen.updated,
            gen.deleted,
        )

    def extended_by(self, gen: Generation) -> bool:
        """Whether ``gen`` only added to this (segments, updates, retirements)."""
        return (
            self.number <= gen.number
            and set(self.segments) <= {s.n for s in gen.segments}
            and set(self.updates) <= set(gen.updates)
            and set(self.deletes) <= set(gen.deletes)
        )


def _fingerprint() -> str:
    import duckdb

    from indexer.dwc.normalise import META_VERSION
    from indexer.store.schema import ALL_COLUMNS, COLUMN_TYPES, ROW_ORDER

    layout = json.dumps([LAYOUT_VERSION, META_VERSION, list(ALL_COLUMNS), COLUMN_TYPES, list(ROW_ORDER)])
    digest = hashlib.sha256(layout.encode()).hexdigest()[:12]
    return f"-{digest}-duckdb{duckdb.__version__.replace('.', '_')}.duckdb"


def served_file(collection: Collection, gen: Generation) -> Path:
    """Where generation ``gen``'s served metadata is persisted (whether or not it exists)."""
    stamp = "".join(ch for ch in gen.created if ch.isalnum())
    return collection.path / FOLDER / f"{_PREFIX}{gen.number:08d}-{stamp}{_fingerprint()}"


def persisted(collection: Collection, upto: int) -> list[tuple[int, Path]]:
    """(generation number, file) of the persisted files of this layout and DuckDB version for
    generations up to ``upto``, newest first."""
    found = []
    suffix = _fingerprint()
    try:
        names = os.listdir(collection.path / FOLDER)
    except OSError:
        return []
    for name in names:
        if not (name.startswith(_PREFIX) and name.endswith(suffix)):
            continue
        number = name[len(_PREFIX) :].split("-", 1)[0]
        if number.isdigit() and int(number) <= upto:
            found.append((int(number), collection.path / FOLDER / name))
    return sorted(found, reverse=True)


def read_lineage(path: Path) -> Lineage | None:
    """The lineage recorded in a persisted file; None when it has none or cannot be read."""
    import duckdb

    try:
        with duckdb.connect(str(path), read_only=True) as con:
            row = con.execute(f"SELECT lineage FROM {_LINEAGE_TABLE}").fetchone()
        if not row:
            return None
        d: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(row[0]).items()}
        return Lineage(**d)
    except (duckdb.Error, OSError, ValueError, TypeError) as exc:
        log.warning("not using the persisted metadata %s (%s)", path, exc)
        return None


def open_copy(path: Path, rows: int, attach_as: str) -> Any | None:
    """A connection whose database ``attach_as`` (its default) is a private copy of the persisted
    file ``path``, which must hold ``rows`` rows of ``images``; None when it cannot be used
    (logged). The copy is deleted with the connection."""
    import duckdb

    _sweep_stale_copies()
    private = Path(tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-"))
    _TEMP_DIRS.add(private)
    copy = private / "served.duckdb"
    try:
        shutil.copyfile(path, copy)
        con = duckdb.connect(":memory:")
        con.execute(f"ATTACH '{_sql_path(copy)}' AS {attach_as}")
        con.execute(f"USE {attach_as}")
        got = con.execute("SELECT count(*) FROM images").fetchone()
        if got is None or int(got[0]) != rows:
            raise ValueError(f"it holds {got[0] if got else 0} rows, its generation {rows}")
    except (OSError, ValueError, duckdb.Error) as exc:
        log.warning("not using the persisted metadata %s (%s); loading the generation", path, exc)
        _remove(private)
        return None
    weakref.finalize(con, _remove, private)
    return con


def save_served_file(con: Any, database: str, collection: Collection, gen: Generation) -> Path | None:
    """Persist ``database`` of ``con`` (the served metadata of ``gen``, just loaded) with its
    lineage, and remove the files of older generations; None when the collection cannot be written
    to (logged)."""
    import duckdb

    path = served_file(collection, gen)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        con.execute(f"ATTACH '{_sql_path(tmp)}' AS _served_out")
        try:
            con.execute(f"COPY FROM DATABASE {database} TO _served_out")
            con.execute(f"CREATE OR REPLACE TABLE _served_out.{_LINEAGE_TABLE} (lineage VARCHAR)")
            con.execute(f"INSERT INTO _served_out.{_LINEAGE_TABLE} VALUES (?)", [json.dumps(asdict(Lineage.of(gen)))])
            con.execute("CHECKPOINT _served_out")
        finally:
            con.execute("DETACH _served_out")
        os.replace(tmp, path)
    except (OSError, duckdb.Error) as exc:
        log.info("cannot persist the served metadata to %s (%s); serving without it", path, exc)
        for leftover in (tmp, tmp.with_name(tmp.name + ".wal")):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:  # no folder to clean (it could not be made)
                pass
        return None
    newer = {p for n, p in persisted(collection, 1 << 62) if n > gen.number}
    for old in path.parent.glob(f"{_PREFIX}*.duckdb"):
        if old != path and old not in newer:  # a process copying it now keeps its open file (POSIX)
            old.unlink(missing_ok=True)
    log.info("persisted the served metadata of generation %d to %s", gen.number, path)
    return path


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


_TEMP_DIRS: set[Path] = set()


def _remove(folder: Path) -> None:
    _TEMP_DIRS.discard(folder)
    shutil.rmtree(folder, ignore_errors=True)


def _sweep_stale_copies() -> None:
    """Remove private copies left by processes that died without cleaning up (killed, out of
    memory): those whose process is gone, on this machine."""
    root = Path(tempfile.gettempdir())
    try:
        entries = list(root.glob(f"{_TEMP_PREFIX}*"))
    except OSError:
        return
    for folder in entries:
        pid = folder.name[len(_TEMP_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except OSError:  # someone else's process: alive
            alive = True
        if not alive:
            shutil.rmtree(folder, ignore_errors=True)


@atexit.register
def _remove_all() -> None:
    for folder in list(_TEMP_DIRS):
        _remove(folder)
