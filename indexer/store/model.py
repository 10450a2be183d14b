"""The model a collection records, and loading it: what both the build and the search engine use.

A collection's manifest records its model (``ClipModel.describe()``: name, source, pretrained tag,
revision, dimension, preprocessing). Building into a collection with another model, or searching it
with one, would mix embeddings that cannot be compared, so every way in checks here first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from indexer.errors import ModelMismatchError

if TYPE_CHECKING:  # pragma: no cover
    from indexer.store.collection import Collection

__all__ = [
    "check_model_compatible",
    "check_loaded_model",
    "load_recorded_model",
    "load_collection_model",
    "open_collection_text_encoder",
]


def check_model_compatible(collection: Collection, model_name: str | None, revision: str | None = None) -> None:
    """Raise ModelMismatchError when ``model_name`` is not the model the collection was built with.

    Checked from the model string alone, before any weights are loaded. A revision, when given,
    must be the recorded commit (or a prefix of it).
    """
    if not model_name and not revision:
        return
    from bioclip.registry import resolve_spec

    recorded = collection.model
    spec = resolve_spec(model_name or str(recorded.get("source") or ""), revision=revision)
    same = spec.source == recorded.get("source") and (spec.pretrained or None) == (recorded.get("pretrained") or None)
    rec_rev = str(recorded.get("revision") or "")
    if spec.revision and not (rec_rev.startswith(spec.revision) or spec.revision == recorded.get("requested_revision")):
        same = False
    if not same:
        was = recorded.get("name") or recorded.get("source")
        raise ModelMismatchError(
            f"{collection.path} was built with model {was} ({recorded.get('source')}"
            f"{' @ ' + str(recorded.get('revision')) if recorded.get('revision') else ''}); "
            f"you asked for {model_name} ({spec.source}). Embeddings of different models cannot be mixed: "
            "omit --model to use the collection's model, or build into a new --out folder."
        )


def _recorded_spec(rec: dict) -> Any:
    from bioclip.registry import ModelSpec

    return ModelSpec(
        name=rec.get("name") or rec["source"],
        source=rec["source"],
        pretrained=rec.get("pretrained"),
        revision=rec.get("revision"),
    )


def load_recorded_model(rec: dict, *, device: str = "auto", precision: str = "auto"):
    """Load the model a collection records (its ``model`` entry): the same source, pretrained tag,
    revision and preprocessing."""
    from bioclip import load_model
    from bioclip.preprocess import PreprocessConfig

    spec = _recorded_spec(rec)
    preprocess = PreprocessConfig.from_dict(rec["preprocess"]) if rec.get("preprocess") else None
    return load_model(spec, device=device, precision=precision, preprocess=preprocess)


def load_collection_model(collection: Collection, *, device: str = "auto", precision: str = "auto"):
    """Load the model a collection was built with: same source, revision and preprocessing."""
    rec = collection.model
    model = load_recorded_model(rec, device=device, precision=precision)
    if model.dimension != collection.dimension:
        raise ModelMismatchError(
            f"model {rec.get('name') or rec['source']} gives {model.dimension}-d vectors but {collection.path} holds "
            f"{collection.dimension}-d vectors"
        )
    return model


def open_collection_text_encoder(collection: Collection) -> Any:
    """The collection model's exported text encoder (:mod:`bioclip.text_onnx`: text vectors without
    importing torch), or None where this machine has none for it (then load the model)."""
    from bioclip.hub import weights_identity
    from bioclip.text_onnx import enabled, open_text_encoder

    if not enabled():
        return None
    encoder = open_text_encoder(weights_identity(_recorded_spec(collection.model)))
    if encoder is not None and encoder.dimension != collection.dimension:
        return None
    return encoder


def check_loaded_model(collection: Collection, model: Any) -> None:
    """Raise ModelMismatchError when an already loaded ``model`` is not the collection's model."""
    rec = collection.model
    info = model.describe()
    if info.get("source") != rec.get("source") or model.dimension != collection.dimension:
        raise ModelMismatchError(
            f"{collection.path} was built with {rec.get('name') or rec.get('source')}, not {info.get('name')}"
        )
