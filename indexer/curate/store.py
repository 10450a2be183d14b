"""The curation data kept with a collection, in ``COLLECTION/curation/``, never in the source data.

::

    curation/curation.json          what the data covers: generation, segments, retirements seen,
                                    model, neighbours per image, the taxa scored, the state file
    curation/state-NNNNNNNN.npz     per image (sorted ids): fingerprint, k neighbours and cosines,
                                    top-5 zero-shot taxa and probabilities per rank, the largest
                                    cosine to any label, optional Tree-of-Life top-5
    curation/text-<digest>.npy/.json  the text embeddings of the collection's taxa (one model,
                                    revision, text form and template set per digest), grown as
                                    taxa are added
    curation/decisions.json         the curators' accept / reject decisions
    curation/curate.lock            flock of the one process computing or deciding

Every file is written with :mod:`indexer.store.files` (temporary name, fsync, rename); the manifest
is written last and names the state file, so a reader sees one complete state or the previous one.
Everything but ``decisions.json`` is derived: delete the folder (or run ``curate --full``) and it is
recomputed. The collection's writer never touches this folder.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import CurationError
from indexer.store import Collection
from indexer.store.files import atomic_path, atomic_write_json

__all__ = ["CURATION_DIR", "FORMAT", "CurationState", "CurationStore"]

log = logging.getLogger(__name__)

CURATION_DIR = "curation"
FORMAT = 1
MANIFEST = "curation.json"
#: The arrays of a state file and their dtypes.
ARRAYS = {
    "ids": np.int64,
    "fp": np.int64,
    "nbr_ids": np.int64,
    "nbr_sc": np.float32,
    "zs_idx": np.int32,
    "zs_p": np.float32,
    "label_cos": np.float32,
    "ref_idx": np.int32,
    "ref_p": np.float32,
}


@dataclass
class CurationState:
    """One computed state: ``manifest`` (see the module docstring) and the per-image arrays, row i
    of every array describing ``ids[i]`` (sorted)."""

    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ids(self) -> np.ndarray:
        return self.arrays["ids"]

    @property
    def generation(self) -> int:
        return int(self.manifest.get("generation", 0))

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ``ids`` (-1 where an id has no row)."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        ok = (self.ids[pos] == ids) if len(self.ids) else np.zeros(ids.shape, dtype=bool)
        return np.where(ok, pos, -1)


class CurationStore:
    """The ``curation/`` folder of one collection."""

    def __init__(self, collection: Collection):
        self.collection = collection
        self.path = Path(collection.path) / CURATION_DIR

    # -- state -----------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any] | None:
        p = self.path / MANIFEST
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CurationError(f"{p} cannot be read ({exc}); delete the curation folder to recompute it") from exc
        if int(data.get("format", 0)) > FORMAT:
            raise CurationError(f"{p} was written by a newer bioclip-search (format {data.get('format')})")
        return data

    def load(self) -> CurationState | None:
        """The current state, or None when curation was never computed for this collection."""
        manifest = self.manifest()
        if manifest is None:
            return None
        p = self.path / manifest["state"]
        try:
            with np.load(p, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except (OSError, ValueError, KeyError) as exc:
            raise CurationError(f"{p} cannot be read ({exc}); run `bioclip-index curate --full` to recompute") from exc
        return CurationState(manifest, arrays)

    def save(self, state: CurationState) -> None:
        """Write the state file, then the manifest naming it, then remove the older state files."""
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"state-{state.generation:08d}.npz"
        arrays = {k: np.ascontiguousarray(v, dtype=ARRAYS.get(k, v.dtype)) for k, v in state.arrays.items()}
        with atomic_path(self.path / name) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]
        state.manifest = {**state.manifest, "format": FORMAT, "state": name}
        atomic_write_json(self.path / MANIFEST, state.manifest)
        for old in self.path.glob("state-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)

    # -- text embeddings of taxa --------------------------------------------------------------

    def text_cache(self, digest: str) -> dict[str, np.ndarray]:
        """label text -> its embedding, for one model and text recipe (``digest``)."""
        npy, js = self.path / f"text-{digest}.npy", self.path / f"text-{digest}.json"
        if not (npy.is_file() and js.is_file()):
            return {}
        try:
            texts = json.loads(js.read_text(encoding="utf-8"))
            vecs = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable text cache %s (%s): it is recomputed", npy, exc)
            return {}
        if len(texts) != len(vecs):
            return {}
        return dict(zip(texts, vecs))

    def save_text_cache(self, digest: str, cache: dict[str, np.ndarray]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        texts = sorted(cache)
        with atomic_path(self.path / f"text-{digest}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, np.stack([cache[t] for t in texts]).astype(np.float32))
        atomic_write_json(self.path / f"text-{digest}.json", texts)

    # -- the lock --------------------------------------------------------------------------------

    @contextmanager
    def locked(self, *, wait: bool = False):
        """Hold ``curation/curate.lock`` (one process computing or recording decisions at a time)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "curate.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise CurationError(
                        f"{self.path}: another process is computing curation data for this collection; "
                        "wait for it to finish"
                    ) from None
                raise
            yield
        finally:
            os.close(fd)
