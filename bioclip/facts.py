"""What a model is, read from its files alone: what a collection records about it, without torch.

:func:`model_facts` answers, for a model folder (``local-dir:PATH``) or a Hugging Face snapshot
(``hf-hub:ORG/REPO[@REV]``, the registered ``bioclip`` and ``bioclip-2`` included), exactly what
:meth:`bioclip.ClipModel.describe` records for that model loaded on the CPU in fp32: name, source,
revision (the snapshot's commit), architecture, dimension, context length and preprocessing. It
reads ``open_clip_config.json`` as open_clip reads it and names the architecture from open_clip's
own built-in config files (read as files: nothing of open_clip or torch is imported), and it checks
for the weights file as :func:`bioclip.load_model` does, so a missing model is the same error.

For what the files alone cannot settle for certain (an open_clip built-in with a pretrained tag or
a checkpoint file, random weights, timm or Hugging Face towers, CoCa, a config open_clip would read
differently) it returns None: load the model then. This module does not import torch or open_clip.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hub import file_identity, hf_cache_dir, hf_offline, read_model_folder, snapshot
from .preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, choose_preprocess
from .registry import ModelSpec, resolve_spec

__all__ = ["ModelFacts", "model_facts", "architecture_name", "builtin_model_configs"]

#: open_clip's preprocessing defaults (``open_clip.transform.PreprocessCfg``) under a model's own
#: ``preprocess_cfg``: the keys it keeps, and the values where the config says nothing.
_OC_PREPROCESS_DEFAULTS: dict[str, Any] = {
    "size": 224,
    "mode": "RGB",
    "mean": OPENAI_MEAN,
    "std": OPENAI_STD,
    "interpolation": "bicubic",
    "resize_mode": "shortest",
    "fill_color": 0,
}
#: What open_clip's config registry requires of a built-in config file.
_BUILTIN_KEYS = ("embed_dim", "vision_cfg", "text_cfg")


@dataclass(frozen=True)
class ModelFacts:
    """A model's identity and the facts a collection records about it (see :meth:`describe`)."""

    spec: ModelSpec
    revision: str | None
    architecture: str
    dimension: int
    context_length: int
    preprocess_config: PreprocessConfig
    precision: str = "fp32"
    identity: str | None = None  # which weights file (bioclip.hub.file_identity); None for random weights

    def describe(self) -> dict[str, Any]:
        """JSON-able description for a collection manifest: enough to load the same model with
        the same preprocessing again and to refuse a different one."""
        return {
            "name": self.spec.name,
            "source": self.spec.source,
            "pretrained": self.spec.pretrained,
            "revision": self.revision,
            "architecture": self.architecture,
            "dimension": self.dimension,
            "context_length": self.context_length,
            "preprocess": self.preprocess_config.to_dict(),
            "precision": self.precision,
        }


def model_facts(
    model: str | ModelSpec,
    *,
    revision: str | None = None,
    preprocess: str | PreprocessConfig | Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelFacts | None:
    """The facts of ``model`` as :func:`bioclip.load_model` (on the CPU, fp32, with ``revision``,
    ``preprocess`` and ``cache_dir`` as there) would give them, from its files; None where only
    loading it can tell.

    Raises what ``load_model`` raises for the same model: :class:`ModelSpecError` (bad model
    string, a config that is not open_clip's), :class:`ModelNotAvailableError` (no such folder,
    snapshot not in the cache and not downloadable, no weights file).
    """
    spec = resolve_spec(model, revision)
    kind = spec.kind
    if kind == "hf-hub":
        folder = snapshot(spec, hf_cache_dir(cache_dir), hf_offline())
        commit: str | None = folder.name  # snapshot folders are named by their commit
    elif kind == "local-dir":
        folder, commit = Path(spec.path or ""), None
    else:
        return None
    folder = folder.resolve() if folder.exists() else folder
    config, weights = read_model_folder(folder, spec)
    model_cfg = config["model_cfg"]
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if not _plain_clip(model_cfg, vision, text, config.get("preprocess_cfg", {})):
        return None
    builtins = builtin_model_configs()
    if builtins is None:
        return None
    oc_preprocess = {**_OC_PREPROCESS_DEFAULTS}
    oc_preprocess.update(
        {k: v for k, v in config.get("preprocess_cfg", {}).items() if k in oc_preprocess and v is not None}
    )
    # open_clip sets the size from the vision tower it built, which takes the config's image_size.
    oc_preprocess["size"] = vision.get("image_size", 224)
    return ModelFacts(
        spec=spec,
        revision=commit,
        architecture=architecture_name(model_cfg, builtins),
        dimension=int(model_cfg["embed_dim"]),
        context_length=int(text.get("context_length", 77)),
        preprocess_config=choose_preprocess(preprocess, spec, oc_preprocess),
        identity=file_identity(spec, weights),
    )


def _plain_clip(model_cfg: Mapping[str, Any], vision: Any, text: Any, preprocess_cfg: Any) -> bool:
    """Whether open_clip builds this config as a plain CLIP whose facts are the config's own:
    its own ViT or ResNet image tower and transformer text tower, nothing the files cannot say."""
    if not (isinstance(vision, dict) and isinstance(text, dict) and isinstance(preprocess_cfg, dict)):
        return False
    if "multimodal_cfg" in model_cfg or vision.get("timm_model_name") or text.get("hf_model_name"):
        return False
    size, length = vision.get("image_size", 224), text.get("context_length", 77)
    sizes = size if isinstance(size, (list, tuple)) else [size]
    return (
        all(isinstance(s, int) and not isinstance(s, bool) for s in sizes)
        and isinstance(length, int)
        and not isinstance(length, bool)
        and length > 0
        and isinstance(model_cfg.get("embed_dim"), int)
    )


@functools.lru_cache(maxsize=1)
def builtin_model_configs() -> dict[str, dict[str, Any]] | None:
    """open_clip's built-in architectures and their configs (what ``open_clip.list_models()`` and
    ``get_model_config`` give in a fresh process), read from its ``model_configs`` folder without
    importing it; None where open_clip or that folder is not found."""
    found = importlib.util.find_spec("open_clip")
    locations = list(found.submodule_search_locations or []) if found is not None else []
    folder = Path(locations[0]) / "model_configs" if locations else None
    if folder is None or not folder.is_dir():
        return None
    configs = {}
    for path in sorted(folder.glob("*.json")):
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # open_clip itself would not import
        if isinstance(cfg, dict) and all(key in cfg for key in _BUILTIN_KEYS):
            configs[path.stem] = cfg
    return configs


def architecture_name(model_cfg: Mapping[str, Any], builtins: Mapping[str, Mapping[str, Any]]) -> str:
    """The built-in whose config equals ``model_cfg`` (``ViT-B-16`` for BioCLIP; the shortest name
    where several do), else a short description built from the config."""
    matches = [name for name, cfg in builtins.items() if cfg == model_cfg]
    if matches:
        return min(matches, key=lambda n: (len(n), n))
    vision = model_cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        return f"timm:{vision['timm_model_name']}"
    parts = [f"{key}={vision[key]}" for key in ("image_size", "patch_size", "width", "layers") if key in vision]
    return f"custom({', '.join(parts)}, embed_dim={model_cfg.get('embed_dim')})"
