"""Batched JPEG decoding on a GPU, resized there; CPU decoding for everything else and as the fallback.

:class:`BatchDecoder` turns the bytes of a batch of image files into model input, a float32 tensor
(m, 3, size, size) on the decoder's device, normalised as :class:`bioclip.preprocess.PreprocessConfig`
says. Plain JPEGs (baseline or progressive, RGB or greyscale, upright: no EXIF rotation) are decoded
together by ``torchvision.io.decode_jpeg(list, device=...)`` (nvJPEG on CUDA: one call per batch);
everything else (PNG, TIFF, CMYK JPEGs, rotated photos, files nvJPEG rejects) goes through
:func:`indexer.media.decode.decode_image` on the CPU, with its reduced-size decoding of huge
images, and is moved to the device. Resizing runs on the device either way, image by image (sizes
differ), as the CPU preprocessing does for ``squash`` (an antialiased tensor resize) and with the
same shortest-side resize and centre crop for ``crop``.

A batch that nvJPEG refuses as a whole is retried image by image, so one bad file costs its own
CPU decode, not the batch's; a file neither path can read is a failure (a ``DecodeError`` with its
reason), never an exception. The same code runs with ``device="cpu"`` (torchvision's libjpeg-turbo
batch decode), which is how the tests exercise it on a machine without a GPU.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.errors import DecodeError
from indexer.media.decode import decode_image

__all__ = ["BatchDecoder", "DecodedBatch", "gpu_decodable", "jpeg_size"]

log = logging.getLogger(__name__)

_JPEG_SOI = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112


def gpu_decodable(data: bytes, max_pixels: int | None = None) -> bool:
    """Whether nvJPEG can decode ``data`` as it should look: a JPEG (read from its header only)
    in RGB/YCbCr or greyscale, with no EXIF rotation to apply, of at most ``max_pixels``."""
    return jpeg_size(data, max_pixels) is not None


def jpeg_size(data: bytes, max_pixels: int | None = None) -> tuple[int, int] | None:
    """(width, height) of ``data`` when :func:`gpu_decodable` holds for it (read from the header
    only), else None."""
    if not data.startswith(_JPEG_SOI):
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG" or im.mode not in ("RGB", "L"):
                return None
            if max_pixels is not None and im.width * im.height > max_pixels:
                return None
            if int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1) != 1:
                return None
            return im.width, im.height
    except Exception:  # an unreadable header: the CPU path says why
        return None


@dataclass
class DecodedBatch:
    """Model input for the images of a batch that decoded: ``tensors`` (m, 3, size, size) float32 on
    the device, ``rows`` the position in the input of each; ``failures`` the others by position;
    ``device_rows`` the positions the device's JPEG decoder decoded (the rest of ``rows`` went
    through the CPU decoder)."""

    tensors: Any
    rows: list[int]
    failures: dict[int, DecodeError] = field(default_factory=dict)
    device_rows: list[int] = field(default_factory=list)

    @property
    def on_gpu(self) -> int:
        """How many images the device's JPEG decoder decoded."""
        return len(self.device_rows)


class BatchDecoder:
    """Decode and preprocess batches of image files on ``device`` (``"cuda"``, ``"cuda:1"``, ``"cpu"``).

    ``gpu_jpeg=False`` sends every file through the CPU decoder (the fallback path alone, for
    comparisons). ``max_pixels`` is the CPU decoder's bomb limit; the device decoder gets only
    files whose header is within it too.
    """

    def __init__(self, config: Any, device: str = "cuda", *, gpu_jpeg: bool = True, max_pixels: int | None = None):
        import torch

        from indexer.media.decode import DEFAULT_MAX_PIXELS

        self.config = config
        self.device = torch.device(device)
        self.gpu_jpeg = gpu_jpeg
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        self._mean = torch.tensor(config.mean, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(config.std, device=self.device).view(3, 1, 1)

    def decode(self, datas: Sequence[bytes]) -> DecodedBatch:
        """Model input for every file of ``datas`` that decodes; the others as failures."""
        import torch

        images: dict[int, Any] = {}
        failures: dict[int, DecodeError] = {}
        jpeg = [i for i, data in enumerate(datas) if self.gpu_jpeg and gpu_decodable(data, self.max_pixels)]
        self._decode_jpegs(datas, jpeg, images)
        device_rows = sorted(images)
        for i in range(len(datas)):
            if i in images:
                continue
            try:
                images[i] = self._decode_cpu(datas[i])
            except DecodeError as exc:
                failures[i] = exc
        rows = sorted(images)
        if rows:
            tensors = torch.stack([self._preprocess(images[i]) for i in rows])
        else:
            size = self.config.size
            tensors = torch.empty((0, 3, size, size), device=self.device)
        return DecodedBatch(tensors, rows, failures, device_rows)

    def _decode_jpegs(self, datas: Sequence[bytes], rows: list[int], out: dict[int, Any]) -> None:
        """Decode ``rows`` of ``datas`` with torchvision in one call (image by image if the batch
        fails) into ``out``; what fails here is left for the CPU path."""
        if not rows:
            return
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        encoded = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in rows]
        try:
            decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError as exc:
            log.debug("batch JPEG decode failed (%s); decoding one by one", exc)
            decoded = []
            for one in encoded:
                try:
                    decoded.append(decode_jpeg(one, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    decoded.append(None)
        for i, image in zip(rows, decoded):
            if image is not None:
                out[i] = image

    def _decode_cpu(self, data: bytes) -> Any:
        import torch

        cfg = self.config
        decoded = decode_image(data, max_pixels=self.max_pixels, min_size=cfg.draft_size)
        arr = np.asarray(decoded.image, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).to(self.device, non_blocking=True)

    def _preprocess(self, image: Any) -> Any:
        """uint8 (3, h, w) on the device -> normalised float32 (3, size, size), as the CPU transform."""
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        cfg = self.config
        interpolation = InterpolationMode(cfg.interpolation)
        x = image.float() / 255.0
        if cfg.mode == "squash":
            x = TF.resize(x, [cfg.size, cfg.size], interpolation=interpolation, antialias=True)
        else:
            x = TF.resize(x, cfg.size, interpolation=interpolation, antialias=True)
            x = TF.center_crop(x, [cfg.size, cfg.size])
        if interpolation == InterpolationMode.BICUBIC:
            x = x.clamp_(0.0, 1.0)
        return (x - self._mean) / self._std
