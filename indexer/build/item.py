"""One work item: read, hash, decode and preprocess an image, never raising (both executors' core).

A failure is a value: a record with the stage, a stable reason and a detail, so that one bad file
never ends a decode worker, a Ray task or the run, and never shifts the ids of the others.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from indexer.errors import ItemError
from indexer.media.batch_decode import jpeg_size
from indexer.media.decode import DEFAULT_MAX_PIXELS, decode_image
from indexer.media.read import read_location

__all__ = ["ItemSettings", "process_item"]


@dataclass(frozen=True)
class ItemSettings:
    """How items are decoded: the model's ``transform`` (PIL -> tensor, picklable), the smallest
    size the decoder may reduce a large JPEG to (``min_size``, the preprocessing's draft size), and
    the limits on pixels (None: the decoder's default) and bytes. ``device_jpeg``: plain JPEGs are
    not decoded here but handed on as bytes, for a :class:`~indexer.media.batch_decode.BatchDecoder`
    on the model's device (everything else is decoded here as always)."""

    transform: Callable[[Any], Any]
    min_size: tuple[int, int]
    max_pixels: int | None
    max_bytes: int
    device_jpeg: bool = False


def process_item(i: int, read_from: str, location: str, settings: ItemSettings) -> dict[str, Any]:
    """Read, hash, decode and preprocess one image; never raises.

    Returns ``{"i", "tensor", "sha256", "width", "height"}`` or, for a failure,
    ``{"i", "tensor": None, "stage", "reason", "detail"}``; with ``settings.device_jpeg``, a plain
    JPEG comes back undecoded: ``{"i", "tensor": None, "data", "sha256", "width", "height"}`` (its
    size read from the header). ``read_from`` is a local path or tar
    member (a downloaded file for remote items); ``location`` is what failures and logs name.
    """
    rec: dict[str, Any] = {"i": i, "tensor": None}
    try:
        data = read_location(read_from, max_bytes=settings.max_bytes)
        rec["sha256"] = hashlib.sha256(data).hexdigest()
        if settings.device_jpeg:
            size = jpeg_size(data, settings.max_pixels or DEFAULT_MAX_PIXELS)
            if size is not None:
                rec["width"], rec["height"] = size
                rec["data"] = data
                return rec
        kwargs: dict[str, Any] = {"min_size": settings.min_size}
        if settings.max_pixels is not None:
            kwargs["max_pixels"] = settings.max_pixels
        decoded = decode_image(data, name=location, **kwargs)
        del data
        rec["width"], rec["height"] = decoded.width, decoded.height
        rec["tensor"] = settings.transform(decoded.image)
    except ItemError as exc:
        rec.update(stage=exc.stage, reason=exc.reason, detail=exc.detail)
    except MemoryError:
        rec.update(stage="decode", reason="out-of-memory", detail="not enough memory to decode")
    except Exception as exc:  # a bug or an exotic failure: record it, never kill the run
        rec.update(stage="preprocess", reason="error", detail=f"{type(exc).__name__}: {exc}")
    return rec
