"""The collection a build writes into, with the model it records, under the writer lock.

An existing collection is locked before its model loads (loading can take a while), so that a
second indexer is refused at once; its model is checked against the one asked for from the model
string alone, before any weights load. A new collection records the model it was created with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from indexer.store import Collection, Writer, is_collection
from indexer.store.model import check_loaded_model, check_model_compatible, load_collection_model

__all__ = ["ModelChoice", "open_target"]


@dataclass(frozen=True)
class ModelChoice:
    """The model a build was asked for: a model string (None: the collection's, or ``bioclip`` for a
    new collection), a revision, the device and precision, the preprocessing of a new collection,
    or an already loaded ``model`` (which then wins)."""

    name: str | None = None
    revision: str | None = None
    device: str = "auto"
    precision: str = "auto"
    preprocess: str | None = None
    model: Any = None


def open_target(path: str | os.PathLike, choice: ModelChoice) -> tuple[Collection, Any, Writer]:
    """(collection, loaded model, its writer) for building into ``path``, created if needed.

    Raises CollectionLockedError before the model loads if another writer holds the collection,
    ModelMismatchError if it was built with another model.
    """
    early = Collection.open(path).writer() if is_collection(path) else None
    try:
        collection, model = _open_or_create(path, choice)
        writer = early if early is not None else collection.writer()
    except BaseException:
        if early is not None:
            early.close()
        raise
    return collection, model, writer


def _open_or_create(path: str | os.PathLike, choice: ModelChoice) -> tuple[Collection, Any]:
    model = choice.model
    if is_collection(path):
        collection = Collection.open(path)
        if model is not None:
            check_loaded_model(collection, model)
        else:
            check_model_compatible(collection, choice.name, choice.revision)
            model = load_collection_model(collection, device=choice.device, precision=choice.precision)
        return collection, model
    if model is None:
        from bioclip import load_model

        model = load_model(
            choice.name or "bioclip",
            device=choice.device,
            precision=choice.precision,
            preprocess=choice.preprocess,
            revision=choice.revision,
        )
    collection = Collection.create(path, model.describe(), dimension=model.dimension)
    return collection, model
