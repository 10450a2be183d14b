"""Batched JPEG decoding with resize on the device (the GPU path), run here on the CPU: the same
code, torchvision's batch decoder on ``device="cpu"``. Its output matches the CPU preprocessing
(decode_image + ImageTransform); what the JPEG decoder cannot take (PNG, CMYK, EXIF-rotated, broken
files) goes to the CPU decoder; files neither can read are failures with a reason, never exceptions.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bioclip.preprocess import PreprocessConfig, make_transform
from indexer.media.batch_decode import BatchDecoder, gpu_decodable
from indexer.media.decode import decode_image


def scene(width: int, height: int, seed: int) -> Image.Image:
    """A smooth picture with structure (gradients and a disc), so resizing differences stay small."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    img = np.stack([base[c] + 50 * np.sin(xx / (20 + 7 * c)) + 40 * np.cos(yy / 25) for c in range(3)], axis=-1)
    disc = (xx - width * 0.6) ** 2 + (yy - height * 0.4) ** 2 < (min(width, height) / 4) ** 2
    img[disc] = rng.uniform(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def jpeg(im: Image.Image, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=92, **params)
    return buf.getvalue()


def rotated_jpeg(im: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    return jpeg(im, exif=exif.tobytes())


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {
        "rgb": jpeg(scene(640, 480, 1)),
        "portrait": jpeg(scene(300, 500, 2)),
        "grey": jpeg(scene(400, 400, 3).convert("L")),
        "progressive": jpeg(scene(500, 350, 4), progressive=True),
        "rotated": rotated_jpeg(scene(480, 320, 5)),
        "cmyk": jpeg(scene(320, 320, 6).convert("CMYK")),
        "png": png(scene(256, 300, 7)),
        "broken": jpeg(scene(640, 480, 8))[:600],
        "text": b"<html>not an image</html>",
    }


def reference(data: bytes, cfg: PreprocessConfig) -> torch.Tensor:
    return make_transform(cfg)(decode_image(data, min_size=cfg.draft_size).image)


@pytest.mark.parametrize("mode, interpolation", [("squash", "bilinear"), ("crop", "bicubic")])
def test_batch_matches_cpu_preprocessing_and_routes_by_format(files, mode, interpolation):
    cfg = PreprocessConfig(size=96, mode=mode, interpolation=interpolation)
    names = list(files)
    batch = BatchDecoder(cfg, device="cpu").decode([files[n] for n in names])
    decoded = [names[i] for i in batch.rows]
    assert decoded == ["rgb", "portrait", "grey", "progressive", "rotated", "cmyk", "png"]
    assert batch.on_gpu == 4  # rgb, portrait, grey, progressive on the JPEG decoder; the rest on the CPU
    assert {names[i]: e.reason for i, e in batch.failures.items()} == {"broken": "truncated", "text": "not-an-image"}
    assert batch.tensors.shape == (7, 3, 96, 96) and batch.tensors.dtype == torch.float32
    for row, name in enumerate(decoded):
        ref = reference(files[name], cfg)
        diff = (batch.tensors[row] - ref).abs()
        # same pixels, resized by another implementation for crop (tensor vs PIL): small differences
        assert float(diff.mean()) < (0.02 if mode == "squash" else 0.06), name
    # the rotated photo is upright: its reference is portrait-shaped content, not the stored landscape
    rotated_row = decoded.index("rotated")
    stored = make_transform(cfg)(Image.open(io.BytesIO(files["rotated"])).convert("RGB"))
    assert float((batch.tensors[rotated_row] - stored).abs().mean()) > 0.1


def test_cpu_only_mode_and_empty_batches(files):
    cfg = PreprocessConfig(size=64)
    both = BatchDecoder(cfg, device="cpu").decode([files["rgb"], files["png"]])
    cpu = BatchDecoder(cfg, device="cpu", gpu_jpeg=False).decode([files["rgb"], files["png"]])
    assert cpu.on_gpu == 0 and both.on_gpu == 1
    assert float((both.tensors - cpu.tensors).abs().mean()) < 0.02
    empty = BatchDecoder(cfg, device="cpu").decode([files["text"]])
    assert empty.tensors.shape == (0, 3, 64, 64) and list(empty.failures) == [0]


def test_one_bad_jpeg_does_not_cost_the_batch(files, monkeypatch):
    """A file that passes the header check but that the JPEG decoder rejects makes the batch call
    fail; the batch is retried one by one and only that file goes to the CPU decoder."""
    import torchvision.io

    real = torchvision.io.decode_jpeg
    calls = []

    def strict(data, *args, **kwargs):
        calls.append(len(data) if isinstance(data, list) else 1)
        items = data if isinstance(data, list) else [data]
        if any(bytes(t[-2:].tolist()) != b"\xff\xd9" for t in items):  # no end-of-image marker
            raise RuntimeError("nvjpeg: bitstream error")
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", strict)
    cut = files["portrait"][:-2]  # header intact, end marker missing (Pillow calls it truncated too)
    batch = BatchDecoder(PreprocessConfig(size=64), device="cpu").decode([files["rgb"], cut, files["grey"]])
    assert calls == [3, 1, 1, 1]  # the batch, then one by one
    assert batch.rows == [0, 2] and batch.on_gpu == 2
    assert {i: e.reason for i, e in batch.failures.items()} == {1: "truncated"}


def test_gpu_decodable_reads_headers_only(files):
    assert gpu_decodable(files["rgb"]) and gpu_decodable(files["grey"]) and gpu_decodable(files["progressive"])
    assert not gpu_decodable(files["rotated"]) and not gpu_decodable(files["cmyk"]) and not gpu_decodable(files["png"])
    assert not gpu_decodable(files["text"]) and not gpu_decodable(files["rgb"], max_pixels=1000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu(files):
    cfg = PreprocessConfig(size=96)
    batch = BatchDecoder(cfg, device="cuda").decode([files["rgb"], files["png"]])
    assert batch.tensors.device.type == "cuda" and batch.on_gpu == 1
    assert float((batch.tensors[0].cpu() - reference(files["rgb"], cfg)).abs().mean()) < 0.03
