"""indexer.media.decode: every image a museum can throw at it decodes correctly or fails with a stable reason.

All inputs are generated in memory (or tmp_path); the real camera-trap variants in ../shared/data are
used when present and skipped otherwise.
"""

from __future__ import annotations

import io
import json
import random
import struct
import subprocess
import sys
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from indexer.errors import DecodeError
from indexer.media.decode import DEFAULT_MAX_PIXELS, DecodedImage, decode_image, to_rgb

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# -- helpers -------------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic photo-like RGB image: smooth colour fields, hard-edged shapes, mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 90 * np.sin(x / (width / 5.0) + 1.0)
    g = 128 + 90 * np.cos(y / (height / 4.0))
    b = 255 * (x + y) / (width + height)
    arr = np.stack([r, g, b], axis=-1)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - width // 6), rng.integers(0, height - height // 6)
        arr[y0 : y0 + height // 6, x0 : x0 + width // 6] = rng.integers(0, 256, 3)
    arr += rng.normal(0, 6, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def marked(width: int, height: int) -> Image.Image:
    """Blue image with a red block in the top-left corner and a green one in the bottom-right."""
    im = Image.new("RGB", (width, height), BLUE)
    im.paste(RED, (0, 0, width // 4, height // 4))
    im.paste(GREEN, (width - width // 4, height - height // 4, width, height))
    return im


def pixels(im: Image.Image, size: tuple[int, int] | None = None) -> np.ndarray:
    if size is not None:
        im = im.resize(size, Image.Resampling.BICUBIC)
    return np.asarray(im.convert("RGB"), dtype=np.float64)


def mad(a: Image.Image, b: Image.Image, size: tuple[int, int] | None = None) -> float:
    """Mean absolute difference per channel value (0..255)."""
    return float(np.abs(pixels(a, size) - pixels(b, size)).mean())


def with_orientation(im: Image.Image, orientation: int, fmt: str = "JPEG", **params) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif.tobytes(), **params)


def reason_of(data: bytes, **kwargs) -> str:
    with pytest.raises(DecodeError) as info:
        decode_image(data, **kwargs)
    return info.value.reason


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def gif_bomb(width: int, height: int) -> bytes:
    """A tiny GIF whose logical screen and only frame claim width x height pixels."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b";"


def synthetic_jpeg(width: int, height: int) -> bytes:
    """A baseline 4:4:4 JPEG of vertical 8-pixel stripes (luma 192 / 128, neutral chroma).

    Built directly as a periodic entropy-coded stream with minimal Huffman tables, so a 300 MP
    image costs ~10 MB and milliseconds instead of a gigabyte of pixels to encode.
    """

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload

    # Huffman tables holding only the symbols used: DC category 0 -> '00', 6 -> '01'; AC EOB -> '00'.
    dht = bytes([0x00, 0, 2] + [0] * 14 + [0, 6]) + bytes([0x10, 0, 1] + [0] * 14 + [0x00])
    dqt = bytes([0x00, 16] + [1] * 63)  # DC step 16: a DC difference of 32 is +64 grey levels
    sof = struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
    sos = bytes([3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0])
    # MCU = Y (DC diff +32 or -32: '01' + 6 bits, then EOB '00') + Cb and Cr ('00' DC, '00' EOB):
    # 18 bits; a bright/dark pair 36 bits; two pairs 72 bits = 9 whole bytes, repeated.
    pair = "011000000000000000" + "010111110000000000"
    mcus = -(-width // 8) * -(-height // 8)
    n_pairs, odd = divmod(mcus, 2)
    body = int(pair * 2, 2).to_bytes(9, "big") * (n_pairs // 2)
    tail = pair * (n_pairs % 2) + (pair[:18] if odd else "")
    if tail:
        tail += "1" * (-len(tail) % 8)  # pad the last byte with 1 bits, as the standard says
        body += int(tail, 2).to_bytes(len(tail) // 8, "big")
    body = body.replace(b"\xff", b"\xff\x00")  # byte stuffing
    return (
        b"\xff\xd8"
        + segment(0xDB, dqt)
        + segment(0xC0, sof)
        + segment(0xC4, dht)
        + segment(0xDA, sos)
        + body
        + b"\xff\xd9"
    )


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return scene(320, 240)


# -- failures with a stable reason ---------------------------------------------------------------


def test_empty_file():
    assert reason_of(b"") == "empty-file"


@pytest.mark.parametrize(
    "data",
    [
        b"Specimen 1234, Corvus corax, collected 1901\n",
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>",
        b"\xef\xbb\xbf<html><body>Access denied</body></html>",
        b'{"error": "rate limited"}',
        bytes(range(256)) * 4,
        b"BM-1042, Bombus terrestris, det. 1987\n",  # starts like a BMP signature
    ],
    ids=["text", "html", "html-bom", "json", "binary", "text-like-bmp"],
)
def test_not_an_image(data, tmp_path):
    path = tmp_path / "specimen.jpg"  # what a museum export looks like: any bytes under an image name
    path.write_bytes(data)
    with pytest.raises(DecodeError) as info:
        decode_image(path.read_bytes())
    assert info.value.reason == "not-an-image"
    assert info.value.stage == "decode"


def test_html_is_named_in_the_detail():
    with pytest.raises(DecodeError) as info:
        decode_image(b"<html><body>Login required</body></html>")
    assert "HTML" in info.value.detail


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "TIFF"])
def test_truncated_image_data(photo, fmt):
    data = encode(photo, fmt)
    assert reason_of(data[: len(data) * 6 // 10]) == "truncated"


def test_truncated_jpeg_header(photo):
    assert reason_of(encode(photo, "JPEG")[:40]) == "truncated"


def test_truncated_progressive_jpeg(photo):
    data = encode(photo, "JPEG", progressive=True)
    assert reason_of(data[: len(data) // 2]) == "truncated"


def test_damaged_header_is_corrupt(photo):
    data = bytearray(encode(photo, "PNG"))
    data[16:24] = b"\x00" * 8  # width and height 0, CRC now wrong
    assert reason_of(bytes(data)) == "corrupt"


def test_decompression_bomb_png_rejected_from_header():
    data = png_bomb(100_000, 100_000)
    assert len(data) < 200
    with pytest.raises(DecodeError) as info:
        decode_image(data)
    assert info.value.reason == "too-many-pixels"
    assert "100000x100000" in info.value.detail
    assert "10,000,000,000" in info.value.detail


def test_decompression_bomb_gif_rejected_from_header():
    assert reason_of(gif_bomb(60_000, 60_000)) == "too-many-pixels"


def test_bomb_leaves_pillow_limit_alone():
    before = Image.MAX_IMAGE_PIXELS
    reason_of(png_bomb(100_000, 100_000))
    assert before == Image.MAX_IMAGE_PIXELS


def test_max_pixels_is_configurable(photo):
    data = encode(photo, "PNG")  # 320 x 240 = 76,800 pixels
    assert reason_of(data, max_pixels=76_799) == "too-many-pixels"
    assert decode_image(data, max_pixels=76_800).image.size == (320, 240)


def test_default_max_pixels_allows_a_herbarium_sheet():
    assert DEFAULT_MAX_PIXELS >= 20_000 * 15_000  # decoded for real in test_herbarium_sheet_...
    assert reason_of(png_bomb(20_000, 15_000), max_pixels=20_000 * 15_000 - 1) == "too-many-pixels"


def test_invalid_arguments_are_value_errors(photo):
    data = encode(photo, "PNG")
    with pytest.raises(ValueError):
        decode_image(data, max_pixels=0)
    with pytest.raises(ValueError):
        decode_image(data, min_size=(0, 10))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "TIFF", "WEBP", "BMP"])
def test_damaged_bytes_only_ever_raise_decode_error(fmt):
    """Seeded fuzzing: flipped bytes and cuts anywhere give an image or a DecodeError, nothing else."""
    rng = random.Random(f"fuzz-{fmt}")
    base = encode(scene(48, 32, seed=1), fmt)
    reasons = set()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF etc.; not our concern here
        for _ in range(60):
            data = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.3:
                data = data[: rng.randrange(1, len(data))]
            try:
                out = decode_image(bytes(data))
            except DecodeError as exc:
                reasons.add(exc.reason)
            else:
                assert out.image.mode == "RGB"
                out.image.getpixel((0, 0))
    assert reasons <= {"truncated", "corrupt", "not-an-image", "too-many-pixels", "out-of-memory"}


# -- Pillow's own bomb limit -----------------------------------------------------------------------


def test_pillow_limit_neither_warns_nor_rejects_images_we_accept(monkeypatch, photo):
    """Pillow re-checks its limit while loading TIFF; it must not override our max_pixels."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # restored after the test
    data = encode(photo, "TIFF")  # 76,800 pixels: > 2 x Pillow's limit here
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        out = decode_image(data, max_pixels=100_000)
    assert out.image.size == (320, 240)
    # Raised only as far as this caller's max_pixels, never disabled.
    assert Image.MAX_IMAGE_PIXELS == 100_000


def test_pillow_limit_untouched_for_ordinary_images(monkeypatch, photo):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    decode_image(encode(photo, "TIFF"))
    assert Image.MAX_IMAGE_PIXELS == 1_000_000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    decode_image(encode(photo, "TIFF"))
    assert Image.MAX_IMAGE_PIXELS is None


# -- pixel modes -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "mode"), [("TIFF", "I;16"), ("TIFF", "I;16B"), ("PNG", "I;16")])
def test_16bit_grayscale_is_scaled_not_clipped(fmt, mode):
    values = np.array([[0, 257, 32768, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    dtype = ">u2" if mode == "I;16B" else "<u2"
    im = Image.frombytes(mode, (4, 2), values.astype(dtype).tobytes())
    out = decode_image(encode(im, fmt))
    assert out.mode == mode if fmt == "TIFF" else out.mode.startswith("I")
    got = np.asarray(out.image)
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()
    expected = np.rint(values / 65535 * 255)
    np.testing.assert_array_equal(got[..., 0], expected)
    assert got[0, 2, 0] == 128 and got[0, 3, 0] == 255 and got[0, 1, 0] == 1


def test_16bit_gradient_keeps_its_range():
    ramp = np.linspace(0, 65535, 256 * 16).astype(np.uint16).reshape(16, 256)
    out = np.asarray(decode_image(encode(Image.fromarray(ramp), "TIFF")).image)[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) == 256  # every grey level used; clipping would leave ~1


def test_32bit_integer_in_16bit_range():
    values = np.array([[0, 32768, 65535]], dtype=np.int32)
    out = decode_image(encode(Image.fromarray(values), "TIFF"))
    assert out.mode == "I"
    assert list(np.asarray(out.image)[0, :, 0]) == [0, 128, 255]


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.0, 0.5, 1.0], [0, 128, 255]),  # normalised float
        ([0.0, 100.0, 255.0], [0, 100, 255]),  # 8-bit data stored as float
        ([0.0, 32768.0, 65535.0], [0, 128, 255]),  # 16-bit data stored as float
        ([-1.0, 0.0, 1.0], [0, 128, 255]),  # anything else: stretched from min..max
        ([float("nan"), 0.25, 1.0], [0, 64, 255]),  # NaN is 0, the range ignores it
    ],
)
def test_float_is_scaled_sensibly(values, expected):
    im = Image.fromarray(np.array([values], dtype=np.float32))
    assert im.mode == "F"
    out = decode_image(encode(im, "TIFF"))
    assert out.mode == "F"
    assert list(np.asarray(out.image)[0, :, 0]) == expected


def test_cmyk_jpeg_colours_match_the_rgb_original(photo):
    data = encode(photo.convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).info.get("adobe") is not None  # Adobe (inverted) CMYK
    out = decode_image(data)
    assert out.mode == "CMYK" and out.image.mode == "RGB"
    assert mad(out.image, photo) < 4.0
    assert mad(out.image, ImageOps.invert(photo)) > 60  # not inverted


def test_palette_png(photo):
    pal = photo.quantize(64)
    out = decode_image(encode(pal, "PNG"))
    assert out.mode == "P"
    assert mad(out.image, pal.convert("RGB")) == 0.0


def test_rgba_png_is_composited_on_white():
    im = Image.new("RGBA", (4, 1))
    im.putdata([(0, 0, 0, 0), (255, 0, 0, 255), (255, 0, 0, 128), (0, 0, 255, 0)])
    out = decode_image(encode(im, "PNG"))
    assert out.mode == "RGBA"
    got = [out.image.getpixel((x, 0)) for x in range(4)]
    assert got[0] == WHITE and got[3] == WHITE  # transparent, whatever colour is hidden under it
    assert got[1] == RED
    assert got[2][0] == 255 and abs(got[2][1] - 127) <= 1 and abs(got[2][2] - 127) <= 1


def test_palette_with_trns_is_composited_on_white():
    im = Image.new("P", (3, 1))
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2])
    data = encode(im, "PNG", transparency=0)  # palette entry 0 fully transparent (a tRNS chunk)
    assert b"tRNS" in data
    out = decode_image(data)
    assert [out.image.getpixel((x, 0)) for x in range(3)] == [WHITE, RED, BLUE]


def test_palette_with_partial_alpha_trns():
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 6))
    im.putdata([0, 1])
    data = encode(im, "PNG", transparency=bytes([64, 255]))  # per-entry alpha
    got = [decode_image(data).image.getpixel((x, 0)) for x in range(2)]
    assert abs(got[0][0] - 191) <= 1 and got[1] == (0, 0, 0)


def test_rgb_with_trns_colour_key():
    im = Image.new("RGB", (2, 1), RED)
    im.putpixel((1, 0), GREEN)
    out = decode_image(encode(im, "PNG", transparency=GREEN))
    assert [out.image.getpixel((x, 0)) for x in range(2)] == [RED, WHITE]


def test_la_png():
    im = Image.new("LA", (3, 1))
    im.putdata([(0, 0), (0, 255), (100, 255)])
    out = decode_image(encode(im, "PNG"))
    assert out.mode == "LA"
    assert [out.image.getpixel((x, 0)) for x in range(3)] == [WHITE, (0, 0, 0), (100, 100, 100)]


def test_gif_transparency_on_white():
    im = Image.new("P", (2, 1))
    im.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    im.putdata([0, 1])
    out = decode_image(encode(im, "GIF", transparency=0))
    assert [out.image.getpixel((x, 0)) for x in range(2)] == [WHITE, BLUE]


def test_one_bit():
    im = Image.new("1", (2, 1))
    im.putpixel((1, 0), 1)
    out = decode_image(encode(im, "PNG"))
    assert out.mode == "1"
    assert [out.image.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]


def test_grayscale_jpeg(photo):
    grey = photo.convert("L")
    out = decode_image(encode(grey, "JPEG", quality=95))
    assert out.mode == "L"
    assert mad(out.image, grey.convert("RGB")) < 3.0


def test_lab_tiff(photo):
    lab = photo.convert("LAB")
    out = decode_image(encode(lab, "TIFF"))
    assert out.mode == "LAB"
    assert mad(out.image, lab.convert("RGB")) == 0.0
    assert mad(out.image, photo) < 4.0


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "LAB", "RGBX", "CMYK"])
def test_to_rgb_colour_spaces(photo, mode):
    assert mad(to_rgb(photo.convert(mode)), photo) < 4.0


def test_to_rgb_premultiplied_and_pa():
    rgba = Image.new("RGBA", (1, 1), (255, 0, 0, 0))
    assert to_rgb(rgba.convert("RGBa")).getpixel((0, 0)) == WHITE
    pa = Image.new("PA", (1, 1))
    pa.putpalette([0, 0, 255] * 256)
    assert to_rgb(pa).getpixel((0, 0)) == WHITE  # alpha 0
    assert to_rgb(Image.new("RGB", (1, 1), RED)).getpixel((0, 0)) == RED


def test_to_rgb_unsupported_mode_is_decode_error():
    with pytest.raises(DecodeError) as info:
        to_rgb(Image.new("La", (1, 1)))
    assert info.value.reason == "corrupt"


# -- containers, frames, compression ---------------------------------------------------------------


def frames(*colours) -> list[Image.Image]:
    return [Image.new("RGB", (32, 24), c) for c in colours]


def test_multipage_tiff_first_frame():
    first, *rest = frames(RED, GREEN, BLUE)
    out = decode_image(encode(first, "TIFF", save_all=True, append_images=rest))
    assert out.image.getpixel((5, 5)) == RED


def test_mpo_first_frame():
    first, *rest = frames(RED, BLUE)
    data = encode(first, "MPO", save_all=True, append_images=rest, quality=95)
    out = decode_image(data)
    assert out.format == "MPO"
    assert mad(out.image, first) < 3.0


def test_animated_gif_first_frame():
    first, *rest = frames(RED, GREEN, BLUE)
    out = decode_image(encode(first, "GIF", save_all=True, append_images=rest, duration=100, loop=0))
    assert out.image.getpixel((5, 5)) == RED


def test_animated_webp_first_frame():
    first, *rest = frames(RED, GREEN)
    out = decode_image(encode(first, "WEBP", save_all=True, append_images=rest, lossless=True))
    assert out.image.getpixel((5, 5)) == RED


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("TIFF", {"compression": "tiff_lzw"}),
        ("TIFF", {"compression": "tiff_adobe_deflate"}),
        ("TIFF", {"compression": "packbits"}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("PNG", {}),
    ],
    ids=["tiff-lzw", "tiff-deflate", "tiff-packbits", "webp-lossless", "bmp", "png"],
)
def test_lossless_formats_exact(photo, fmt, params):
    out = decode_image(encode(photo, fmt, **params))
    assert out.format == fmt
    assert (out.width, out.height) == photo.size
    assert mad(out.image, photo) == 0.0


def test_lossy_webp(photo):
    out = decode_image(encode(photo, "WEBP", quality=90))
    assert out.format == "WEBP" and mad(out.image, photo) < 6.0


def test_result_contract(photo):
    out = decode_image(encode(photo, "JPEG"))
    assert isinstance(out, DecodedImage)
    assert out.image.mode == "RGB" and out.format == "JPEG" and out.mode == "RGB"
    with pytest.raises(AttributeError):
        out.width = 1  # frozen


def test_concurrent_decodes_agree(photo):
    data = [encode(scene(200 + 8 * i, 150, seed=i), "JPEG") for i in range(8)]
    serial = [np.asarray(decode_image(d, min_size=(64, 64)).image) for d in data]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda d: np.asarray(decode_image(d, min_size=(64, 64)).image), data * 2))
    for i, arr in enumerate(parallel):
        np.testing.assert_array_equal(arr, serial[i % len(data)])


# -- EXIF orientation ------------------------------------------------------------------------------

# How a camera stores an upright picture for each orientation (PIL's ROTATE_90 is counter-clockwise):
# orientation 6 = "rotate 90 clockwise to display", so the sensor holds the upright picture turned
# 90 counter-clockwise; 8 is the opposite.
STORED = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation(orientation):
    upright = marked(160, 100)
    data = with_orientation(upright.transpose(STORED[orientation]), orientation, quality=95)
    out = decode_image(data)
    assert (out.width, out.height) == (160, 100)
    assert out.image.size == (160, 100)
    assert out.image.getpixel((5, 5)) == pytest.approx(RED, abs=8)  # red stays top-left
    assert out.image.getpixel((155, 95)) == pytest.approx(GREEN, abs=8)
    assert mad(out.image, upright) < 3.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillows_exif_transpose(orientation):
    data = with_orientation(marked(90, 60), orientation, quality=95)
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    out = decode_image(data)
    assert out.image.size == reference.size == (out.width, out.height)
    assert mad(out.image, reference) == 0.0


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotation_with_draft(orientation):
    upright = scene(1600, 1200, seed=3)
    data = with_orientation(upright.transpose(STORED[orientation]), orientation, quality=92)
    out = decode_image(data, min_size=(448, 448))
    assert (out.width, out.height) == (1600, 1200)
    w, h = out.image.size
    assert w >= 448 and h >= 448 and (w, h) != (1600, 1200)
    assert w * 3 == h * 4  # still landscape: rotated after reducing, not before
    assert mad(out.image, upright, (224, 168)) < 3.0


def test_draft_size_is_swapped_for_rotated_images():
    """min_size is upright (width, height); the stored JPEG is portrait, so draft must swap it.

    Upright 1600x1200 with min_size (200, 700): 1200 // 700 = 1, so no reduction is allowed. An
    unswapped draft would halve the stored 1200x1600 (1200 // 200 and 1600 // 700 are both >= 2)
    and leave an upright height of 600 < 700.
    """
    upright = scene(1600, 1200, seed=4)
    data = with_orientation(upright.transpose(STORED[6]), 6, quality=92)
    out = decode_image(data, min_size=(200, 700))
    assert out.image.size[1] >= 700 and out.image.size[0] >= 200
    assert out.image.size == (1600, 1200)


def test_tiff_orientation_tag():
    upright = marked(60, 40)
    data = encode(upright.transpose(STORED[6]), "TIFF", tiffinfo={274: 6})
    out = decode_image(data)
    assert out.image.size == (60, 40) and mad(out.image, upright) == 0.0


def _exif_orientation_entry(type_: int, count: int, value: bytes) -> bytes:
    """A big-endian EXIF block with one Orientation entry of the given TIFF type and count."""
    header = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12"  # one IFD entry: tag 0x0112
    return header + struct.pack(">HI", type_, count) + value + b"\x00" * 4


@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\x00\x00XX\x00*\x00\x00\x00\x08",  # unknown byte order
        b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff",  # entry count past the end
        _exif_orientation_entry(9, 1, b"\x00\x06\x00\x00"),  # SLONG 393216: out of range
    ],
    ids=["byte-order", "short", "out-of-range"],
)
def test_unreadable_exif_is_ignored(photo, exif):
    data = encode(photo, "JPEG", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data"
        out = decode_image(data, min_size=(200, 200))  # the draft path reads EXIF too
    assert out.image.size == photo.size and (out.width, out.height) == photo.size


def test_exif_parser_crash_is_ignored(photo, monkeypatch):
    def broken_getexif(self):
        raise SyntaxError("hostile EXIF")

    monkeypatch.setattr(Image.Image, "getexif", broken_getexif)
    out = decode_image(with_orientation(photo, 6), min_size=(200, 200))
    assert out.image.size == photo.size


# -- reduced decoding ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_reduced_decode_is_close_to_full_decode(fmt):
    """Draft (JPEG) + reduce gives the model nearly the same 224x224 input as a full decode.

    Bound: mean absolute difference < 1.5 grey levels of 255 after both are resized to 224x224.
    """
    big = scene(2400, 1800, seed=5)
    data = encode(big, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    full = decode_image(data)
    reduced = decode_image(data, min_size=(448, 448))
    assert full.image.size == (2400, 1800)
    w, h = reduced.image.size
    assert 448 <= w < 1200 and 448 <= h < 900  # reduced by at least 2, both sides kept >= 448
    assert (reduced.width, reduced.height) == (2400, 1800)
    assert mad(full.image, reduced.image, (224, 224)) < 1.5


def test_small_images_are_not_reduced(photo):
    out = decode_image(encode(photo, "JPEG"), min_size=(448, 448))
    assert out.image.size == photo.size


def test_reduction_is_limited_by_the_short_side():
    """A long thin image (a scanned label strip): 700 // 448 = 1, so it must not be reduced."""
    data = encode(scene(3000, 700, seed=6), "JPEG")
    assert decode_image(data, min_size=(448, 448)).image.size == (3000, 700)
    assert decode_image(data, min_size=(448, 300)).image.size == (1500, 350)


def test_synthetic_jpeg_helper_decodes_as_designed():
    im = Image.open(io.BytesIO(synthetic_jpeg(64, 48)))
    arr = np.asarray(im.convert("RGB"))
    assert im.size == (64, 48)
    assert list(arr[0, ::8, 0]) == [192, 128] * 4


_SHEET_SCRIPT = """
import json, resource, sys, warnings
import numpy as np
from PIL import Image
from indexer.media.decode import decode_image
warnings.simplefilter("error", Image.DecompressionBombWarning)
data = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = decode_image(data, min_size=(448, 448), name="sheet.jpg")
print(json.dumps({
    "size": out.image.size, "original": [out.width, out.height],
    "mean": float(np.asarray(out.image).mean()),
    "peak_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
}))
"""


def test_herbarium_sheet_20000_by_15000_jpeg(tmp_path):
    """A 300 MP JPEG: accepted by default, decoded at 1/8 scale, never allocated at full size.

    Runs in a fresh process to measure its peak memory: a full-size decode needs 900 MB of RGB,
    the 1/8 draft 14 MB.
    """
    path = tmp_path / "sheet.jpg"
    path.write_bytes(synthetic_jpeg(20_000, 15_000))
    proc = subprocess.run(
        [sys.executable, "-c", _SHEET_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["original"] == [20_000, 15_000]
    w, h = result["size"]
    assert w >= 448 and h >= 448
    assert h < 2 * 448 and w < 2 * 448 * 4 // 3  # reduced to within 2x of min_size
    assert result["mean"] == pytest.approx(160, abs=1)  # the 192/128 stripes, averaged
    assert result["peak_growth_mb"] < 150


def test_jpeg_uses_dct_scaling_before_reduce():
    """3000x3000, min 448: draft decodes at 1/4 (750 px; 1/8 would be 375 < 448), and 750 // 448 = 1
    leaves nothing to reduce. Reducing a full decode instead would give 500 px."""
    big = marked(3000, 3000)
    assert decode_image(encode(big, "JPEG"), min_size=(448, 448)).image.size == (750, 750)
    assert decode_image(encode(big, "TIFF"), min_size=(448, 448)).image.size == (500, 500)


# -- the real camera-trap variants (../shared/data), when present ----------------------------------


@pytest.fixture
def cameratrap(shared_data):
    folder = shared_data / "images-cameratrap-speciesnet"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    return folder


@pytest.fixture
def elephants(cameratrap) -> DecodedImage:
    return decode_image((cameratrap / "african_elephants.jpg").read_bytes(), min_size=(448, 448))


def test_real_truncated_file_fails_as_truncated(cameratrap):
    """Decision: a truncated file is a failure (recorded, not indexed), never a half-grey image."""
    with pytest.raises(DecodeError) as info:
        decode_image((cameratrap / "african_elephants_truncated_file.jpg").read_bytes())
    assert info.value.reason == "truncated"


def test_real_exif_variant_matches_the_original(cameratrap, elephants):
    data = (cameratrap / "african_elephants_with_exif_orientation.jpg").read_bytes()
    assert Image.open(io.BytesIO(data)).size == (1536, 2048)  # stored portrait, orientation 6
    out = decode_image(data, min_size=(448, 448))
    assert (out.width, out.height) == (elephants.width, elephants.height) == (2048, 1536)
    assert mad(out.image, elephants.image, (256, 192)) < 3.0  # measured 0.8; unrotated: ~50


def test_real_cmyk_variant(cameratrap, elephants):
    out = decode_image((cameratrap / "african_elephants_cmyk.jpg").read_bytes(), min_size=(448, 448))
    assert out.mode == "CMYK"
    assert mad(out.image, elephants.image, (256, 192)) < 3.0  # measured 0.6


def test_real_grayscale_variant(cameratrap, elephants):
    out = decode_image((cameratrap / "african_elephants_bw.jpg").read_bytes(), min_size=(448, 448))
    assert out.mode == "L" and out.image.mode == "RGB"
    assert mad(out.image, elephants.image.convert("L"), (256, 192)) < 3.0  # measured 0.5


def test_real_images_all_decode(shared_data):
    files = [
        p
        for folder in ("images-cameratrap-speciesnet", "images-cats-packaged", "images-fish-fishnet-egu2017")
        for p in sorted((shared_data / folder).rglob("*"))[:40]
        if p.suffix.lower() in {".jpg", ".jpeg", ".png"} and "truncated" not in p.name
    ]
    if not files:
        pytest.skip("no real images present")
    for path in files:
        out = decode_image(path.read_bytes(), min_size=(448, 448), name=str(path))
        assert out.image.mode == "RGB" and min(out.image.size) >= min(448, out.width, out.height)
