"""bioclip: the model layer of bioclip-search (everything that touches the CLIP model).

Public API, re-exported here::

    from bioclip import load_model, Taxon, TextForm, ZeroShotClassifier
    model = load_model("bioclip")                 # hf-hub:imageomics/bioclip, squash preprocessing
    vectors = model.encode_images(pil_images)     # float32 (n, 512), rows L2-normalised

Importing ``bioclip`` is light: torch and open_clip are imported only when a name from
``bioclip.loading`` (``load_model``), ``bioclip.model`` (``ClipModel``) or ``bioclip.device`` (``pick_device``) is first
used, and numpy only for ``bioclip.zeroshot``. See docs/ARCHITECTURE.md for the module contracts.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import BioclipError, DeviceError, ModelNotAvailableError, ModelSpecError
from .preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, make_transform
from .registry import DEFAULT_MODEL, ModelSpec, list_models, register, resolve_spec
from .taxa import RANKS, Taxon, TextForm, taxon_prompt, taxon_text

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; the real imports are lazy
    from .device import pick_device
    from .loading import load_model
    from .model import ClipModel
    from .zeroshot import Prediction, ZeroShotClassifier, aggregate_to_rank, classify_images

#: Marks this ``bioclip`` as bioclip-search's model layer (pybioclip installs a package of the same
#: name; ``indexer`` checks for this before anything else, see indexer/_coexist.py).
__bioclip_search__ = True

# Names served lazily from their (heavy) modules on first access.
_LAZY = {
    "ClipModel": "model",
    "load_model": "loading",
    "pick_device": "device",
    "Prediction": "zeroshot",
    "ZeroShotClassifier": "zeroshot",
    "aggregate_to_rank": "zeroshot",
    "classify_images": "zeroshot",
}

__all__ = [
    # errors
    "BioclipError",
    "ModelSpecError",
    "ModelNotAvailableError",
    "DeviceError",
    # registry
    "DEFAULT_MODEL",
    "ModelSpec",
    "resolve_spec",
    "list_models",
    "register",
    # preprocessing
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PreprocessConfig",
    "make_transform",
    # taxa
    "RANKS",
    "Taxon",
    "TextForm",
    "taxon_text",
    "taxon_prompt",
    # model (lazy)
    "ClipModel",
    "load_model",
    "pick_device",
    # zero-shot (lazy)
    "Prediction",
    "ZeroShotClassifier",
    "aggregate_to_rank",
    "classify_images",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bioclip' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
