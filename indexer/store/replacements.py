"""What became of a retired image id: the live image that replaced it, if one did, and why.

An image keeps its id while only its metadata changes (see :mod:`indexer.store.writer`); it gets a
new id when its pixels change, and loses its id when its file is gone or no longer reads. Each
retirement is recorded with the id that replaced it (``replaced_by``) and a reason
(:data:`RETIRE_REASONS`). Collections written before these records existed (format 1) recorded
only the retired ids; for them, and for a pruned file that turned up under another name, the
successor is found from the retired row, which stays in its segment: the live image with the same
key (the same file, re-indexed), else the one with the same content hash (the file moved).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from indexer.store.schema import quote_ident, sql_string_list

if TYPE_CHECKING:  # pragma: no cover
    from indexer.store.snapshot import Snapshot

__all__ = ["RETIRE_REASONS", "Replacement", "find_replacement"]

#: Why an id was retired: its file's pixels changed (a new id replaced it), the file is gone from
#: its source (``--prune``), or the changed file no longer reads.
RETIRE_REASONS: Final[frozenset[str]] = frozenset({"changed", "pruned", "unreadable"})

_WHY = {
    "changed": "its file changed",
    "moved": "its file moved",
    "metadata": "its metadata was edited, which older versions of bioclip-search indexed as a new image",
    "pruned": "its file is gone",
    "unreadable": "its file changed and no longer reads",
}

_MAX_CHAIN = 64


@dataclass(frozen=True)
class Replacement:
    """What became of retired id ``old_id``: ``new_id`` (live) replaced it, or None did; ``reason``
    is ``changed``, ``moved``, ``metadata`` (format 1 collections), ``pruned``, ``unreadable`` or
    ``retired`` (nothing more is known); ``location`` is where the new image's file is."""

    old_id: int
    new_id: int | None
    reason: str
    location: str | None = None

    def describe(self) -> str:
        """One line for the user: ``image 42 was replaced by 97 (its file changed)``."""
        why = _WHY.get(self.reason)
        if self.reason == "moved" and self.location:
            why = f"its file moved to {self.location}"
        if self.new_id is not None:
            return f"image {self.old_id} was replaced by {self.new_id}" + (f" ({why})" if why else "")
        return f"image {self.old_id} is no longer in this collection" + (f" ({why})" if why else "")

    def to_dict(self) -> dict[str, Any]:
        return {"old_id": self.old_id, "new_id": self.new_id, "reason": self.reason, "message": self.describe()}


def find_replacement(snapshot: Snapshot, live: Any, image_id: int) -> Replacement | None:
    """What became of ``image_id`` in ``snapshot``; None when it is live or was never an id here.

    ``live`` is a DuckDB connection or cursor with an ``images`` relation of the snapshot's live
    rows (the engine's served metadata, or ``snapshot.connect()``). Follows chains (42 replaced by
    97, 97 by 130: 42 was replaced by 130) and keeps the first recorded reason.
    """
    image_id = int(image_id)
    if not _ever_held(snapshot, image_id) or _is_live(live, image_id):
        return None
    records = _records(snapshot)
    first_reason: str | None = None
    current = image_id
    for _ in range(_MAX_CHAIN):
        successor, reason = records.get(current, (None, None))
        first_reason = first_reason or reason
        if successor is None:
            return _inferred(snapshot, live, image_id, current, first_reason)
        if _is_live(live, successor):
            return Replacement(image_id, successor, first_reason or "changed", _location(live, successor))
        current = successor
    return Replacement(image_id, None, first_reason or "retired")


def _ever_held(snapshot: Snapshot, image_id: int) -> bool:
    return any(s.min_id <= image_id <= s.max_id for s in snapshot.generation.segments)


def _is_live(live: Any, image_id: int) -> bool:
    return bool(live.execute("SELECT count(*) FROM images WHERE id = ?", [int(image_id)]).fetchall()[0][0])


def _location(live: Any, image_id: int) -> str | None:
    rows = live.execute("SELECT location FROM images WHERE id = ?", [int(image_id)]).fetchall()
    return rows[0][0] if rows else None


def _records(snapshot: Snapshot) -> dict[int, tuple[int | None, str | None]]:
    """id -> (replaced_by, reason) of its newest retirement record."""
    table = snapshot.retirements()
    if table.num_rows == 0:
        return {}
    table = table.sort_by([("commit", "ascending")])
    ids = table.column("id").to_pylist()
    successors = table.column("replaced_by").to_pylist()
    reasons = table.column("reason").to_pylist()
    return {i: (s, r) for i, s, r in zip(ids, successors, reasons)}


def _retired_row(snapshot: Snapshot, image_id: int) -> tuple[str | None, str | None]:
    """(key, sha256) of ``image_id``'s row in the segment that holds it."""
    import duckdb

    seg = next(s for s in snapshot.generation.segments if s.min_id <= image_id <= s.max_id)
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            f"SELECT {quote_ident('key')}, sha256 FROM read_parquet({sql_string_list(snapshot.segment_paths([seg]))}) "
            "WHERE id = ?",
            [image_id],
        ).fetchall()
    finally:
        con.close()
    return rows[0] if rows else (None, None)


def _inferred(snapshot: Snapshot, live: Any, image_id: int, last: int, reason: str | None) -> Replacement:
    """The successor of ``last`` (``image_id`` or the end of its chain) found from its old row."""
    if reason == "unreadable":
        return Replacement(image_id, None, reason)
    key, sha = _retired_row(snapshot, last)
    if key is not None:
        rows = live.execute(
            "SELECT id, sha256, location FROM images WHERE key = ? ORDER BY id LIMIT 1", [key]
        ).fetchall()
        if rows:
            new_id, new_sha, location = rows[0]
            why = reason or ("metadata" if sha is not None and new_sha == sha else "changed")
            return Replacement(image_id, int(new_id), why, location)
    if sha is not None and reason in (None, "pruned"):
        rows = live.execute("SELECT id, location FROM images WHERE sha256 = ? ORDER BY id LIMIT 1", [sha]).fetchall()
        if rows:
            return Replacement(image_id, int(rows[0][0]), "moved", rows[0][1])
    return Replacement(image_id, None, reason or "retired")
