"""Uploaded photos kept so that a search by photo can be shared as a link.

An uploaded photo's search is its embedding; the cache keeps that vector and a small preview of
the photo (for the page to show what is searched) under the photo's content key (the first 32 hex
digits of its SHA-256) in the collection's cache folder, ``COLLECTION/cache/queries/``. The URL
carries only the key (``?photo=KEY``): whoever opens it sees the same results, and only someone
who has the link can find the photo (the key is not guessable from the collection).

Limits: the folder is kept under ``max_bytes`` (oldest first out; ``BIOCLIP_SEARCH_PHOTO_CACHE_MB``,
default 200) and entries older than ``max_age_days`` are dropped (``BIOCLIP_SEARCH_PHOTO_DAYS``,
default 30; a link older than that says the photo is no longer kept). Like the thumbnails it is
derived data: deleting the folder loses nothing but the links. A process that may not write there
keeps the entries in memory (links then work only while the app runs).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.store.files import atomic_write_bytes

__all__ = ["PhotoCache", "CachedPhoto", "photo_key"]

log = logging.getLogger(__name__)

_KEY = re.compile(r"^[0-9a-f]{32}$")
PREVIEW_PX = 320


def photo_key(data: bytes) -> str:
    """The content key of a photo's bytes."""
    return hashlib.sha256(data).hexdigest()[:32]


@dataclass(frozen=True)
class CachedPhoto:
    key: str
    name: str
    vector: np.ndarray  # (1, d) float32
    preview: bytes | None  # JPEG
    created: float


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


class PhotoCache:
    """Photo vectors and previews under content keys, bounded in size and age (see the module)."""

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        max_bytes: int | None = None,
        max_age_days: float | None = None,
    ):
        self.folder = Path(folder)
        self.max_bytes = int(
            max_bytes if max_bytes is not None else _env_number("BIOCLIP_SEARCH_PHOTO_CACHE_MB", 200) * 1024 * 1024
        )
        self.max_age = 86400.0 * (
            max_age_days if max_age_days is not None else _env_number("BIOCLIP_SEARCH_PHOTO_DAYS", 30)
        )
        self._memory: dict[str, CachedPhoto] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_collection(cls, collection_path: str | os.PathLike, **kwargs) -> PhotoCache:
        return cls(Path(collection_path) / "cache" / "queries", **kwargs)

    # -- writing --------------------------------------------------------------------------

    def put(self, data: bytes, name: str, vector: np.ndarray) -> str:
        """Keep the photo ``data`` (its ``name`` and embedding ``vector``); returns its key."""
        key = photo_key(data)
        vec = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        entry = CachedPhoto(key, str(name or "photo"), vec, _preview(data), time.time())
        with self._lock:
            try:
                self._write(entry)
            except OSError as exc:  # a read-only collection: the link works while this process runs
                log.info("cannot keep the photo in %s (%s); keeping it in memory", self.folder, exc)
                self._memory[key] = entry
            self._prune()
        return key

    def _write(self, entry: CachedPhoto) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, entry.vector, allow_pickle=False)
        atomic_write_bytes(self.folder / f"{entry.key}.npy", buf.getvalue(), durable=False)
        if entry.preview is not None:
            atomic_write_bytes(self.folder / f"{entry.key}.jpg", entry.preview, durable=False)
        meta = {"name": entry.name, "created": entry.created, "dimension": int(entry.vector.shape[1])}
        # the sidecar last: an entry is there once its .json is
        atomic_write_bytes(self.folder / f"{entry.key}.json", json.dumps(meta).encode(), durable=False)

    # -- reading --------------------------------------------------------------------------

    def get(self, key: str) -> CachedPhoto | None:
        """The photo kept under ``key``; None when there is none, or it expired (then it goes)."""
        key = str(key or "").strip().lower()
        if not _KEY.match(key):
            return None
        now = time.time()
        with self._lock:
            mem = self._memory.get(key)
            if mem is not None:
                return mem if now - mem.created <= self.max_age else self._memory.pop(key) and None
            meta_path = self.folder / f"{key}.json"
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                vector = np.load(self.folder / f"{key}.npy", allow_pickle=False).astype(np.float32).reshape(1, -1)
            except (OSError, ValueError) as exc:
                if meta_path.exists():
                    log.warning("the kept photo %s cannot be read (%s)", key, exc)
                return None
            created = float(meta.get("created", 0))
            if now - created > self.max_age:
                self._remove(key)
                return None
            preview_path = self.folder / f"{key}.jpg"
            preview = preview_path.read_bytes() if preview_path.exists() else None
            return CachedPhoto(key, str(meta.get("name") or "photo"), vector, preview, created)

    # -- limits ---------------------------------------------------------------------------

    def _entries(self) -> list[tuple[float, str, int]]:
        """(created, key, bytes) of every entry on disk."""
        out: list[tuple[float, str, int]] = []
        if not self.folder.is_dir():
            return out
        for meta in self.folder.glob("*.json"):
            key = meta.stem
            if not _KEY.match(key):
                continue
            size = 0
            for suffix in (".json", ".npy", ".jpg"):
                try:
                    size += (self.folder / f"{key}{suffix}").stat().st_size
                except OSError:
                    pass
            try:
                created = float(json.loads(meta.read_text(encoding="utf-8")).get("created", 0))
            except (OSError, ValueError):
                created = 0.0
            out.append((created, key, size))
        return sorted(out)

    def _prune(self) -> None:
        now = time.time()
        entries = self._entries()
        total = sum(size for _, _, size in entries)
        for created, key, size in entries:  # oldest first
            if now - created > self.max_age or total > self.max_bytes:
                self._remove(key)
                total -= size
        for key in [k for k, e in self._memory.items() if now - e.created > self.max_age]:
            del self._memory[key]

    def _remove(self, key: str) -> None:
        for suffix in (".json", ".npy", ".jpg"):
            try:
                (self.folder / f"{key}{suffix}").unlink()
            except OSError:
                pass

    def size_bytes(self) -> int:
        return sum(size for _, _, size in self._entries())


def _preview(data: bytes) -> bytes | None:
    """A small JPEG of the photo (what the page shows as the searched photo)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            im.thumbnail((PREVIEW_PX, PREVIEW_PX))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            return buf.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
