"""WebDataset-style tar shards: ``KEY.jpg`` with ``KEY.json`` / ``KEY.txt`` / ``KEY.cls`` beside it.

Shards are read as streams, never extracted. SOURCE is a shard, a glob, or a brace pattern such
as ``shards/{000..099}.tar`` (expanded here, bash-style: numeric ranges keep their zero padding,
``{a,b}`` lists, nesting).

Locations (formatted by :func:`indexer.locations.tar_location`): for an uncompressed shard,
``tar://ABS_SHARD?offset=N&size=M#MEMBER`` where N is the byte offset of the member's data, so
:func:`indexer.media.read.read_location` reads exactly those bytes with one seek. A compressed shard
(``.tar.gz``, ``.tar.bz2``, ``.tar.xz``) cannot be read at an offset: its locations are
``tar://ABS_SHARD#MEMBER`` and reading one streams through the shard up to that member (the reader
keeps its place, so items read in shard order cost one pass; out of order, one pass each).
Uncompressed shards are the WebDataset convention and the fast path; images do not compress.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from indexer.build.sources._common import BATCH_ROWS, path_to_text
from indexer.errors import SourceError
from indexer.locations import shard_location, tar_key, tar_location
from indexer.store.schema import canonical_column

__all__ = [
    "TarShardSource",
    "IMAGE_EXTENSIONS",
    "expand_braces",
    "expand_shards",
    "is_compressed",
]

log = logging.getLogger(__name__)

#: Extensions (the last one of a member's name, lower-cased) read as images.
IMAGE_EXTENSIONS = frozenset(
    {"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "pgm", "pnm", "jp2", "heic", "heif", "avif"}
)

_MAX_SIDECAR = 16 << 20  # a .json/.txt/.cls larger than this is not metadata
_MAX_EXPANSION = 1_000_000


def is_compressed(path: str) -> bool:
    """Whether a shard is gzip/bzip2/xz-compressed (by its first bytes, not its name)."""
    with open(path, "rb") as fh:
        head = fh.read(6)
    return head[:2] == b"\x1f\x8b" or head[:3] == b"BZh" or head == b"\xfd7zXZ\x00"


# -- patterns ----------------------------------------------------------------------------------

_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
_ALPHA_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])$")


def _matching_brace(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _alternatives(body: str) -> list[str] | None:
    m = _RANGE.match(body)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        step = abs(int(m.group(3) or 1)) or 1
        width = (
            max(len(m.group(1)), len(m.group(2)))
            if re.match(r"^-?0\d", m.group(1)) or re.match(r"^-?0\d", m.group(2))
            else 0
        )
        rng = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
        if len(rng) > _MAX_EXPANSION:
            raise SourceError(f"brace range {{{body}}} expands to more than {_MAX_EXPANSION} names", body)
        return [str(n).zfill(width) if width else str(n) for n in rng]
    m = _ALPHA_RANGE.match(body)
    if m:
        a, b = ord(m.group(1)), ord(m.group(2))
        step = 1 if a <= b else -1
        return [chr(c) for c in range(a, b + step, step)]
    parts = _split_top(body)
    return parts if len(parts) > 1 else None


def expand_braces(pattern: str) -> list[str]:
    """Bash-style brace expansion: ``a{01..03}b`` -> a01b a02b a03b; ``{x,y}``; nested; in order."""
    start = pattern.find("{")
    while start != -1:
        end = _matching_brace(pattern, start)
        if end == -1:
            return [pattern]
        alts = _alternatives(pattern[start + 1 : end])
        if alts is not None:
            head, tail = pattern[:start], pattern[end + 1 :]
            out: list[str] = []
            for alt in alts:
                for rest in expand_braces(alt + tail):
                    out.append(head + rest)
                    if len(out) > _MAX_EXPANSION:
                        raise SourceError(f"{pattern} expands to more than {_MAX_EXPANSION} names", pattern)
            return out
        start = pattern.find("{", start + 1)  # "{x}" with no comma or range is literal, as in bash
    return [pattern]


def expand_shards(spec: str) -> list[str]:
    """Absolute shard paths for a path, glob or brace pattern. SourceError if any is missing."""
    names = expand_braces(spec)
    shards: list[str] = []
    missing: list[str] = []
    for name in names:
        if glob.has_magic(name) and not os.path.exists(name):
            found = sorted(glob.glob(name))
            if not found:
                missing.append(name)
            shards += found
        elif os.path.isfile(name):
            shards.append(name)
        else:
            missing.append(name)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise SourceError(f"tar shards not found: {', '.join(missing[:3])}{more} (from {spec})", spec)
    if not shards:
        raise SourceError(f"no tar shards match {spec}", spec)
    seen: set[str] = set()
    out = []
    for s in shards:
        a = os.path.abspath(s)
        if a not in seen:
            seen.add(a)
            out.append(a)
    return out


# -- the source --------------------------------------------------------------------------------


def _split_name(member: str) -> tuple[str, str]:
    """WebDataset's split: the sample key is the name up to the first dot of its last component."""
    slash = member.rfind("/")
    dot = member.find(".", slash + 1)
    if dot == -1:
        return member, ""
    return member[:dot], member[dot + 1 :]


def _ends_cleanly(shard: str, offset: int, end: int) -> bool:
    """Whether the block after the last member is the zero block that ends a tar.

    tarfile stops without a word at a header that is cut off or garbled (after the first member);
    looking at where it stopped is how a damaged shard is told from a complete one.
    """
    if end - offset < 512:
        return False
    with open(shard, "rb") as fh:
        fh.seek(offset)
        return fh.read(512) == b"\0" * 512


@dataclass
class _Sample:
    images: list[tuple[str, int | None, int, float]] = field(default_factory=list)  # member, offset, size, mtime
    json: bytes | None = None
    txt: bytes | None = None
    cls: bytes | None = None


class TarShardSource:
    """Images in WebDataset tar shards, with the metadata of their ``.json`` / ``.txt`` / ``.cls``.

    ``key`` is ``tar://ABS_SHARD#MEMBER`` (stable when a shard is rebuilt with the same members);
    ``location`` adds the member's data offset for uncompressed shards (module docstring);
    ``size`` and ``mtime`` come from the member's header. JSON fields that are Darwin Core terms
    (or listed spellings) fill their columns; every other field goes into ``extra``, as do the
    ``.txt`` text (``extra.caption``) and the ``.cls`` label (``extra.class_id``, an integer when
    it is one). A sample with two images (``x.jpg``, ``x.seg.png``) gives two rows sharing its
    metadata. A shard that breaks while being read yields the rows read so far plus one error
    row for the shard. ``report`` counts shards, images, samples without an image, and bad JSON.
    """

    def __init__(self, spec: str | os.PathLike, *, name: str | None = None):
        spec = os.fspath(spec)
        self.spec = spec
        self.shards = expand_shards(spec)
        self.name = name or (path_to_text(self.shards[0]) if len(self.shards) == 1 else os.path.abspath(spec))
        self.report: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"TarShardSource({self.spec!r}, {len(self.shards)} shards)"

    def scan(self) -> Iterator[pa.RecordBatch]:
        report = {
            "shards": len(self.shards),
            "image_rows": 0,
            "bad_shards": 0,
            "samples_without_image": 0,
            "bad_json": 0,
            "other_members": 0,
        }
        self.report = report
        rows = _Rows()
        for shard in self.shards:
            for row in self._shard_rows(shard, report):
                rows.add(row)
                if len(rows) >= BATCH_ROWS:
                    yield rows.batch()
        if len(rows):
            yield rows.batch()
        log.info(
            "%s: %d shards, %d images, %d unreadable shards, %d samples without an image",
            self.name,
            report["shards"],
            report["image_rows"],
            report["bad_shards"],
            report["samples_without_image"],
        )

    def _shard_rows(self, shard: str, report: dict[str, int]) -> Iterator[dict[str, Any]]:
        text = path_to_text(shard)
        samples: dict[str, _Sample] = {}
        problem: str | None = None
        try:
            compressed = is_compressed(shard)
            end = None if compressed else os.path.getsize(shard)
            with tarfile.open(shard, mode="r|*") if compressed else tarfile.open(shard, mode="r:") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    if end is not None and member.offset_data + member.size > end:
                        # tarfile stops quietly at a cut-off shard; the member's bytes are not all there.
                        problem = f"tar shard {text} is cut off in the middle of {member.name}"
                        break
                    key, ext = _split_name(member.name)
                    last = ext.rsplit(".", 1)[-1].lower()
                    if last in IMAGE_EXTENSIONS:
                        offset = None if compressed else member.offset_data
                        samples.setdefault(key, _Sample()).images.append(
                            (member.name, offset, member.size, float(member.mtime))
                        )
                    elif ext.lower() in ("json", "txt", "cls") and member.size <= _MAX_SIDECAR:
                        fh = tf.extractfile(member)
                        data = fh.read() if fh is not None else b""
                        setattr(samples.setdefault(key, _Sample()), ext.lower(), data)
                    else:
                        report["other_members"] += 1
                if end is not None and problem is None and not _ends_cleanly(shard, tf.offset, end):
                    problem = (
                        f"tar shard {text} is cut off or damaged after {tf.offset} bytes (no end-of-archive marker)"
                    )
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            problem = f"cannot read tar shard {text}: {exc}"
        if problem is not None:
            log.warning("%s", problem)
        for key, sample in samples.items():
            if not sample.images:
                report["samples_without_image"] += 1
                continue
            meta = self._metadata(sample, f"{text}#{key}", report)
            for member_name, offset, size, mtime in sample.images:
                report["image_rows"] += 1
                yield {
                    "key": tar_key(text, member_name),
                    "location": tar_location(text, member_name, offset, size),
                    "size": size,
                    "mtime": mtime,
                    **meta,
                }
        if problem is not None:
            report["bad_shards"] += 1
            yield {
                "key": shard_location(text),
                "location": shard_location(text),
                "error_reason": "unreadable-shard",
                "error_detail": problem,
            }

    @staticmethod
    def _metadata(sample: _Sample, where: str, report: dict[str, int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if sample.json is not None:
            try:
                obj = json.loads(sample.json.decode("utf-8-sig"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                report["bad_json"] += 1
                if report["bad_json"] <= 5:
                    log.warning("%s.json is not valid JSON (%s); its metadata is left out", where, exc)
                obj = None
            if isinstance(obj, dict):
                for k, v in obj.items():
                    canon = canonical_column(str(k))
                    if canon is not None and canon != "extra" and canon not in out and v is not None:
                        out[canon] = (
                            v.strip()
                            if isinstance(v, str)
                            else json.dumps(v)
                            if isinstance(v, (dict, list))
                            else str(v)
                        )
                        if out[canon] == "":
                            del out[canon]
                    else:
                        extra[str(k)] = v
            elif obj is not None:
                extra["json"] = obj
        if sample.txt is not None:
            caption = sample.txt.decode("utf-8", errors="replace").strip()
            if caption:
                extra["caption"] = caption
        if sample.cls is not None:
            label = sample.cls.decode("utf-8", errors="replace").strip()
            if label:
                extra["class_id"] = int(label) if re.fullmatch(r"-?\d+", label) else label
        if extra:
            out["extra"] = json.dumps(extra, ensure_ascii=False, default=str)
        return out


class _Rows:
    """Rows collected into columns; columns first seen mid-batch are back-filled with nulls."""

    _TYPES = {"size": pa.int64(), "mtime": pa.float64()}

    def __init__(self) -> None:
        self.cols: dict[str, list[Any]] = {}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def add(self, row: dict[str, Any]) -> None:
        for k in row:
            if k not in self.cols:
                self.cols[k] = [None] * self.n
        for k, col in self.cols.items():
            col.append(row.get(k))
        self.n += 1

    def batch(self) -> pa.RecordBatch:
        for k in ("size", "mtime", "error_reason", "error_detail"):
            self.cols.setdefault(k, [None] * self.n)
        arrays = {k: pa.array(v, self._TYPES.get(k, pa.string())) for k, v in self.cols.items()}
        order = ["key", "location", "size", "mtime", "error_reason", "error_detail"]
        names = order + [k for k in arrays if k not in order]
        batch = pa.RecordBatch.from_arrays([arrays[k] for k in names], names=names)
        self.cols, self.n = {}, 0
        return batch
