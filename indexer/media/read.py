"""The bytes at a location: a local file or a member of a tar shard (one reader for the build
and for the app). See :mod:`indexer.locations` for the kinds.

A member of an uncompressed shard is read with one seek at its recorded offset; a member of a
compressed shard by streaming forward through the shard (the reader keeps its place, so members read
in shard order cost one pass). Every failure is a :class:`~indexer.errors.FetchError` whose
``reason`` is one of those of :func:`indexer.media.localfs.read_file` (``not-found``,
``permission-denied``, ``io-error``, ``too-large``, ...), ``truncated`` or ``invalid-url``.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import threading
import zlib
from typing import Any

from indexer.errors import FetchError, LocationError
from indexer.locations import RemoteUrl, TarMember, TarShard, parse_location, text_to_path
from indexer.media.localfs import read_file

__all__ = ["read_location", "read_tar_member", "cache_file"]


def read_location(location: str, *, max_bytes: int | None = None, downloader: Any = None) -> bytes:
    """The bytes at ``location``: an absolute local path, a ``file://`` URL, a ``tar://`` member,
    or (only with a ``downloader``, :class:`indexer.build.download.Downloader`) an http(s) URL. Raises FetchError; ``too-large`` when the
    bytes would exceed ``max_bytes`` (checked before reading where the size is known)."""
    try:
        loc = parse_location(location)
    except LocationError as exc:
        raise FetchError("invalid-url", str(exc)) from None
    if isinstance(loc, TarMember):
        return read_tar_member(loc, max_bytes, location)
    if isinstance(loc, TarShard):
        raise FetchError("invalid-url", f"tar location without a #member: {location!r}")
    if isinstance(loc, RemoteUrl):
        if downloader is None:
            raise FetchError("invalid-url", f"{location}: http(s) locations are read through a Downloader")
        for _, result in downloader.fetch_many([location]):
            if isinstance(result, FetchError):
                raise result
            return read_location(result, max_bytes=max_bytes)
        raise FetchError("connection-error", f"{location}: no result from the downloader")  # pragma: no cover
    return read_file(loc.path, max_bytes=max_bytes)


def read_tar_member(loc: TarMember, max_bytes: int | None, location: str | None = None) -> bytes:
    """The bytes of a tar member: one seek when its offset is known, else by streaming forward
    through the (compressed) shard. Raises FetchError (``not-found``, ``too-large``, ``truncated``,
    ``io-error``); ``location`` is what the messages name (default: the member's location)."""
    location = location or str(loc)
    if loc.offset is not None and loc.size is not None:
        if max_bytes is not None and loc.size > max_bytes:
            raise FetchError("too-large", f"{location}: {loc.size} bytes, more than the limit of {max_bytes}")
        try:
            with open(text_to_path(loc.shard), "rb") as fh:
                fh.seek(loc.offset)
                data = fh.read(loc.size)
        except FileNotFoundError:
            raise FetchError("not-found", f"no such tar shard: {loc.shard}") from None
        except OSError as exc:
            raise FetchError("io-error", f"cannot read {loc.shard}: {exc.strerror or exc}") from None
        if len(data) < loc.size:
            raise FetchError("truncated", f"{location}: the shard ends after {len(data)} of {loc.size} bytes")
        return data
    return _STREAMS.read(loc.shard, loc.member, max_bytes, location)


class _TarStreams:
    """Members of compressed shards, read by streaming forward through the shard.

    Keeps one open stream per process (and its place in it), so members asked for in shard order
    cost a single pass; a member behind the current place reopens the shard. Thread-safe (one
    reader at a time: a compressed stream has one position).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shard: str | None = None
        self._stamp: tuple[int, int] | None = None
        self._tar: tarfile.TarFile | None = None
        self._seen: set[str] = set()

    def _close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._tar, self._shard, self._stamp, self._seen = None, None, None, set()

    def read(self, shard: str, member: str, max_bytes: int | None, location: str) -> bytes:
        with self._lock:
            try:
                st = os.stat(text_to_path(shard))
            except FileNotFoundError:
                raise FetchError("not-found", f"no such tar shard: {shard}") from None
            except OSError as exc:
                raise FetchError("io-error", f"cannot read {shard}: {exc.strerror or exc}") from None
            stamp = (st.st_mtime_ns, st.st_size)
            if self._shard != shard or self._stamp != stamp or member in self._seen:
                self._close()
            for _attempt in range(2):
                if self._tar is None:
                    try:
                        self._tar = tarfile.open(text_to_path(shard), mode="r|*")  # noqa: SIM115 - kept open between reads
                    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                        raise FetchError("io-error", f"cannot open tar shard {shard}: {exc}") from None
                    self._shard, self._stamp = shard, stamp
                try:
                    for info in self._tar:
                        self._seen.add(info.name)
                        if info.name != member or not info.isfile():
                            continue
                        if max_bytes is not None and info.size > max_bytes:
                            raise FetchError(
                                "too-large", f"{location}: {info.size} bytes, more than the limit of {max_bytes}"
                            )
                        fh = self._tar.extractfile(info)
                        data = fh.read() if fh is not None else b""
                        if len(data) < info.size:
                            raise FetchError("truncated", f"{location}: {len(data)} of {info.size} bytes")
                        return data
                except FetchError:
                    self._close()
                    raise
                except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                    self._close()
                    raise FetchError("truncated", f"{location}: the shard breaks before the member ({exc})") from None
                self._close()  # reached the end: the member was behind us, or is not there
            raise FetchError("not-found", f"{location}: no member {member!r} in {shard}")


_STREAMS = _TarStreams()


def cache_file(cache_dir: str | os.PathLike, url: str) -> str:
    """Where a downloader with ``cache_dir`` keeps the body of ``url``: a file named by the SHA-256
    of the URL, in a folder named by its first two hex digits. The downloader writes there; the app
    reads a remote image from there when it is downloaded."""
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    return os.path.join(os.fspath(cache_dir), digest[:2], digest)
