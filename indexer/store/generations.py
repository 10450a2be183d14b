"""Generations: the published states of a collection, and the names of the files they list.

A generation (``generations/gen-NNNNNNNN.json``) lists the live segments (metadata + vectors), the
files of superseding metadata rows (updates), of retired ids and of failures, the ANN index entry,
counts, ``next_id`` and the extra metadata keys seen. Every data file is named by the number of the
commit that wrote it.

Format versions: 1 had no update files and retired ids without their successor; 2 (this code)
adds ``updates`` and the ``replaced_by`` / ``reason`` columns of ``del-*.parquet``. Version 1
collections open as they are; a generation this code writes says 2.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field

from indexer.errors import FormatVersionError

__all__ = [
    "FORMAT_VERSION",
    "KEEP_GENERATIONS",
    "SegmentInfo",
    "Generation",
    "generation_file",
    "segment_file",
    "vectors_file",
    "updates_file",
    "deletes_file",
    "failures_file",
    "parse_generation_file",
    "utcnow",
    "utc_stamp",
]

#: The collection format this code reads and writes (manifest and generations).
FORMAT_VERSION = 2
#: Files referenced by any of the last this many generations are never deleted, so that a reader
#: that opened a recent generation keeps working while a writer publishes new ones.
KEEP_GENERATIONS = 5

_GEN_RE = re.compile(r"^gen-(\d{8})\.json$")


def generation_file(n: int) -> str:
    return f"generations/gen-{n:08d}.json"


def parse_generation_file(name: str) -> int | None:
    """The number of a generation file name (``gen-00000012.json`` -> 12), None for anything else."""
    m = _GEN_RE.match(name)
    return int(m.group(1)) if m else None


def segment_file(n: int) -> str:
    """Metadata rows of commit ``n`` (relative to the collection)."""
    return f"segments/seg-{n:08d}.parquet"


def vectors_file(n: int) -> str:
    """float16 vectors of commit ``n``, in the row order of its metadata."""
    return f"segments/seg-{n:08d}.f16.npy"


def updates_file(n: int) -> str:
    """Metadata rows of commit ``n`` that supersede the rows of ids committed before (same ids,
    same vectors: an edited label keeps its image's id)."""
    return f"segments/upd-{n:08d}.parquet"


def deletes_file(n: int) -> str:
    """Ids retired by commit ``n``, with the id that replaced each one (if any) and why."""
    return f"segments/del-{n:08d}.parquet"


def failures_file(n: int) -> str:
    """Failures recorded by commit ``n``."""
    return f"segments/fail-{n:08d}.parquet"


def utcnow() -> _dt.datetime:
    """Now, in UTC, without a time zone (how the collection's timestamps are stored)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)


def utc_stamp() -> str:
    """Now as ISO 8601 text with a ``Z``."""
    return utcnow().isoformat() + "Z"


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
    updates: tuple[int, ...] = ()  # file numbers of upd-*.parquet
    deletes: tuple[int, ...] = ()  # file numbers of del-*.parquet
    failures: tuple[int, ...] = ()  # file numbers of fail-*.parquet
    next_id: int = 0
    next_file: int = 1
    images: int = 0
    deleted: int = 0
    updated: int = 0  # superseding metadata rows written (cumulative)
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
            "updates": list(self.updates),
            "deletes": list(self.deletes),
            "failures": list(self.failures),
            "next_id": self.next_id,
            "next_file": self.next_file,
            "images": self.images,
            "deleted": self.deleted,
            "updated": self.updated,
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
            updates=tuple(int(x) for x in d.get("updates", [])),
            deletes=tuple(int(x) for x in d.get("deletes", [])),
            failures=tuple(int(x) for x in d.get("failures", [])),
            next_id=int(d.get("next_id", 0)),
            next_file=int(d.get("next_file", 1)),
            images=int(d.get("images", 0)),
            deleted=int(d.get("deleted", 0)),
            updated=int(d.get("updated", 0)),
            failed=int(d.get("failed", 0)),
            index=d.get("index"),
            extra_keys=tuple(d.get("extra_keys", [])),
            stats=dict(d.get("stats", {})),
        )

    @classmethod
    def empty(cls) -> Generation:
        return cls(number=0, created=utc_stamp())

    def referenced_files(self) -> set[str]:
        """Names (relative to the collection) of every file this generation needs."""
        names = set()
        for s in self.segments:
            names.add(segment_file(s.n))
            names.add(vectors_file(s.n))
        names.update(updates_file(n) for n in self.updates)
        names.update(deletes_file(n) for n in self.deletes)
        names.update(failures_file(n) for n in self.failures)
        if self.index:
            for key in ("path", "sidecar"):
                if self.index.get(key):
                    names.add(self.index[key])
            names.update(self.index.get("files", []))
        return names
