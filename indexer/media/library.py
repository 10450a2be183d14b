"""Safe access to a collection's images, and thumbnails made once and cached.

Contracts:

- An image is shown only from the collection's own sources. A hit's recorded ``location`` is
  used, never a path from a user. A local location is served only when its real path (symlinks
  and ``..`` resolved) lies under the real path of its source's root; anything else (a relative
  path, ``..`` components, a symlink out of the root, a source without a known root) shows nothing.
  A tar member is checked on its shard's path and read at its recorded offset (uncompressed
  shards) or by its exact name.
- Remote (``http(s)://``) images are read from the collection's download cache
  (``COLLECTION/cache/media``) when they are there, else they are *shown by URL* (the browser
  fetches them); the server never downloads on behalf of a page.
- Thumbnails (and the larger detail images) are JPEG bytes made once per image and size, cached
  under ``COLLECTION/cache/thumbs/`` with atomic writes. A process that may not write there (a
  reader-only account, a read-only disk) keeps them in a bounded in-memory cache instead.
- Thread-safe: one :class:`MediaLibrary` serves every session of the app.

Source roots come from the search engine (:meth:`indexer.search.SearchEngine.source_roots`), and
are asked for again when the engine serves a new generation.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.errors import FetchError, LocationError
from indexer.locations import RemoteUrl, TarMember, TarShard, parse_location, path_to_text, safe_local_path
from indexer.media.read import cache_file, read_tar_member
from indexer.store.files import atomic_write_bytes

__all__ = [
    "THUMB_SIZE",
    "DETAIL_SIZE",
    "MediaRef",
    "MediaLibrary",
    "is_within",
]

log = logging.getLogger(__name__)

#: Longest side of a grid thumbnail and of the detail view's image, in pixels.
THUMB_SIZE = 256
DETAIL_SIZE = 1280

#: Largest image file read to make a thumbnail (a bigger one is not shown, not read into memory).
MAX_SOURCE_BYTES = 512 * 1024 * 1024

_LOCK_STRIPES = 64


@dataclass(frozen=True)
class MediaRef:
    """Where an image's bytes may be read: ``kind`` is ``file`` (``path``), ``tar`` (``path`` is the
    shard, ``member`` the member name), ``cached`` (``path`` in the download cache, ``url`` the
    original) or ``url`` (not available here: show it by ``url``)."""

    kind: str
    path: str | None = None
    member: str | None = None
    url: str | None = None
    offset: int | None = None  # a tar member's data, when its shard is uncompressed
    size: int | None = None


def is_within(path: str, root: str) -> bool:
    """True when the real path of ``path`` is ``root``'s real path or lies under it."""
    try:
        real = os.path.realpath(path)
        base = os.path.realpath(root)
    except (OSError, ValueError):
        return False
    if base == os.sep:
        return False  # a root of "/" would allow everything: never accept it
    try:
        return os.path.commonpath([real, base]) == base
    except ValueError:  # different drives, mixed absolute/relative
        return False


class MediaLibrary:
    """Images and thumbnails of one collection, served only from its own sources."""

    def __init__(
        self,
        collection_path: str | os.PathLike,
        roots: Mapping[str, Sequence[str] | str],
        *,
        thumbs_dir: str | os.PathLike | None = None,
        media_cache_dir: str | os.PathLike | None = None,
        memory_cache_bytes: int = 64 * 1024 * 1024,
        max_source_bytes: int = MAX_SOURCE_BYTES,
        engine: Any = None,
    ):
        self.collection_path = Path(collection_path)
        self._set_roots(roots)
        # With an engine, the roots are found again when it serves a new generation (a build may
        # have added a source).
        self._engine = engine
        self._roots_generation = engine.generation if engine is not None else None
        self._roots_lock = threading.Lock()
        self.thumbs_dir = Path(thumbs_dir) if thumbs_dir is not None else self.collection_path / "cache" / "thumbs"
        self.media_cache_dir = (
            Path(media_cache_dir) if media_cache_dir is not None else self.collection_path / "cache" / "media"
        )
        self.max_source_bytes = max_source_bytes
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._memory_bytes = 0
        self._memory_limit = memory_cache_bytes
        self._memory_lock = threading.Lock()
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        self._disk_writable: bool | None = None  # None: not tried yet
        self._failed: OrderedDict[str, None] = OrderedDict()  # keys that could not be made
        #: counters, for tests and the benchmark: thumbnails made, read from disk, from memory
        self.made = 0
        self.disk_hits = 0
        self.memory_hits = 0

    @classmethod
    def for_engine(cls, engine, **kwargs) -> MediaLibrary:
        """The library of an open :class:`indexer.search.engine.SearchEngine`'s collection (its source
        roots follow the engine's generations)."""
        return cls(engine.collection.path, engine.source_roots(), engine=engine, **kwargs)

    def _set_roots(self, roots: Mapping[str, Sequence[str] | str]) -> None:
        self.roots = {
            str(name): tuple(os.path.realpath(r) for r in ([v] if isinstance(v, str) else v) if r)
            for name, v in roots.items()
        }

    def _roots_for(self, source: str | None) -> tuple[str, ...]:
        engine = self._engine
        if engine is not None and engine.generation != self._roots_generation:
            with self._roots_lock:
                gen = engine.generation
                if gen != self._roots_generation:
                    self._set_roots(engine.source_roots())
                    self._roots_generation = gen
        return self.roots.get(source or "", ())

    # -- where an image is ---------------------------------------------------------------

    def resolve(self, hit: Any) -> MediaRef | None:
        """Where the bytes of ``hit`` (a Hit, or anything with ``location`` and ``metadata``) may be
        read, or None when they must not be (outside its source, unknown source, bad location)."""
        location = _location(hit)
        if not location:
            return None
        try:
            loc = parse_location(location)
        except LocationError:
            return None
        if isinstance(loc, RemoteUrl):
            cached = self._cached_download(location)
            if cached is not None:
                return MediaRef("cached", path=cached, url=location)
            return MediaRef("url", url=location)
        if isinstance(loc, TarShard):
            return None
        roots = self._roots_for(_source(hit))
        if isinstance(loc, TarMember):
            path = safe_local_path(loc.shard)
            member = loc.member
            if path is None or member.startswith("/") or ".." in member.split("/"):
                return None
            if any(is_within(path, r) for r in roots):
                return MediaRef("tar", path=os.path.realpath(path), member=member, offset=loc.offset, size=loc.size)
            return None
        path = safe_local_path(loc.path)
        if path is None:
            return None
        if any(is_within(path, r) for r in roots):
            return MediaRef("file", path=os.path.realpath(path))
        return None

    def link(self, hit: Any) -> str:
        """The image's path or URL as the collection records it (for exports): the published
        ``mediaURL`` when there is one, else the location."""
        meta = getattr(hit, "metadata", None) or {}
        return str(meta.get("mediaURL") or _location(hit) or "")

    def read(self, hit: Any) -> bytes | None:
        """The bytes of an image served from this machine, or None (not allowed, only remote,
        unreadable, too large)."""
        ref = self.resolve(hit)
        if ref is None or ref.kind == "url" or ref.path is None:
            return None
        try:
            if ref.kind == "tar":
                member = TarMember(path_to_text(ref.path), ref.member or "", ref.offset, ref.size)
                return read_tar_member(member, self.max_source_bytes)
            root_check = self._roots_for(_source(hit)) if ref.kind == "file" else (str(self.media_cache_dir),)
            return _read_checked(ref.path, root_check, self.max_source_bytes)
        except (OSError, FetchError) as exc:
            log.info("cannot read image %s: %s", _location(hit), exc)
            return None

    # -- thumbnails ----------------------------------------------------------------------

    def thumbnail(self, hit: Any, size: int = THUMB_SIZE) -> bytes | str | None:
        """A JPEG of at most ``size`` pixels on its longer side (bytes), the image's URL (str)
        when it is remote and not downloaded, or None when it cannot be shown."""
        ref = self.resolve(hit)
        if ref is None:
            return None
        if ref.kind == "url":
            return ref.url
        key = self.thumb_key(hit, size)
        data = self._cache_get(key)
        if data is not None:
            return data
        with self._locks[int(key[:8], 16) % _LOCK_STRIPES]:
            data = self._cache_get(key)  # made by another session while we waited
            if data is not None:
                return data
            if key in self._failed:
                return None
            raw = self.read(hit)
            data = _make_thumbnail(raw, size, name=_location(hit)) if raw is not None else None
            if data is None:
                self._remember_failure(key)
                return None
            self.made += 1
            self._cache_put(key, data)
            return data

    def detail_image(self, hit: Any) -> bytes | str | None:
        """The large image of the detail view (cached like a thumbnail)."""
        return self.thumbnail(hit, DETAIL_SIZE)

    def thumb_key(self, hit: Any, size: int) -> str:
        """Cache key of an image's thumbnail: changes when the file (location, size, mtime,
        content hash) changes."""
        meta = getattr(hit, "metadata", None) or {}
        ident = "\x00".join(
            str(x) for x in (_location(hit), meta.get("size"), meta.get("mtime"), meta.get("sha256"), int(size))
        )
        return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()

    def thumb_path(self, key: str) -> Path:
        return self.thumbs_dir / key[:2] / f"{key}.jpg"

    def _cache_get(self, key: str) -> bytes | None:
        with self._memory_lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                self.memory_hits += 1
                return data
        try:
            data = self.thumb_path(key).read_bytes()
        except OSError:
            return None
        if data:
            self.disk_hits += 1
            return data
        return None

    def _cache_put(self, key: str, data: bytes) -> None:
        if self._disk_writable is not False:
            try:
                path = self.thumb_path(key)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, data, durable=False)  # a cache: rebuilt if a power cut loses it
                self._disk_writable = True
                return
            except OSError as exc:
                if self._disk_writable is None:
                    log.warning("cannot write thumbnails under %s (%s); keeping them in memory", self.thumbs_dir, exc)
                self._disk_writable = False
        with self._memory_lock:
            if key in self._memory:
                return
            self._memory[key] = data
            self._memory_bytes += len(data)
            while self._memory_bytes > self._memory_limit and len(self._memory) > 1:
                _, old = self._memory.popitem(last=False)
                self._memory_bytes -= len(old)

    def _remember_failure(self, key: str) -> None:
        with self._memory_lock:
            self._failed[key] = None
            while len(self._failed) > 10_000:
                self._failed.popitem(last=False)

    # -- remote ---------------------------------------------------------------------------

    def _cached_download(self, url: str) -> str | None:
        """The downloaded copy of ``url`` in the collection's media cache, if there is one."""
        base = self.media_cache_dir
        if not base.is_dir():
            return None
        candidate = cache_file(base, url)
        if os.path.isfile(candidate) and is_within(candidate, str(base)):
            return os.path.realpath(candidate)
        return None


# -- helpers -------------------------------------------------------------------------------


def _location(hit: Any) -> str | None:
    loc = getattr(hit, "location", None)
    if loc is None and isinstance(hit, Mapping):
        loc = hit.get("location")
    return str(loc) if loc else None


def _source(hit: Any) -> str | None:
    meta = getattr(hit, "metadata", None)
    if meta is None and isinstance(hit, Mapping):
        meta = hit
    value = (meta or {}).get("source")
    return str(value) if value is not None else None


def _read_checked(path: str, roots: Sequence[str], max_bytes: int) -> bytes | None:
    """Read ``path`` (already resolved) without following a symlink swapped in after the check,
    and check again, on the open file, that it is under one of ``roots``."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        import stat

        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
            return None
        proc = f"/proc/self/fd/{fd}"
        if os.path.exists(proc):
            real = os.readlink(proc)
            if not any(is_within(real, r) for r in roots):
                return None
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _make_thumbnail(data: bytes, size: int, *, name: str | None = None) -> bytes | None:
    from PIL import Image

    from indexer.errors import DecodeError
    from indexer.media.decode import decode_image

    try:
        img = decode_image(data, min_size=(size, size), name=name).image
    except DecodeError as exc:
        log.info("no thumbnail for %s: %s", name, exc)
        return None
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()
