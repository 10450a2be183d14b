"""What the downloader reads from HTTP: which bodies are images, which answers are worth a retry,
how long the server asks us to wait, and which host a URL counts against."""

from __future__ import annotations

import email.utils
import time

from indexer.errors import FetchError, LocationError
from indexer.locations import RemoteUrl, parse_location

__all__ = ["GENERIC_TYPES", "RETRY_STATUS", "looks_like_image", "host_of", "content_length", "parse_retry_after"]

GENERIC_TYPES = {
    "",
    "application/octet-stream",
    "binary/octet-stream",
    "application/binary",
    "application/x-binary",
    "application/unknown",
    "application/download",
    "application/force-download",
}


RETRY_STATUS = {408, 429, 500, 502, 503, 504}


def looks_like_image(head: bytes) -> bool:
    """Whether ``head`` (the first bytes of a body) starts like an image file format Pillow reads."""
    return (
        head.startswith(b"\xff\xd8\xff")  # JPEG
        or head.startswith(b"\x89PNG\r\n\x1a\n")
        or head[:6] in (b"GIF87a", b"GIF89a")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
        or head[:4] in (b"II*\x00", b"MM\x00*")  # TIFF
        or head[:2] == b"BM"
        or head.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n")  # JPEG 2000
        or head.startswith(b"\xffO\xffQ")  # JPEG 2000 codestream
        or (head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"))
    )


def host_of(url: str) -> tuple[str, FetchError | None]:
    try:
        loc = parse_location(url)
    except LocationError as exc:
        return "", FetchError("invalid-url", str(exc))
    if not isinstance(loc, RemoteUrl):
        return "", FetchError("invalid-url", f"{url}: not an http(s) URL with a host")
    return loc.host, None


def content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
