"""Checking an uploaded picture (size, kind, pixels) before anything decodes it for real."""

from __future__ import annotations

import io
import os

from indexer.errors import DecodeError, QueryError
from indexer.media.decode import decode_image

__all__ = ["UploadError", "read_upload", "MAX_UPLOAD_BYTES", "MAX_UPLOAD_PIXELS", "UPLOAD_TYPES"]

#: Upload limit (bytes) and the image kinds accepted, by what the bytes are, not by the name.
MAX_UPLOAD_BYTES = int(float(os.environ.get("BIOCLIP_SEARCH_MAX_UPLOAD_MB", "20")) * 1024 * 1024)
#: Largest upload in pixels (width x height, from the header): a small file must not decode into
#: gigabytes (60 MP is about 180 MB of RGB while it is read).
MAX_UPLOAD_PIXELS = 60_000_000
UPLOAD_TYPES = ("jpg", "jpeg", "png", "tif", "tiff", "webp")
_UPLOAD_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "TIFF": "TIFF", "WEBP": "WebP"}


class UploadError(QueryError):
    """An uploaded file is too large, empty, or not an image of an accepted kind."""


def read_upload(name: str | None, data: bytes, max_bytes: int | None = None) -> bytes:
    """Check an upload and return its bytes; raise UploadError with a message for the user.

    Accepted: JPEG, PNG, TIFF and WebP, recognised by their content (the name may lie). The
    bytes stay in memory; nothing is written to disk.
    """
    label = name or "the file"
    max_bytes = MAX_UPLOAD_BYTES if max_bytes is None else max_bytes
    size = len(data)
    if size == 0:
        raise UploadError(f"{label} is empty")
    if size > max_bytes:
        raise UploadError(f"{label} is {_mb(size)}; pictures up to {_mb(max_bytes)} can be searched")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            kind = im.format
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise UploadError(f"{label} is not a picture: upload a JPEG, PNG, TIFF or WebP image") from None
    if kind not in _UPLOAD_FORMATS:
        raise UploadError(f"{label} is a {kind} image; upload a JPEG, PNG, TIFF or WebP image")
    if width * height > MAX_UPLOAD_PIXELS:
        raise UploadError(
            f"{label} has {width} x {height} pixels; pictures up to {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels can be searched"
        )
    try:
        decode_image(data, min_size=(224, 224), name=label, max_pixels=MAX_UPLOAD_PIXELS)
    except DecodeError as exc:
        reason = {"truncated": "it is cut short", "too-many-pixels": "it has too many pixels"}.get(
            exc.reason, exc.reason
        )
        raise UploadError(f"{label} cannot be read as a picture ({reason})") from None
    return data


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"
