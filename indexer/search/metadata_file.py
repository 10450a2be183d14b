"""The served metadata of a generation, persisted: a DuckDB file a search process starts from.

Loading ``images`` for serving reads every segment, sorts the rows by taxonomy and compresses them
(:func:`indexer.search.state.compact_images`): about 3.6 s per million Darwin Core rows on one core,
minutes at 100M. For large collections that work is done once per generation: the first process that
loads the generation writes the finished database (sorted, compressed, with its id index) to
``COLLECTION/metadata/served-GGGGGGGG-....duckdb``, and the next process that opens that generation,
or a later one that only added to it (new segments, updates, retirements: no compaction in between),
copies the file to a private temporary one, attaches it and applies what was added since, as a
running engine applies a new generation: a file copy at disk speed and the new rows, instead of the
whole load. The served database is then file-backed, so its memory is DuckDB's buffer pool (what
filters touch) rather than the whole table.

The file is derived data, like the ANN index: ignored when unreadable, not of an ancestor of the
generation served, or of another layout or DuckDB version (both in its name); never needed. A
collection the process may not write to is served the usual way. Only the newest file is kept.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

from indexer.store import Collection
from indexer.store.generations import Generation

__all__ = [
    "METADATA_FILE_MIN_ROWS",
    "LAYOUT_VERSION",
    "served_file",
    "persisted",
    "open_copy",
    "save_served_file",
]

log = logging.getLogger(__name__)

METADATA_FILE_MIN_ROWS = 1_000_000
"""Generations with at least this many rows are served from a persisted file (below, loading takes
a few seconds and the file would only cost disk)."""

LAYOUT_VERSION = 1
"""The served table's layout (columns, row order, normalisation); a file of another layout is
ignored. Raise it with any change to what :func:`indexer.search.state.load_state` builds."""

FOLDER = "metadata"
_PREFIX = "served-"


def _suffix() -> str:
    import duckdb

    return f"-l{LAYOUT_VERSION}-duckdb{duckdb.__version__.replace('.', '_')}.duckdb"


def served_file(collection: Collection, gen: Generation) -> Path:
    """Where generation ``gen``'s served metadata is persisted (whether or not it exists)."""
    stamp = "".join(ch for ch in gen.created if ch.isalnum())
    return collection.path / FOLDER / f"{_PREFIX}{gen.number:08d}-{stamp}{_suffix()}"


def persisted(collection: Collection, upto: int) -> list[tuple[int, Path]]:
    """(generation number, file) of the persisted files of this layout and DuckDB version for
    generations up to ``upto``, newest first."""
    found = []
    suffix = _suffix()
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


def open_copy(path: Path, rows: int, attach_as: str) -> Any | None:
    """A connection whose database ``attach_as`` (its default) is a private copy of the persisted
    file ``path``, which must hold ``rows`` rows of ``images``; None when it cannot be used
    (logged). The copy is deleted with the connection."""
    import duckdb

    private = Path(tempfile.mkdtemp(prefix="bioclip-served-"))
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
    """Persist ``database`` of ``con`` (the served metadata of ``gen``, just loaded) and remove the
    files of older generations; None when the collection cannot be written to (logged)."""
    import duckdb

    path = served_file(collection, gen)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        con.execute(f"ATTACH '{_sql_path(tmp)}' AS _served_out")
        try:
            con.execute(f"COPY FROM DATABASE {database} TO _served_out")
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


@atexit.register
def _remove_all() -> None:
    for folder in list(_TEMP_DIRS):
        _remove(folder)
