"""Bytes -> upright RGB PIL image, robustly: every failure is a ``DecodeError`` with a stable reason.

Contract of :func:`decode_image`:

* It never raises anything but :class:`indexer.errors.DecodeError` for bad data (wrong arguments are a
  ``ValueError``). Reasons: ``empty-file``, ``not-an-image``, ``truncated``, ``too-many-pixels``,
  ``out-of-memory`` and ``corrupt`` (anything else Pillow rejects, or a pixel mode it cannot convert).
* The image comes back loaded, in mode ``"RGB"``, upright (EXIF orientation applied), first frame
  only (multi-page TIFF, MPO, animated GIF/WebP), transparency composited on white, 16-bit and float
  data scaled to 8 bits (see :func:`to_rgb`).
* A size over ``max_pixels`` is rejected from the header, before any pixel is decoded, so a
  decompression bomb costs no memory.
* With ``min_size`` the image may come back smaller than the original (never smaller than
  ``min_size`` in either dimension, unless the original is): JPEG is decoded at 1/2, 1/4 or 1/8
  scale by libjpeg's DCT scaling (``Image.draft``), then any format is box-reduced by an integer
  factor (``Image.reduce``). ``width``/``height`` always report the original, upright size.
* It changes no global state per call and is safe to call from many threads and processes. The one
  process-wide setting it may touch is Pillow's own bomb limit, see :func:`_let_pillow_accept`.
* Truncated files fail with ``truncated`` unless some other code in the process has set
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True``, in which case Pillow pads them with grey and
  they decode; we read that setting, never write it.
* Embedded ICC profiles are not applied (colours are taken as sRGB; CMYK uses Pillow's conversion).
"""

from __future__ import annotations

import io
import logging
import struct
import threading
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageFile

from indexer.errors import DecodeError

__all__ = ["DEFAULT_MAX_PIXELS", "DecodedImage", "decode_image", "to_rgb"]

log = logging.getLogger(__name__)

#: Largest image (width x height of the header) decoded by default.
#: Herbarium sheets are scanned at up to about 20,000 x 15,000 (300 MP) and must pass, with room for
#: somewhat larger scans (e.g. 22,000 x 18,000). Pillow's own limit (~89 MP warning, ~179 MP error) is
#: too small for them. 400 MP bounds the worst case of a format that cannot be decoded at reduced size
#: (PNG, TIFF, ...) to about 1.2 GB of RGB per decode worker; JPEGs of that size cost a small
#: fraction of it thanks to DCT scaling. Anything larger is almost certainly a decompression bomb.
DEFAULT_MAX_PIXELS: Final[int] = 400_000_000

#: EXIF orientation -> the transpose that makes the stored pixels upright (as ImageOps.exif_transpose).
_TRANSPOSE: Final[dict[int, Image.Transpose]] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION: Final = 0x0112
# Formats whose decoder can scale by 1/2, 1/4, 1/8 while decoding (libjpeg DCT scaling).
_DRAFT_FORMATS: Final = frozenset({"JPEG", "MPO"})
# Magic numbers of the raster formats we expect, to tell "damaged image" from "not an image at all".
_SIGNATURES: Final[tuple[tuple[bytes, str], ...]] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)
# Rows converted per step when scaling 16-bit/float data, so a huge image needs no float copy of itself.
_SCALE_CHUNK_PIXELS: Final = 1 << 22

_pillow_limit_lock = threading.Lock()


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image: ``image`` is loaded, mode RGB, upright, possibly reduced (see ``min_size``).

    ``width``/``height`` are the original full-resolution size after EXIF orientation, ``format``
    the container Pillow recognised (``"JPEG"``, ``"PNG"``, ``"MPO"``, ...), ``mode`` the original
    pixel mode (``"CMYK"``, ``"I;16"``, ``"P"``, ...).
    """

    image: Image.Image
    width: int
    height: int
    format: str
    mode: str


def decode_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> DecodedImage:
    """Decode ``data`` (the bytes of one image file) into an upright RGB image.

    ``max_pixels``: images whose header claims more pixels (width x height) are rejected with
    ``too-many-pixels`` before decoding. ``min_size``: ``(width, height)`` in the upright frame that
    the returned image must still cover (e.g. twice the model's input); larger images are reduced
    towards it to save time and memory. ``name`` (a path or URL) only labels log messages.

    Raises DecodeError (see the module docstring for the reasons); never any other exception for
    bad data. ValueError for invalid arguments.
    """
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if min_size is not None and (len(min_size) != 2 or min(min_size) < 1):
        raise ValueError(f"min_size must be two positive integers (width, height), got {min_size!r}")
    label = name or "<bytes>"
    try:
        return _decode(bytes(data) if not isinstance(data, bytes) else data, max_pixels, min_size)
    except DecodeError as exc:
        log.debug("cannot decode %s: %s", label, exc)
        raise
    except MemoryError:
        log.debug("cannot decode %s: out of memory", label)
        raise DecodeError("out-of-memory", "not enough memory to decode the image") from None
    except Exception as exc:  # Pillow and its codecs raise nearly anything on hostile data
        err = _classify(exc)
        log.debug("cannot decode %s: %s", label, err)
        raise err from exc


def _decode(data: bytes, max_pixels: int, min_size: tuple[int, int] | None) -> DecodedImage:
    if not data:
        raise DecodeError("empty-file", "the file is empty (0 bytes)")
    im = _open(data)
    fmt = im.format or "unknown"
    mode = im.mode
    stored_w, stored_h = im.size
    pixels = stored_w * stored_h
    if stored_w < 1 or stored_h < 1:
        raise DecodeError("corrupt", f"{fmt} header gives an empty size {stored_w}x{stored_h}")
    if pixels > max_pixels:
        raise DecodeError(
            "too-many-pixels",
            f"{fmt} image of {stored_w}x{stored_h} = {pixels:,} pixels is over the limit of {max_pixels:,}",
        )
    _let_pillow_accept(pixels, max_pixels)

    orientation = 1
    if min_size is not None and fmt in _DRAFT_FORMATS:
        # JPEG EXIF sits in APP1, before the scan: known without decoding, and needed now because
        # min_size is in the upright frame while draft works on the stored one.
        orientation = _orientation(im)
        im.draft("RGB", _stored_frame(min_size, orientation))
    im.load()
    # PNG may carry eXIf after the pixel data, so the orientation is only final after load().
    orientation = _orientation(im)
    rgb = to_rgb(im)
    if min_size is not None:
        rgb = _reduce(rgb, _stored_frame(min_size, orientation))
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    width, height = (stored_h, stored_w) if orientation in (5, 6, 7, 8) else (stored_w, stored_h)
    return DecodedImage(image=rgb, width=width, height=height, format=fmt, mode=mode)


def _open(data: bytes) -> ImageFile.ImageFile:
    """Identify ``data`` and read its header, like ``Image.open`` minus Pillow's bomb check.

    Image.open rejects anything over 2 x ``Image.MAX_IMAGE_PIXELS`` (179 MP by default) and warns
    over 89 MP, before we can apply our own ``max_pixels``; a 300 MP herbarium sheet would fail.
    This walks Pillow's plugin registry (``Image.ID``/``Image.OPEN``, the same tables
    ``Image.register_open`` fills) as Image.open does, and lets the caller check the size. Unlike
    Image.open it also moves on to the next plugin when one fails with OSError/ValueError, and
    remembers the first plugin whose signature matched, to tell a damaged image from non-image bytes.
    """
    Image.init()  # registers every plugin once per process; cheap afterwards
    fp = io.BytesIO(data)
    prefix = data[:16]
    claimed: str | None = None  # the format whose signature matched but whose header failed
    claim_error: BaseException | None = None
    for fmt in list(Image.ID):
        factory, accept = Image.OPEN[fmt]
        accepted = accept(prefix) if accept else True
        if not accepted or isinstance(accepted, str):  # a str: "plugin missing" message
            continue
        fp.seek(0)
        try:
            return factory(fp, "")
        except (SyntaxError, IndexError, TypeError, struct.error, EOFError, OSError, ValueError) as exc:
            # Plugins without a signature check (accept is None) fail on everything: not a claim.
            if accept is not None and claimed is None:
                claimed, claim_error = fmt, exc
    raise _unidentified(data, claimed, claim_error)


def _unidentified(data: bytes, claimed: str | None, error: BaseException | None) -> DecodeError:
    """The error for bytes no plugin could open: damaged image, or not an image at all."""
    sig = next((f for magic, f in _SIGNATURES if data.startswith(magic)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        sig = "WEBP"
    fmt = claimed or sig
    if fmt is None or _is_text(data):
        # Text that happens to start like a signature ("BM..." is BMP's) is still text.
        return DecodeError("not-an-image", f"not a known image format ({_describe_bytes(data)})")
    msg = f"{type(error).__name__}: {error}" if error is not None else "no decoder accepted it"
    if _looks_truncated(error):
        return DecodeError("truncated", f"{fmt} header is cut short ({len(data):,} bytes): {msg}")
    return DecodeError("corrupt", f"{fmt} signature but an unreadable header ({msg})")


def _describe_bytes(data: bytes) -> str:
    """A few words about what non-image bytes look like, for the failure report."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head or b"<body" in head:
        return "an HTML page"
    if head.startswith(b"<?xml") or head.startswith(b"<"):
        return "XML or HTML text"
    if head.startswith((b"{", b"[")):
        return "JSON-like text"
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < 4090:  # not just a multi-byte character cut at the window's end
            return f"binary data starting {data[:8].hex(' ')}"
    return "text"


def _is_text(data: bytes) -> bool:
    """Whether the first bytes are printable UTF-8 text (every binary image header has controls)."""
    head = data[:1024]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a multi-byte character cut at the window's end
            return False
        text = head[: exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def _looks_truncated(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, (EOFError, struct.error)):
        return True
    text = str(exc).lower()
    return "truncat" in text or "requires a buffer" in text or "premature end" in text


def _classify(exc: Exception) -> DecodeError:
    """Name the reason for an exception raised while decoding pixels."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, Image.DecompressionBombError):
        # A frame (GIF) or tile bigger than the header said; our own check saw the header only.
        return DecodeError("too-many-pixels", detail)
    if _looks_truncated(exc):
        return DecodeError("truncated", detail)
    return DecodeError("corrupt", detail)


def _let_pillow_accept(pixels: int, max_pixels: int) -> None:
    """Make sure Pillow's own bomb check neither warns about nor rejects an image we accepted.

    Pillow re-checks ``Image.MAX_IMAGE_PIXELS`` while loading some formats (TIFF strips, MPO
    frames, GIF frames): it warns above it and raises above twice it. Our check from the header
    (``max_pixels``) has already run, so Pillow's is redundant here. It is a process-wide setting
    read at call time, so there is no per-call way to lift it; instead, only when an image actually
    exceeds it, we raise it to this call's ``max_pixels`` (our default: 400 MP). Bounded and
    monotone: it is never lowered, never disabled (None), never set above a ``max_pixels`` some
    caller asked for, and a lock keeps concurrent raises from undoing each other. Other code in the
    process keeps a bomb check, at that higher limit. Logged once per change.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is None or pixels <= current:
        return
    with _pillow_limit_lock:
        current = Image.MAX_IMAGE_PIXELS
        if current is not None and current < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels
            log.info(
                "raised PIL.Image.MAX_IMAGE_PIXELS from %s to %s to decode a %s-pixel image "
                "(indexer.media.decode checks max_pixels from the header itself)",
                f"{current:,}",
                f"{max_pixels:,}",
                f"{pixels:,}",
            )


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1..8), 1 when absent or unreadable: bad EXIF never fails an image."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
        value = int(value)
    except Exception as exc:  # malformed EXIF blocks raise all sorts of things
        log.debug("ignoring unreadable EXIF: %s: %s", type(exc).__name__, exc)
        return 1
    return value if 1 <= value <= 8 else 1


def _stored_frame(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """An upright (width, height) expressed in the stored pixels' frame."""
    return (size[1], size[0]) if orientation in (5, 6, 7, 8) else (size[0], size[1])


def _reduce(im: Image.Image, min_size: tuple[int, int]) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps both sides >= ``min_size``.

    ``Image.reduce`` averages factor x factor blocks (no aliasing) and is much cheaper than a
    resize; the exact model-input resize happens later, on the smaller image.
    """
    factor = min(im.width // min_size[0], im.height // min_size[1])
    return im.reduce(factor) if factor >= 2 else im


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow pixel mode to RGB the way an image viewer would show it.

    * transparency (RGBA, LA, PA, RGBa, P or L/RGB with a ``transparency`` entry, palette alpha)
      is composited on white;
    * 16-bit integer data (I;16, I;16B, I;16L, ...) is scaled from the full 0..65535 range, so
      32768 becomes 128 (Pillow's own convert clips at 255);
    * 32-bit integer (I) and float (F) data are scaled from the smallest of the ranges
      [0, 1] (float only), [0, 255], [0, 65535] that holds every finite value, or stretched from
      their own min..max when none does (negative or larger values); NaN becomes 0;
    * 1, L, P, CMYK (Adobe-inverted CMYK JPEGs are un-inverted by Pillow's JPEG reader), YCbCr,
      LAB, HSV, RGBX go through Pillow's conversion.

    Returns ``im`` itself when it is already RGB without transparency. Raises DecodeError
    (``corrupt``) for a mode Pillow cannot convert.
    """
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode in ("I", "F") or mode.startswith("I;"):
        return Image.fromarray(_scale_to_uint8(im)).convert("RGB")
    try:
        if im.has_transparency_data:
            rgba = im if mode == "RGBA" else im.convert("RGBA")
            white = Image.new("RGB", im.size, (255, 255, 255))
            white.paste(rgba, mask=rgba.getchannel("A"))
            return white
        return im.convert("RGB")
    except ValueError as exc:  # "conversion from X to Y not supported"
        raise DecodeError("corrupt", f"cannot convert pixel mode {mode} to RGB: {exc}") from exc


def _scale_to_uint8(im: Image.Image) -> np.ndarray:
    """One-band 16-bit / 32-bit / float pixels -> uint8 array, scaled as :func:`to_rgb` describes."""
    try:
        arr = np.asarray(im)
    except Exception:  # a 16-bit variant without an array interface: widen losslessly first
        arr = np.asarray(im.convert("I"))
    if arr.ndim != 2:
        raise DecodeError("corrupt", f"unexpected array shape {arr.shape} for mode {im.mode}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        # The dtype says the range: always the full 16 bits. A lookup table needs no wide copy.
        return _LUT16[arr]
    finite_lo, finite_hi = _finite_range(arr)
    if arr.dtype.kind == "f" and finite_lo >= 0.0 and finite_hi <= 1.0:
        lo, hi = 0.0, 1.0
    elif finite_lo >= 0 and finite_hi <= 255:
        lo, hi = 0.0, 255.0
    elif finite_lo >= 0 and finite_hi <= 65535:
        lo, hi = 0.0, 65535.0
    else:
        lo, hi = float(finite_lo), float(finite_hi)
    out = np.empty(arr.shape, np.uint8)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    rows = max(1, _SCALE_CHUNK_PIXELS // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows].astype(np.float32)
        np.nan_to_num(block, copy=False, nan=lo, posinf=hi, neginf=lo)
        block -= lo
        block *= scale
        np.clip(block, 0.0, 255.0, out=block)
        np.rint(block, out=block)
        out[start : start + rows] = block
    return out


def _finite_range(arr: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values, (0, 0) when there are none; in row chunks, no full copy."""
    lo, hi = np.inf, -np.inf
    rows = max(1, _SCALE_CHUNK_PIXELS // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows]
        if arr.dtype.kind == "f":
            block = block[np.isfinite(block)]
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return (0.0, 0.0) if lo > hi else (lo, hi)


# 0..65535 -> 0..255, rounded: v * 255 / 65535 (65535 -> 255, 32768 -> 128, 257 -> 1).
_LUT16: Final[np.ndarray] = np.rint(np.arange(65536, dtype=np.float64) * (255.0 / 65535.0)).astype(np.uint8)
