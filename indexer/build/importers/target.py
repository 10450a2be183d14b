"""The collection an import writes into, with its declared model, under the writer lock.

Vectors carry no model: the user declares it (``--model``), or the files do (pybioclip's JSON names
its model). A new collection records that model as a build would (``ClipModel.describe()``: source,
revision, dimension, preprocessing), read from the model's files (:func:`bioclip.facts.model_facts`:
``open_clip_config.json`` of a model folder or Hugging Face snapshot) without importing torch or
open_clip, which an import does not otherwise need; only a model whose files cannot settle it (an
open_clip built-in with a pretrained tag, ...) is loaded for it. An existing collection is locked
first and its recorded model checked against the declared one from the model strings alone, before
anything is read. The dimension the vectors must have is the collection's.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from indexer.errors import ModelMismatchError, SourceError
from indexer.store import Collection, Writer, is_collection
from indexer.store.model import check_model_compatible

__all__ = ["DeclaredModel", "open_import_target"]


@dataclass(frozen=True)
class DeclaredModel:
    """The model the vectors were made with: a model string (``name``) and revision, the
    preprocessing to record for a new collection (None: the model's default), or an already loaded
    ``model`` (which then wins)."""

    name: str | None = None
    revision: str | None = None
    preprocess: str | None = None
    model: Any = None


def _source_of(name: str) -> str:
    from bioclip.registry import resolve_spec

    return resolve_spec(name).source


def _check_declared(name: str | None, declared: Iterable[tuple[str, str]]) -> str | None:
    """The model string to use: ``name``, or the one the files declare; ModelMismatchError when a file
    declares another model than ``name`` (or two files disagree)."""
    chosen = name
    for model, where in declared:
        if chosen is None:
            chosen = model
            continue
        if _source_of(model) != _source_of(chosen):
            raise ModelMismatchError(
                f"{where} says its embeddings were made with {model}, not {chosen}: embeddings of different "
                "models cannot be mixed (give the model the file names, or import it into another collection)"
            )
    return chosen


def open_import_target(
    path: str | os.PathLike, declared: DeclaredModel, from_files: Iterable[tuple[str, str]] = ()
) -> tuple[Collection, Writer]:
    """(collection, its writer) to import into at ``path``, created for the declared model if needed.

    ``from_files`` lists (model string, file) pairs the files themselves declare. Raises
    CollectionLockedError before any model loads if another writer holds the collection,
    ModelMismatchError when the declared model is not the collection's, SourceError when no model
    is declared for a new collection.
    """
    from_files = list(from_files)
    if is_collection(path):
        writer = Collection.open(path).writer()
        try:
            collection = writer.collection
            if declared.model is not None:
                from indexer.store.model import check_loaded_model

                check_loaded_model(collection, declared.model)
            else:
                check_model_compatible(collection, declared.name, declared.revision)
            recorded = collection.model.get("source") or ""
            for named, where in from_files:
                if _source_of(named) != recorded:
                    raise ModelMismatchError(
                        f"{where} says its embeddings were made with {named}, but {collection.path} holds "
                        f"embeddings of {collection.model.get('name') or recorded}: they cannot be mixed"
                    )
        except BaseException:
            writer.close()
            raise
        return collection, writer
    model = declared.model
    if model is None:
        name = _check_declared(declared.name, from_files)
        if name is None:
            raise SourceError(
                "which model made these embeddings? give --model (bioclip, bioclip-2, hf-hub:ORG/REPO, "
                "local-dir:PATH, ...): the collection records it and uses it for text and image queries",
                None,
            )
        from bioclip.facts import model_facts

        model = model_facts(name, revision=declared.revision, preprocess=declared.preprocess)
        if model is None:  # only loading it says what it is
            from bioclip import load_model

            model = load_model(
                name, device="cpu", precision="fp32", revision=declared.revision, preprocess=declared.preprocess
            )
    else:
        _check_declared(model.spec.source, from_files)
    collection = Collection.create(path, model.describe(), dimension=model.dimension)
    return collection, collection.writer()
