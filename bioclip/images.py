"""Image files on a command line: expanded (folders, globs), read as pybioclip reads them, embedded in
batches with one failure per unreadable file.

Reading is pybioclip's: ``PIL.Image.open`` then ``convert("RGB")`` (no EXIF rotation, alpha dropped by
the conversion), so that the same weights give the same features. A file that cannot be read is a
failure (its path and why), never the end of the run.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import BioclipError

__all__ = ["IMAGE_SUFFIXES", "ImageInputError", "EmbeddedFiles", "expand_images", "read_image", "embed_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".mpo")


class ImageInputError(BioclipError):
    """An image argument names nothing (no such file, a folder without images, a glob matching none)."""


def expand_images(args: Sequence[str]) -> list[str]:
    """The image files named by ``args``, in order: a file as given; a folder, its image files
    (recursively, sorted, hidden ones left out) joined onto it as given; a glob that names no file, its
    matches (sorted). Raises ImageInputError naming what matched nothing."""
    out: list[str] = []
    for arg in args:
        if os.path.isfile(arg):
            out.append(arg)
        elif os.path.isdir(arg):
            found = sorted(
                os.path.join(root, f)
                for root, dirs, files in os.walk(arg)
                for f in files
                if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
                if not any(part.startswith(".") for part in os.path.relpath(root, arg).split(os.sep) if part != ".")
            )
            if not found:
                raise ImageInputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder {arg}")
            out += found
        elif glob.has_magic(arg):
            matches = sorted(p for p in glob.glob(arg, recursive=True) if os.path.isfile(p))
            if not matches:
                raise ImageInputError(f"no files match {arg}")
            out += matches
        else:
            raise ImageInputError(f"no such image file: {arg}")
    return out


def read_image(path: str) -> Any:
    """The image at ``path`` as RGB PIL, as pybioclip opens it; OSError/ValueError when unreadable."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


@dataclass
class EmbeddedFiles:
    """``files`` that were read and their ``features`` (n, d) float32, aligned; ``failures`` are
    (path, reason) of the others."""

    files: list[str]
    features: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)


def _read_all(paths: Sequence[str], failures: list[tuple[str, str]]) -> Iterator[tuple[str, Any]]:
    for path in paths:
        try:
            yield path, read_image(path)
        except Exception as exc:  # any unreadable file is one failure, never the end of the run
            failures.append((path, f"{type(exc).__name__}: {exc}"))


def embed_files(
    model: Any, paths: Sequence[str], *, batch_size: int = 10, normalize: bool = True, progress: Any = None
) -> EmbeddedFiles:
    """Embed the images at ``paths`` in batches of ``batch_size`` with ``model`` (its transform);
    ``normalize=False`` keeps the raw features (pybioclip's ``embed``). ``progress(n)`` is called
    after each batch with the number of files it took."""
    import torch

    failures: list[tuple[str, str]] = []
    files: list[str] = []
    parts: list[np.ndarray] = []
    batch: list[tuple[str, Any]] = []

    def flush() -> None:
        tensors = torch.stack([model.transform(img) for _, img in batch])
        parts.append(model.encode_image_tensors(tensors, normalize=normalize))
        files.extend(p for p, _ in batch)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for item in _read_all(paths, failures):
        batch.append(item)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    d = int(model.dimension)
    features = np.concatenate(parts) if parts else np.zeros((0, d), dtype=np.float32)
    return EmbeddedFiles(files, features, failures)
