"""Helpers for tests and benchmarks: tiny random-weight open_clip models saved as model folders.

A folder written here has the same layout as a Hugging Face model repository of an open_clip
model (``open_clip_config.json`` + ``open_clip_model.safetensors``), so loading it through
``local-dir:PATH`` (or from a faked Hugging Face cache) exercises exactly the code path that a
user's ``hf-hub:imageomics/bioclip`` goes through. Nothing in the product calls this module.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["TINY_MODEL_CONFIG", "write_random_model", "write_fake_hf_cache"]

#: A CLIP small enough for tests: 224 px input like BioCLIP, 32 px patches, 2 layers, 64-d output.
#: ``vocab_size`` stays 49408 so open_clip's own BPE tokenizer applies unchanged.
TINY_MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

#: OpenAI CLIP normalisation, which BioCLIP's published config also uses.
OPENAI_PREPROCESS = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def write_random_model(
    path: str | Path,
    model_cfg: dict[str, Any] | None = None,
    *,
    seed: int = 0,
    preprocess_cfg: dict[str, Any] | None = None,
) -> Path:
    """Write a random-weight open_clip model folder at ``path`` and return it.

    Same seed, same weights. The folder loads with ``local-dir:PATH``.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(model_cfg or TINY_MODEL_CONFIG))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**cfg)
    # Random init leaves logit_scale at log(1/0.07); a trained CLIP sits near log(100).
    with torch.no_grad():
        model.logit_scale.fill_(4.6052)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "open_clip_model.safetensors"))
    config = {"model_cfg": cfg, "preprocess_cfg": dict(preprocess_cfg or OPENAI_PREPROCESS)}
    (path / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


def write_fake_hf_cache(
    cache_dir: str | Path,
    repo_id: str,
    model_dir: str | Path,
    *,
    revision: str = "0123456789abcdef0123456789abcdef01234567",
) -> Path:
    """Lay out ``model_dir``'s files as a Hugging Face hub cache entry for ``repo_id``.

    Point ``HF_HUB_CACHE`` at ``cache_dir`` and set ``HF_HUB_OFFLINE=1``; then
    ``hf-hub:{repo_id}`` resolves to these files at commit ``revision`` with no network.
    Returns the snapshot folder.
    """
    import shutil

    cache_dir = Path(cache_dir)
    repo_folder = cache_dir / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_folder / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs").mkdir(parents=True, exist_ok=True)
    (repo_folder / "refs" / "main").write_text(revision, encoding="utf-8")
    for item in Path(model_dir).iterdir():
        if item.is_file():
            shutil.copy2(item, snapshot / item.name)
    return snapshot
