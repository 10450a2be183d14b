"""How a ``bioclip-serve`` process is set up: its collections, limits, keys, origins and threads.

One frozen :class:`ServeConfig` describes a server. It travels to uvicorn's worker processes as
JSON in the environment (``BIOCLIP_SERVE_CONFIG``), since each worker is a fresh interpreter that
builds its own app (:func:`indexer.serve.app.app_from_environment`). Unknown keys are rejected.

Defaults (documented in the README, "The HTTP API"): 20 MB per uploaded picture (60 megapixels),
``k`` up to 100 and ``offset + k`` up to 10,000, 1,000 characters of query text, 16 query terms,
32 filter conditions, 600 requests a minute per client and worker; API keys and CORS off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from indexer.errors import IndexerError

__all__ = [
    "ENV_CONFIG",
    "Limits",
    "ServeConfig",
    "ServeConfigError",
    "collection_name",
    "parse_collections",
    "read_api_keys",
    "key_digest",
    "default_threads",
]

log = logging.getLogger(__name__)

#: The environment variable that carries a :class:`ServeConfig` (JSON) to worker processes.
ENV_CONFIG = "BIOCLIP_SERVE_CONFIG"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ServeConfigError(IndexerError):
    """A server cannot be set up as asked (bad collection name, unreadable key file, ...)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. ``None`` turns a limit off."""

    max_upload_bytes: int = 20 * 1024 * 1024  # one uploaded picture
    max_upload_pixels: int = 60_000_000  # width x height from its header (decompression bombs)
    upload_formats: tuple[str, ...] | None = ("JPEG", "MPO", "PNG", "TIFF", "WEBP")  # None: any Pillow reads
    max_k: int = 100
    max_depth: int | None = 10_000  # offset + k
    max_text_chars: int = 1_000  # per text or taxon term
    max_terms: int = 16
    max_conditions: int = 32  # --where strings plus taxa
    max_thumbnail: int = 1280  # longest side of a thumbnail, pixels
    rate: str | None = "600/minute"  # per client (API key, else address) and worker; limits' notation

    @classmethod
    def local(cls) -> Limits:
        """The limits of a user's own background server: what ``bioclip-search`` accepts directly."""
        return cls(
            max_upload_bytes=512 * 1024 * 1024,
            max_upload_pixels=400_000_000,
            upload_formats=None,
            max_k=10_000,
            max_depth=None,
            max_text_chars=1_000_000,
            max_terms=10_000,
            max_conditions=10_000,
            rate=None,
        )

    @property
    def max_body_bytes(self) -> int:
        """Largest request body: a picture sent as base64 in JSON (4/3 of its bytes), plus room."""
        return self.max_upload_bytes * 4 // 3 + 256 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """Everything a server process needs; see the module docstring for the defaults."""

    collections: tuple[tuple[str, str], ...]  # (name, absolute path)
    device: str = "auto"
    threads: int = 1  # FAISS and torch threads per worker
    workers: int = 1
    limits: Limits = field(default_factory=Limits)
    api_key_file: str | None = None
    cors_origins: tuple[str, ...] = ()
    show_paths: bool = False  # put local paths (locations, sources) in answers: a private server only
    refresh_interval: float = 1.0  # seconds between looks for a newer generation
    idle_timeout: float | None = None  # stop after this many idle seconds (background servers)
    state_file: str | None = None  # a background server's record (removed when it stops)
    access_log: bool = True

    def __post_init__(self) -> None:
        if not self.collections:
            raise ServeConfigError("give at least one collection to serve")
        names = [n for n, _ in self.collections]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ServeConfigError(
                f"two collections are named {dup[0]!r}; name them apart with NAME=PATH (e.g. herbarium={dup[0]})"
            )
        for n in names:
            if not _NAME.match(n):
                raise ServeConfigError(
                    f"{n!r} cannot be a collection name in a URL: use letters, digits, '.', '_' and '-' (NAME=PATH)"
                )
        if self.threads < 1 or self.workers < 1:
            raise ServeConfigError("threads and workers must be at least 1")
        for origin in self.cors_origins:
            if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
                raise ServeConfigError(
                    f"--cors-origin {origin!r} is not an origin like https://portal.example.org (scheme and host, no path)"
                )

    # -- to and from the environment -----------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ServeConfigError(f"unknown server settings: {', '.join(sorted(unknown))}")
        limits = raw.pop("limits", None) or {}
        unknown = set(limits) - {f.name for f in fields(Limits)}
        if unknown:
            raise ServeConfigError(f"unknown limits: {', '.join(sorted(unknown))}")
        if limits.get("upload_formats") is not None:
            limits["upload_formats"] = tuple(limits["upload_formats"])
        raw["collections"] = tuple((str(n), str(p)) for n, p in raw["collections"])
        raw["cors_origins"] = tuple(raw.get("cors_origins") or ())
        return cls(limits=Limits(**limits), **raw)

    @classmethod
    def from_environment(cls) -> ServeConfig:
        text = os.environ.get(ENV_CONFIG)
        if not text:
            raise ServeConfigError(f"{ENV_CONFIG} is not set: start the server with bioclip-serve")
        return cls.from_json(text)

    def with_(self, **changes: Any) -> ServeConfig:
        return replace(self, **changes)


def collection_name(path: str | os.PathLike) -> str:
    """The name a collection is served under by default: its folder's name."""
    return Path(os.path.realpath(path)).name


def parse_collections(args: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``PATH`` or ``NAME=PATH`` arguments -> ((name, absolute path), ...)."""
    out = []
    for arg in args:
        name, sep, path = arg.partition("=")
        if not sep or os.path.exists(arg):
            name, path = collection_name(arg), arg
        out.append((name, os.path.realpath(path)))
    return tuple(out)


def read_api_keys(path: str | os.PathLike) -> frozenset[str]:
    """The digests (:func:`key_digest`) of the keys in ``path``: one key a line; blank lines and
    lines starting with ``#`` are skipped. A key file others may read is used, with a warning."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        mode = p.stat().st_mode
    except OSError as exc:
        raise ServeConfigError(f"cannot read the API key file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ServeConfigError(f"the API key file {p} is not UTF-8 text") from None
    if mode & 0o077:
        log.warning("the API key file %s can be read by other users (chmod 600 %s)", p, p)
    keys = [line.strip() for line in text.splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise ServeConfigError(f"the API key file {p} holds no key (one key a line)")
    short = [k for k in keys if len(k) < 16]
    if short:
        raise ServeConfigError(f"the API key file {p} has a key shorter than 16 characters; use long random keys")
    return frozenset(key_digest(k) for k in keys)


def key_digest(key: str) -> str:
    """What is kept of a key in memory and used to tell clients apart: its SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def default_threads(workers: int) -> int:
    """FAISS and torch threads per worker: the cores shared among the workers, at most 4.

    Requests run concurrently in each worker, so a few threads per worker keep the cores busy
    without oversubscribing them (single queries are fastest on one FAISS thread)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores // max(1, workers) // 2))
