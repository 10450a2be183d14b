"""The Tree-of-Life reference labels: BioCLIP's precomputed species text embeddings, found locally.

pybioclip predicts open-ended over every species of the Tree of Life with two files of the model's
training dataset on the Hugging Face hub (``imageomics/TreeOfLife-10M`` for BioCLIP,
``imageomics/TreeOfLife-200M`` for BioCLIP 2):

- ``embeddings/txt_emb_<model>.npy`` or ``embeddings/txt_emb_species.npy``: float32 of shape
  (d, N), one unit column per species;
- the ``.json`` of the same name: a list of N entries
  ``[[kingdom, phylum, class, order, family, genus, species_epithet], common_name]``, entry i naming
  column i (empty strings where a rank or the common name is unknown).

:func:`find_reference_labels` looks for them in a path the user gives (the ``.npy`` file, the folder
holding it, or a dataset snapshot folder with ``embeddings/`` inside) or in an existing Hugging Face
cache (``HF_HUB_CACHE``); it never downloads: a missing file is a
:class:`ReferenceLabelsNotFoundError` saying how to get it. :func:`load_reference_labels` reads them
(the matrix memory-mapped) and checks that they fit together and the model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import BioclipError

__all__ = [
    "TOL_DATASETS",
    "ReferenceLabels",
    "ReferenceLabelsNotFoundError",
    "find_reference_labels",
    "load_reference_labels",
    "dataset_for",
]

#: The dataset whose ``embeddings/`` hold each BioCLIP model's reference labels (as pybioclip 2.1).
TOL_DATASETS = {
    "hf-hub:imageomics/bioclip": "imageomics/TreeOfLife-10M",
    "hf-hub:imageomics/bioclip-2": "imageomics/TreeOfLife-200M",
    "hf-hub:imageomics/bioclip-2.5-vith14": "imageomics/TreeOfLife-200M",
}


class ReferenceLabelsNotFoundError(BioclipError):
    """The Tree-of-Life reference labels are not where they were looked for (the message says where
    it looked and how to get them)."""


@dataclass(frozen=True)
class ReferenceLabels:
    """The reference labels: ``embeddings`` (d, N) float32 (memory-mapped), ``names`` (N lists of the
    seven rank values, species as its epithet, empty strings as given), ``common_names`` (N strings),
    where they came from (``npy``, ``json``), the dataset and its revision when read from a cache."""

    embeddings: Any
    names: list[list[str]]
    common_names: list[str]
    npy: str
    json: str
    dataset: str | None = None
    revision: str | None = None

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[0])

    def __len__(self) -> int:
        return len(self.names)


def dataset_for(model_source: str) -> str | None:
    """The Tree-of-Life dataset of a model source, None for a model pybioclip has none for."""
    return TOL_DATASETS.get(model_source)


def _file_names(model_source: str) -> list[str]:
    short = model_source.rsplit("/", 1)[-1]
    return [f"txt_emb_{short}", "txt_emb_species"]


def how_to_get(model_source: str) -> str:
    dataset = dataset_for(model_source) or "imageomics/TreeOfLife-200M"
    return (
        "Get them once on a connected machine: `hf download "
        f"{dataset} --repo-type dataset --include 'embeddings/txt_emb_species.*'` (about 2.5 GB for BioCLIP 2), "
        "then copy that Hugging Face cache here and point HF_HUB_CACHE at it, or pass --reference-labels with "
        "the embeddings folder (or the .npy file; its .json beside it)."
    )


def _pair_in(folder: Path, stems: list[str]) -> tuple[Path, Path] | None:
    for base in (folder, folder / "embeddings"):
        for stem in stems:
            npy, js = base / f"{stem}.npy", base / f"{stem}.json"
            if npy.is_file() and js.is_file():
                return npy, js
    return None


def find_reference_labels(
    model_source: str, path: str | os.PathLike | None = None, *, cache_dir: str | None = None
) -> tuple[Path, Path, str | None, str | None]:
    """(npy, json, dataset, revision) of the reference labels for ``model_source``.

    ``path``: the ``.npy`` (its ``.json`` beside it), a folder holding both, or a snapshot folder with
    ``embeddings/``; without it, an existing Hugging Face cache (``cache_dir`` or ``HF_HUB_CACHE``) is
    searched for the model's dataset. Nothing is downloaded. Raises ReferenceLabelsNotFoundError.
    """
    stems = _file_names(model_source)
    if path is not None:
        p = Path(path).expanduser()
        if p.is_file():
            js = p.with_suffix(".json")
            if p.suffix != ".npy" or not js.is_file():
                raise ReferenceLabelsNotFoundError(
                    f"{p}: reference labels are a .npy file with its .json beside it ({js} is missing)"
                )
            return p, js, None, None
        found = _pair_in(p, stems) if p.is_dir() else None
        if found is None:
            raise ReferenceLabelsNotFoundError(
                f"no reference labels in {p} (looked for {', '.join(s + '.npy' for s in stems)} with their .json, "
                f"in it and in its embeddings/ folder). {how_to_get(model_source)}"
            )
        return found[0], found[1], None, None
    dataset = dataset_for(model_source)
    if dataset is None:
        raise ReferenceLabelsNotFoundError(
            f"there are no Tree-of-Life reference labels for {model_source} (pybioclip has them for "
            f"{', '.join(TOL_DATASETS)}): give --reference-labels with your own, or use --cls / --bins"
        )
    from .hub import hf_cache_dir

    cache = hf_cache_dir(cache_dir)
    snapshots = Path(cache) / ("datasets--" + dataset.replace("/", "--")) / "snapshots"
    refs = Path(cache) / ("datasets--" + dataset.replace("/", "--")) / "refs" / "main"
    candidates: list[Path] = []
    if refs.is_file():
        candidates.append(snapshots / refs.read_text(encoding="utf-8").strip())
    if snapshots.is_dir():
        candidates += sorted((p for p in snapshots.iterdir() if p not in candidates), key=lambda p: -p.stat().st_mtime)
    for snap in candidates:
        found = _pair_in(snap, stems)
        if found is not None:
            return found[0], found[1], dataset, snap.name
    raise ReferenceLabelsNotFoundError(
        f"the Tree-of-Life reference labels for {model_source} ({dataset}, embeddings/{stems[-1]}.npy and .json) "
        f"are not in the Hugging Face cache at {cache}, and are never downloaded without asking. "
        f"{how_to_get(model_source)}"
    )


def load_reference_labels(
    model_source: str,
    path: str | os.PathLike | None = None,
    *,
    dimension: int | None = None,
    cache_dir: str | None = None,
) -> ReferenceLabels:
    """Find and read the reference labels (see :func:`find_reference_labels`); checks that the matrix
    is (d, N) with d the model's ``dimension`` and N the number of names."""
    import numpy as np

    npy, js, dataset, revision = find_reference_labels(model_source, path, cache_dir=cache_dir)
    try:
        emb = np.load(npy, mmap_mode="r", allow_pickle=False)
        entries = json.loads(js.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReferenceLabelsNotFoundError(f"cannot read the reference labels {npy} / {js}: {exc}") from exc
    if not isinstance(entries, list) or not all(_entry_ok(e) for e in entries[:1000]):
        raise ReferenceLabelsNotFoundError(
            f"{js} is not a list of [[kingdom, phylum, class, order, family, genus, species], common_name] entries"
        )
    if emb.ndim != 2 or emb.shape[1] != len(entries):
        raise ReferenceLabelsNotFoundError(
            f"{npy} has shape {emb.shape}; expected (dimension, {len(entries)}) to match the {len(entries)} names in {js}"
        )
    if dimension is not None and emb.shape[0] != dimension:
        raise ReferenceLabelsNotFoundError(
            f"{npy} holds {emb.shape[0]}-d label embeddings, but the model gives {dimension}-d vectors: "
            "they are another model's reference labels"
        )
    names = [[str(v or "") for v in e[0]] for e in entries]
    common = [str(e[1] or "") for e in entries]
    return ReferenceLabels(emb, names, common, str(npy), str(js), dataset, revision)


def _entry_ok(entry: Any) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], list) and len(entry[0]) == 7
