"""The on-disk collection: a directory that describes itself and survives any crash.

Layout (see docs/ARCHITECTURE.md)::

    COLLECTION/
      collection.json                  format version, model, dimension, preprocessing (written once)
      generations/gen-NNNNNNNN.json    one published state each; the newest complete one is current
      segments/seg-NNNNNNNN.parquet    metadata rows of one commit, ids contiguous within the file
      segments/seg-NNNNNNNN.f16.npy    their vectors, float16 (n, d), same order
      segments/del-NNNNNNNN.parquet    ids retired by one commit
      segments/fail-NNNNNNNN.parquet   failures recorded by one commit
      index/...                        ANN index files (derived data, rebuildable from the vectors)
      metadata/served-...duckdb        a large generation's served metadata, persisted by the first
                                       search process that loaded it (derived data, deletable)
      writer.lock                      flock held by the one writing process

:class:`Collection` opens (checking the format version) or creates the directory and lists its
generations; :class:`~indexer.store.snapshot.Snapshot` reads one generation;
:class:`~indexer.store.writer.Writer` (from :meth:`Collection.writer`, under the writer lock) adds
to it. Readers never block and never take locks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from indexer._version import __version__
from indexer.errors import CollectionError, CollectionNotFoundError, FormatVersionError
from indexer.store.files import atomic_write_json, disk_full_error, is_out_of_space
from indexer.store.generations import (
    FORMAT_VERSION,
    Generation,
    generation_file,
    parse_generation_file,
    utc_stamp,
)
from indexer.store.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from indexer.store.writer import Writer

__all__ = ["Collection", "is_collection", "MANIFEST"]

MANIFEST = "collection.json"


def is_collection(path: str | os.PathLike) -> bool:
    return (Path(path) / MANIFEST).is_file()


class Collection:
    """A collection directory. Cheap to construct; reading state goes through ``snapshot()``."""

    def __init__(self, path: str | os.PathLike, manifest: dict):
        self.path = Path(path).resolve()
        self.manifest = manifest

    # -- opening and creating -------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike) -> Collection:
        """Open an existing collection; raise a named error if it is missing, damaged or too new."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            if path.exists():
                raise CollectionNotFoundError(f"{path} is not a bioclip-search collection (no {MANIFEST})")
            raise CollectionNotFoundError(f"collection not found: {path}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CollectionError(f"cannot read {manifest_path}: {exc}") from exc
        version = manifest.get("format_version")
        if not isinstance(version, int):
            raise CollectionError(f"{manifest_path} has no format_version")
        if version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{path} was written by a newer bioclip-search (collection format {version}; "
                f"this version reads format {FORMAT_VERSION}): upgrade bioclip-search to open it"
            )
        return cls(path, manifest)

    @classmethod
    def create(cls, path: str | os.PathLike, model: dict, *, dimension: int) -> Collection:
        """Create an empty collection for ``model`` (a ``ClipModel.describe()`` dict)."""
        path = Path(path)
        if (path / MANIFEST).exists():
            raise CollectionError(f"a collection already exists at {path}")
        if path.exists() and any(p for p in path.iterdir() if not p.name.startswith(".")):
            raise CollectionError(f"{path} exists and is not empty; choose a new folder for the collection")
        manifest = {
            "format_version": FORMAT_VERSION,
            "created": utc_stamp(),
            "created_by": f"bioclip-search {__version__}",
            "model": model,
            "dimension": int(dimension),
            "vector_dtype": "float16",
            "metric": "inner_product",
        }
        try:
            for sub in ("generations", "segments", "index"):
                (path / sub).mkdir(parents=True, exist_ok=True)
            atomic_write_json(path / MANIFEST, manifest)
        except OSError as exc:
            if is_out_of_space(exc):
                raise disk_full_error(path, 64 << 10, "creating the collection") from None
            raise
        return cls(path, manifest)

    # -- properties ---------------------------------------------------------------------

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def model(self) -> dict:
        return dict(self.manifest["model"])

    def file(self, name: str) -> Path:
        return self.path / name

    # -- generations --------------------------------------------------------------------

    def generation_numbers(self) -> list[int]:
        try:
            names = os.listdir(self.path / "generations")
        except FileNotFoundError:
            return []
        return sorted(n for n in map(parse_generation_file, names) if n is not None)

    def latest_generation_number(self) -> int:
        nums = self.generation_numbers()
        return nums[-1] if nums else 0

    def read_generation(self, number: int) -> Generation:
        if number == 0:
            return Generation.empty()
        p = self.path / generation_file(number)
        try:
            return Generation.from_dict(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise CollectionError(f"cannot read {p}: {exc}") from exc

    def latest_generation(self) -> Generation:
        return self.read_generation(self.latest_generation_number())

    def snapshot(self, number: int | None = None) -> Snapshot:
        gen = self.read_generation(self.latest_generation_number() if number is None else number)
        return Snapshot(self, gen)

    # -- writing ------------------------------------------------------------------------

    def writer(self) -> Writer:
        """Take the writer lock and return a Writer (a context manager that releases it)."""
        from indexer.store.writer import Writer

        return Writer(self)
