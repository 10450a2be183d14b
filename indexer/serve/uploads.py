"""Checking a query picture before anything decodes it for real: its size in bytes (413), what it
is by its content, not its name (415), and its size in pixels from the header (413: a small file
that would decode into gigabytes, a decompression bomb, is refused before it is decoded)."""

from __future__ import annotations

import base64
import binascii
import io

from indexer.serve.config import Limits
from indexer.serve.errors import ApiError

__all__ = ["check_picture", "decode_base64"]

_KINDS = "JPEG, PNG, TIFF or WebP"


def decode_base64(text: str, what: str) -> bytes:
    """The bytes of a base64 field (standard or URL-safe alphabet); 400 when it is not base64."""
    try:
        cleaned = "".join(text.split())
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", f"{what} is not base64 data") from None


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def check_picture(data: bytes, limits: Limits, name: str | None = None) -> bytes:
    """``data`` if it is a picture the server accepts; else ApiError 413 or 415 with a message."""
    label = name or "the picture"
    if not data:
        raise ApiError(415, "not_an_image", f"{label} is empty")
    if len(data) > limits.max_upload_bytes:
        raise ApiError(
            413,
            "image_too_large",
            f"{label} is {_mb(len(data))}; pictures up to {_mb(limits.max_upload_bytes)} can be searched",
        )
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            kind = im.format or "unknown"
            width, height = im.size
    except Image.DecompressionBombError:
        raise ApiError(413, "image_too_large", f"{label} has too many pixels to be searched") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ApiError(415, "not_an_image", f"{label} is not an image: send a {_KINDS} picture") from None
    formats = limits.upload_formats
    if formats is not None and kind.upper() not in formats:
        raise ApiError(415, "not_an_image", f"{label} is a {kind} image; send a {_KINDS} image")
    if width * height > limits.max_upload_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"{label} has {width} x {height} pixels; pictures up to "
            f"{limits.max_upload_pixels / 1e6:g} megapixels can be searched",
        )
    return data
