"""The collection a build writes into, with the model it records, under the writer lock.

An existing collection is locked first, so that a second indexer is refused at once; its model is
checked against the one asked for from the model string alone, before torch is imported, and is
loaded only when there is something to encode (:class:`LazyModel`): a rebuild with nothing new
never imports torch. A new collection records the model it was created with, loaded at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from indexer.store import Collection, Writer, is_collection
from indexer.store.model import check_loaded_model, check_model_compatible, load_collection_model

__all__ = ["LazyModel", "ModelChoice", "open_target"]


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


class LazyModel:
    """The build's model, loaded on first call (the collection's recorded model, at the device
    and precision asked for), then the same object on every call."""

    def __init__(self, collection: Collection, choice: ModelChoice, model: Any = None):
        self._collection = collection
        self._choice = choice
        self._model = model

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def __call__(self) -> Any:
        if self._model is None:
            choice = self._choice
            self._model = load_collection_model(self._collection, device=choice.device, precision=choice.precision)
        return self._model


def open_target(path: str | os.PathLike, choice: ModelChoice) -> tuple[Collection, LazyModel, Writer]:
    """(collection, its model -- loaded when first called --, its writer) for building into
    ``path``, created if needed.

    Raises CollectionLockedError if another writer holds the collection and ModelMismatchError if
    it was built with another model, both before torch is imported.
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


def _open_or_create(path: str | os.PathLike, choice: ModelChoice) -> tuple[Collection, LazyModel]:
    model = choice.model
    if is_collection(path):
        collection = Collection.open(path)
        if model is not None:
            check_loaded_model(collection, model)
        else:
            check_model_compatible(collection, choice.name, choice.revision)
        return collection, LazyModel(collection, choice, model)
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
    return collection, LazyModel(collection, choice, model)
