"""Where an image's bytes are: the one parser and formatter of every kind of location.

A location is a string stored in a collection (the ``location`` and ``key`` columns). Its kinds:

==============  ===============================================================================
kind            text
==============  ===============================================================================
local file      an absolute path in *text form* (:func:`path_to_text`); ``file://`` URLs parse too
remote URL      ``http://`` or ``https://`` (any case) with a host
tar member      ``tar://<SHARD>?offset=N&size=M#<MEMBER>`` for a member of an uncompressed shard
                (its data is ``M`` bytes at byte ``N``: one seek), ``tar://<SHARD>#<MEMBER>`` for a
                member of a compressed shard (read by streaming forward) and as a member's stable key
tar shard       ``tar://<SHARD>``: a whole shard (the key of a shard that could not be read)
==============  ===============================================================================

``SHARD`` and ``MEMBER`` are percent-encoded (UTF-8, undecodable bytes kept with surrogateescape),
``/`` left as it is; ``SHARD`` is the shard's absolute path in text form. Every other module asks
:func:`parse_location` what a location is, or formats one with :func:`tar_location`,
:func:`tar_key` and :func:`shard_location`: nothing else cuts a location string by hand.

Text form of paths: on disk a file name is bytes; Python's ``os`` functions hand them out as ``str``
with undecodable bytes as lone surrogates (``surrogateescape``), which cannot be written to Parquet
or DuckDB (UTF-8 only). :func:`path_to_text` gives the *text form* (valid UTF-8, identical to the
ordinary path for every UTF-8 name); :func:`text_to_path` turns it back into the ``str`` that opens
the file. An undecodable byte ``0xE9`` is written ``%%E9`` (two percent signs mark it), and a literal
``%`` directly followed by another ``%`` is written ``%%25``, so the mapping is exactly reversible.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qs, quote, unquote, urlsplit

from indexer.errors import LocationError

__all__ = [
    "Location",
    "LocalFile",
    "RemoteUrl",
    "TarMember",
    "TarShard",
    "REMOTE_URL_RE",
    "TAR_PREFIX",
    "parse_location",
    "is_remote",
    "tar_location",
    "tar_key",
    "shard_location",
    "local_path",
    "safe_local_path",
    "file_name",
    "file_url_path",
    "without_query",
    "kind_sql",
    "path_to_text",
    "text_to_path",
]

TAR_PREFIX: Final = "tar://"
#: An http(s) URL with a host (RE2 and Python ``re`` syntax alike, so SQL and Arrow can use it too).
REMOTE_URL_RE: Final = r"^[hH][tT][tT][pP][sS]?://[^/?#\s]+"

_REMOTE = re.compile(REMOTE_URL_RE)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_TOKEN: Final = re.compile(r"%%([0-9A-F]{2})")


@dataclass(frozen=True)
class LocalFile:
    """A local file; ``path`` is in text form (:func:`text_to_path` opens it)."""

    path: str

    @property
    def is_absolute(self) -> bool:
        return os.path.isabs(self.path)

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class RemoteUrl:
    """An http(s) URL. ``host`` is the lower-cased host name with its port, when one is given
    (what per-host download limits count by); ``hostname`` the name alone."""

    url: str
    scheme: str
    hostname: str
    port: int | None = None

    @property
    def host(self) -> str:
        return f"{self.hostname}:{self.port}" if self.port else self.hostname

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class TarMember:
    """A member of a tar shard: ``shard`` (absolute path, text form), ``member`` (its name in the
    archive) and, for an uncompressed shard, where its data is (``offset``, ``size``)."""

    shard: str
    member: str
    offset: int | None = None
    size: int | None = None

    @property
    def seekable(self) -> bool:
        return self.offset is not None and self.size is not None

    @property
    def key(self) -> str:
        """The member's stable key: its location without the offset (a rebuilt shard keeps keys)."""
        return tar_key(self.shard, self.member)

    def __str__(self) -> str:
        return tar_location(self.shard, self.member, self.offset, self.size)


@dataclass(frozen=True)
class TarShard:
    """A whole tar shard (``shard``: absolute path, text form)."""

    shard: str

    def __str__(self) -> str:
        return shard_location(self.shard)


Location = LocalFile | RemoteUrl | TarMember | TarShard


# -- parsing ---------------------------------------------------------------------------------------


def parse_location(text: str) -> Location:
    """What ``text`` names. Raises :class:`~indexer.errors.LocationError` (a ValueError) for an
    empty string, a malformed tar location, a URL without a host or a scheme this project does not
    read (``ftp:``, ``s3:`` ...). A path without a scheme is a :class:`LocalFile`, absolute or not."""
    if not isinstance(text, str) or not text:
        raise LocationError(f"not a location: {text!r}")
    if text.startswith(TAR_PREFIX):
        return _parse_tar(text)
    m = _SCHEME.match(text)
    if m is None:  # a path (a name may hold a colon: only "scheme://" is a URL)
        return LocalFile(text)
    scheme = m.group(1).lower()
    if scheme == "file":
        return LocalFile(file_url_path(text))
    if scheme in ("http", "https"):
        try:
            parts = urlsplit(text)
            hostname = (parts.hostname or "").lower()
            port = parts.port
        except ValueError as exc:
            raise LocationError(f"{text}: {exc}") from None
        if not hostname:
            raise LocationError(f"{text}: not an http(s) URL with a host")
        return RemoteUrl(text, scheme, hostname, port)
    raise LocationError(f"unsupported location: {text}")


def _parse_tar(text: str) -> TarMember | TarShard:
    rest, sep, member = text[len(TAR_PREFIX) :].partition("#")
    path, _, query = rest.partition("?")
    shard = unquote(path, errors="surrogateescape")
    if not shard:
        raise LocationError(f"tar location without a shard path: {text!r}")
    if not sep:
        if query:
            raise LocationError(f"tar location with an offset but no #member: {text!r}")
        return TarShard(shard)
    if not member:
        raise LocationError(f"tar location without a #member: {text!r}")
    offset = size = None
    if query:
        try:
            q = parse_qs(query, strict_parsing=True)
            offset = int(q["offset"][0])
            size = int(q["size"][0])
        except (KeyError, ValueError, IndexError):
            raise LocationError(f"tar location with a bad offset/size: {text!r}") from None
        if offset < 0 or size < 0:
            raise LocationError(f"tar location with a negative offset/size: {text!r}")
    return TarMember(shard, unquote(member, errors="surrogateescape"), offset, size)


def is_remote(text: str) -> bool:
    """Whether ``text`` is an http(s) URL with a host (cheap: no full parse)."""
    return bool(_REMOTE.match(text))


def local_path(text: str) -> str | None:
    """The local file (text form) that holds the bytes of ``text``: the file itself, or the shard
    of a tar location; None for a URL or a string that is no location."""
    try:
        loc = parse_location(text)
    except LocationError:
        return None
    if isinstance(loc, LocalFile):
        return loc.path
    if isinstance(loc, TarMember | TarShard):
        return loc.shard
    return None


def safe_local_path(text: str | None) -> str | None:
    """The ``str`` path that opens a local path in text form, or None when it must not be used at
    all: empty, holding a NUL, relative, or with ``..`` components (what serving images relies on)."""
    if not text or "\x00" in text:
        return None
    path = text_to_path(text)
    if not os.path.isabs(path) or ".." in path.split(os.sep):
        return None
    return path


def file_name(text: str | None) -> str:
    """The last part of a location's name (a path's file name, a tar member's, a URL path's last
    segment): what a result card shows of where an image is."""
    if not text:
        return ""
    try:
        loc = parse_location(text)
    except LocationError:
        return text.rstrip("/").rsplit("/", 1)[-1] or text
    if isinstance(loc, TarMember):
        tail = loc.member
    elif isinstance(loc, TarShard):
        tail = loc.shard
    elif isinstance(loc, RemoteUrl):
        tail = urlsplit(loc.url).path or loc.url
    else:
        tail = loc.path
    tail = tail.rstrip("/")
    return tail.rsplit("/", 1)[-1] or tail


def without_query(url: str) -> str:
    """A URL without its query string and fragment (``https://h/a.jpg?w=2#x`` -> ``https://h/a.jpg``)."""
    return url.split("#", 1)[0].split("?", 1)[0]


def file_url_path(text: str) -> str:
    """The path of a ``file://`` URL (``file:///a/b%20c.jpg`` -> ``/a/b c.jpg``). Raises
    LocationError for a file URL on another host."""
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise LocationError(f"{text}: file URL on another host ({parts.netloc})")
    return unquote(parts.path, errors="surrogateescape")


def kind_sql(expr: str) -> str:
    """SQL (DuckDB) giving the kind of the location in ``expr``: ``'url'``, ``'tar'`` or ``'file'``."""
    return (
        f"CASE WHEN regexp_matches({expr}, '{REMOTE_URL_RE}') THEN 'url' "
        f"WHEN starts_with({expr}, '{TAR_PREFIX}') THEN 'tar' ELSE 'file' END"
    )


# -- formatting ------------------------------------------------------------------------------------


def _q(text: str) -> str:
    return quote(text, safe="/", errors="surrogateescape")


def tar_location(shard: str, member: str, offset: int | None = None, size: int | None = None) -> str:
    """The location of ``member`` of ``shard`` (absolute path text), with its data offset when known."""
    query = f"?offset={int(offset)}&size={int(size)}" if offset is not None and size is not None else ""
    return f"{TAR_PREFIX}{_q(shard)}{query}#{_q(member)}"


def tar_key(shard: str, member: str) -> str:
    """The stable key of a tar member: its location without the offset."""
    return f"{TAR_PREFIX}{_q(shard)}#{_q(member)}"


def shard_location(shard: str) -> str:
    """The location (and key) of a whole shard."""
    return f"{TAR_PREFIX}{_q(shard)}"


# -- text form of local paths ----------------------------------------------------------------------


def path_to_text(path: str | bytes | os.PathLike) -> str:
    """The text form of a path: valid UTF-8, lossless, identical for ordinary names.

    Accepts a ``str`` as ``os`` returns it (surrogate-escaped), ``bytes`` or a path-like object.
    See the module docstring for the scheme; :func:`text_to_path` is its exact inverse.
    Raises ValueError for a ``str`` holding lone surrogates that are not surrogate escapes.
    """
    raw = os.fsencode(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if "%%" not in text:
            return text
    escaped = raw.decode("utf-8", "surrogateescape")
    out: list[str] = []
    for i, ch in enumerate(escaped):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, as surrogateescape carries it
            out.append(f"%%{code - 0xDC00:02X}")
        elif ch == "%" and escaped[i + 1 : i + 2] == "%":
            out.append("%%25")
        else:
            out.append(ch)
    return "".join(out)


def text_to_path(text: str | os.PathLike) -> str:
    """The ``str`` path (surrogate-escaped, as ``os`` uses it) that a text form names.

    Exact inverse of :func:`path_to_text`. A ``str`` that still holds surrogate escapes (a raw
    ``os`` path) is passed through, so callers may hand either form.
    """
    text = os.fspath(text)
    if isinstance(text, bytes):
        return os.fsdecode(text)
    if "%%" not in text:
        return os.fsdecode(text.encode("utf-8", "surrogateescape"))
    parts: list[bytes] = []
    pos = 0
    for match in _TOKEN.finditer(text):
        parts.append(text[pos : match.start()].encode("utf-8", "surrogateescape"))
        parts.append(bytes([int(match.group(1), 16)]))
        pos = match.end()
    parts.append(text[pos:].encode("utf-8", "surrogateescape"))
    return os.fsdecode(b"".join(parts))
