"""Loading a CLIP model and the embedding contract. The only module that imports open_clip.

:func:`load_model` turns a model string (see ``bioclip.registry``) into a :class:`ClipModel`:

- ``hf-hub:ORG/REPO[@REV]`` is resolved to a local snapshot folder with
  ``huggingface_hub.snapshot_download`` (only the config, weights and tokenizer files), then loaded
  through open_clip's ``local-dir:``. That pins revisions, which open_clip's own ``hf-hub:`` path
  cannot, records the resolved commit, and avoids open_clip's habit of only logging a warning and
  carrying on with random weights when the weight download fails.
- ``local-dir:PATH`` must hold ``open_clip_config.json`` and a weights file; a folder without
  weights is an error here (open_clip would only warn).
- ``ARCH:TAG``, ``ARCH:/path/checkpoint`` and ``random:ARCH`` go to open_clip's built-in configs.

Embedding contract (every ``encode_*`` / ``embed_*`` method): ``np.ndarray``, float32, shape
(n, d), each row L2-normalised, so cosine similarity is the inner product; an empty input gives
shape (0, d). The model is in eval mode and encodes under ``torch.inference_mode()``; on CUDA under
bf16 autocast (fp16 where bf16 is unsupported), on CPU and MPS in fp32. Forward passes are
serialised by a lock, so one ``ClipModel`` may be shared by threads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch

from .batching import check_batch_size, chunks, normalise, text_list
from .device import pick_device, resolve_precision
from .errors import ModelNotAvailableError, ModelSpecError
from .hub import CONFIG_NAME, PICKLE_WEIGHTS, SAFETENSORS_WEIGHTS, find_weights, hf_cache_dir, hf_offline, snapshot
from .preprocess import (
    ImageTransform,
    PreprocessConfig,
    choose_preprocess,
    make_transform,
)
from .registry import DEFAULT_MODEL, ModelSpec, resolve_spec
from .taxa import Taxon, TextForm, taxon_prompt, taxon_text

__all__ = ["ClipModel", "load_model", "ensemble_texts"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the model


class ClipModel:
    """A loaded CLIP model with the project's embedding contract (see the module docstring).

    Attributes: ``spec`` (:class:`ModelSpec`), ``device`` (str), ``precision`` (``fp32``,
    ``bf16`` or ``fp16``), ``dimension`` (embedding size), ``context_length`` (text tokens),
    ``logit_scale`` (float, already exponentiated), ``preprocess_config`` and ``transform`` (the
    picklable PIL -> tensor transform), ``revision`` (the resolved commit for hf-hub models, else
    None) and ``architecture`` (``ViT-B-16`` when the config is an open_clip built-in).
    Build it with :func:`load_model`.
    """

    def __init__(
        self,
        *,
        spec: ModelSpec,
        module: torch.nn.Module,
        tokenizer: Any,
        device: str,
        precision: str,
        preprocess_config: PreprocessConfig,
        dimension: int,
        context_length: int,
        revision: str | None,
        architecture: str,
    ):
        self.spec = spec
        self.device = device
        self.precision = precision
        self.dimension = int(dimension)
        self.context_length = int(context_length)
        self.preprocess_config = preprocess_config
        self.transform: ImageTransform = make_transform(preprocess_config)
        self.revision = revision
        self.architecture = architecture
        self._module = module.eval().requires_grad_(False)
        self._tokenizer = tokenizer
        self._torch_device = torch.device(device)
        self._lock = threading.Lock()
        with torch.no_grad():
            self.logit_scale = float(torch.as_tensor(module.logit_scale).float().exp().reshape(-1)[0])

    def __repr__(self) -> str:
        return (
            f"ClipModel({self.spec.name!r}, architecture={self.architecture!r}, dimension={self.dimension}, "
            f"device={self.device!r}, precision={self.precision!r}, revision={self.revision!r})"
        )

    @property
    def torch_model(self) -> torch.nn.Module:
        """The underlying open_clip module (eval mode). Use the ``encode_*`` methods for embeddings."""
        return self._module

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

    # ----------------------------------------------------------------- images

    def encode_image_tensors(self, batch: torch.Tensor, *, normalize: bool = True) -> np.ndarray:
        """Embed a batch already made by :attr:`transform` (stacked: (n, 3, size, size)).

        The batch is moved to the device (non-blocking) and encoded in one forward pass.
        ``normalize=False`` returns the image tower's raw features (what pybioclip's ``embed``
        writes), outside the embedding contract.
        """
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4 or batch.shape[1] != 3:
            shape = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
            raise ValueError(f"encode_image_tensors takes a (n, 3, H, W) tensor, got {shape}.")
        if batch.shape[0] == 0:
            return self._empty()
        size = self.preprocess_config.size
        if tuple(batch.shape[2:]) != (size, size):
            raise ValueError(f"Image batch is {tuple(batch.shape[2:])}, the model takes {(size, size)}.")
        return self._forward(self._module.encode_image, batch.to(dtype=torch.float32), normalize=normalize)

    def encode_images(self, images: Iterable[Any], batch_size: int = 32, *, normalize: bool = True) -> np.ndarray:
        """Embed PIL images (RGB; other modes are converted) with :attr:`transform`, in batches."""
        check_batch_size(batch_size)
        parts = [
            self.encode_image_tensors(torch.stack([self.transform(image) for image in chunk]), normalize=normalize)
            for chunk in chunks(images, batch_size)
        ]
        return np.concatenate(parts) if parts else self._empty()

    # ----------------------------------------------------------------- text

    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embed texts as they are (no prompt added). Texts longer than :attr:`context_length`
        tokens are truncated by the tokenizer; see :meth:`text_is_truncated`."""
        texts = text_list(texts)
        check_batch_size(batch_size)
        parts = [self._forward(self._encode_text, self._tokenizer(list(chunk))) for chunk in chunks(texts, batch_size)]
        return np.concatenate(parts) if parts else self._empty()

    def text_token_count(self, text: str) -> int:
        """Tokens ``text`` takes, start and end tokens included (compare with :attr:`context_length`)."""
        tokenizer = self._tokenizer
        if isinstance(tokenizer, open_clip.SimpleTokenizer):
            return len(tokenizer.encode(text)) + 2
        hf = getattr(tokenizer, "tokenizer", None)
        if hf is not None and callable(hf):
            clean = getattr(tokenizer, "clean_fn", lambda s: s)
            return len(hf(clean(text))["input_ids"])
        # Unknown tokenizer: tokenize without a length limit and count the non-padding ids.
        ids = tokenizer([text], context_length=10_000)
        return int((ids != 0).sum())

    def text_is_truncated(self, text: str) -> bool:
        """Whether the model sees only the beginning of ``text`` (more tokens than it takes)."""
        return self.text_token_count(text) > self.context_length

    def embed_text_ensemble(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """One vector per text from OpenAI's 80 ImageNet templates, as pybioclip and BioCLIP's
        evaluation do: embed every filled template, average the normalised vectors, renormalise."""
        texts = text_list(texts)
        if not texts:
            return self._empty()
        filled = [t for text in texts for t in ensemble_texts(text)]
        per_template = self.encode_texts(filled, batch_size=batch_size)
        mean = per_template.reshape(len(texts), -1, self.dimension).mean(axis=1)
        return normalise(mean)

    def embed_taxa(
        self,
        taxa: Sequence[Taxon],
        form: TextForm | str = TextForm.TAXONOMIC_COMMON,
        ensemble: bool = False,
    ) -> np.ndarray:
        """Embed taxa in one of BioCLIP's text forms.

        Without ``ensemble``: the caption ``a photo of {text}.`` (:func:`bioclip.taxa.taxon_prompt`).
        With ``ensemble``: the text filled into OpenAI's 80 templates (:meth:`embed_text_ensemble`).
        """
        taxa = list(taxa)
        if ensemble:
            return self.embed_text_ensemble([taxon_text(t, form) for t in taxa])
        return self.encode_texts([taxon_prompt(t, form) for t in taxa])

    # ----------------------------------------------------------------- internals

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.dimension), dtype=np.float32)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self._torch_device.type, dtype=dtype)

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's text encoding, without the padding after the longest text's end token.

        CLIP's text transformer is causal and pools at the end token, so positions after it never
        influence the result: cutting them off gives the same vectors (to float rounding) at a
        fraction of the cost for the short texts of queries (77 positions -> ~10). Models that pool
        differently or attend both ways go through open_clip's own ``encode_text``.
        """
        m: Any = self._module
        mask = getattr(m, "attn_mask", None)
        if not isinstance(m, open_clip.CLIP) or mask is None or getattr(m, "text_pool_type", "argmax") != "argmax":
            return m.encode_text(tokens)
        ends = tokens.argmax(dim=-1)
        length = int(ends.max()) + 1
        tokens = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = m.transformer(x, attn_mask=mask[:length, :length])
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), ends]
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x

    def _forward(self, encode: Any, inputs: torch.Tensor, *, normalize: bool = True) -> np.ndarray:
        with self._lock, torch.inference_mode():
            inputs = inputs.to(self._torch_device, non_blocking=True)
            with self._autocast():
                features = encode(inputs)
            # Normalise in fp32 whatever the autocast dtype was.
            features = features.float()
            if normalize:
                features = torch.nn.functional.normalize(features, dim=-1)
            return features.cpu().numpy().astype(np.float32, copy=False)


def ensemble_texts(text: str) -> list[str]:
    """``text`` filled into OpenAI's 80 ImageNet templates (from open_clip's zero_shot_metadata)."""
    return [template(text) for template in open_clip.OPENAI_IMAGENET_TEMPLATES]


# --------------------------------------------------------------------------- loading


@dataclass
class _Loaded:
    module: torch.nn.Module
    tokenizer: Any
    model_cfg: dict[str, Any]
    architecture: str
    revision: str | None = None


def load_model(
    model: str | ModelSpec = DEFAULT_MODEL,
    *,
    device: str = "auto",
    precision: str = "auto",
    revision: str | None = None,
    preprocess: str | PreprocessConfig | Mapping[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ClipModel:
    """Load ``model`` (a registry name, model string or :class:`ModelSpec`) ready to encode.

    ``device``: ``auto`` (cuda, mps, cpu), ``cpu``, ``cuda[:N]``, ``mps``; ``precision``: ``auto``,
    ``fp32``, ``bf16``, ``fp16`` (see :func:`resolve_precision`). ``revision`` pins a Hugging Face
    branch, tag or commit. ``preprocess``: None (the spec's mode, else the project default
    ``squash``), a mode name (``squash`` / ``crop``, sized and normalised as the model's own
    config says), or a full :class:`PreprocessConfig` (or its dict), e.g. the one recorded in a
    collection. ``cache_dir`` overrides the Hugging Face cache (default: ``HF_HUB_CACHE``, read
    when this is called).

    Raises :class:`ModelSpecError` (bad string, unknown architecture or tag),
    :class:`ModelNotAvailableError` (weights missing and not downloadable: the message says where
    it looked and how to fix it), :class:`DeviceError`.
    """
    spec = resolve_spec(model, revision)
    torch_device = pick_device(device)
    chosen_precision = resolve_precision(precision, torch_device)
    kind = spec.kind
    if kind == "hf-hub":
        loaded = _load_hf_hub(spec, torch_device, cache_dir)
    elif kind == "local-dir":
        loaded = _load_local_dir(Path(spec.path or ""), spec, torch_device)
    else:
        loaded = _load_builtin(spec, torch_device, cache_dir)

    oc_preprocess = dict(open_clip.get_model_preprocess_cfg(loaded.module))
    preprocess_config = choose_preprocess(preprocess, spec, oc_preprocess)
    text_cfg = loaded.model_cfg.get("text_cfg", {})
    context_length = (
        getattr(loaded.module, "context_length", None)
        or getattr(loaded.tokenizer, "context_length", None)
        or text_cfg.get("context_length", 77)
    )
    clip = ClipModel(
        spec=spec,
        module=loaded.module,
        tokenizer=loaded.tokenizer,
        device=torch_device,
        precision=chosen_precision,
        preprocess_config=preprocess_config,
        dimension=int(loaded.model_cfg["embed_dim"]),
        context_length=int(context_length),
        revision=loaded.revision,
        architecture=loaded.architecture,
    )
    log.info("Loaded %r", clip)
    return clip


def _load_hf_hub(spec: ModelSpec, device: str, cache_dir: str | os.PathLike[str] | None) -> _Loaded:
    cache = hf_cache_dir(cache_dir)
    folder = snapshot(spec, cache, hf_offline())
    loaded = _load_local_dir(folder, spec, device)
    # Snapshot folders are named by their commit hash: the exact weights this model used.
    loaded.revision = folder.name
    return loaded


def _load_local_dir(folder: Path, spec: ModelSpec, device: str) -> _Loaded:
    folder = folder.resolve() if folder.exists() else folder
    fix = (
        f"A model folder holds {CONFIG_NAME} and a weights file ({SAFETENSORS_WEIGHTS} or "
        f"{PICKLE_WEIGHTS}), as downloaded from an open_clip model repository on the Hugging Face hub."
    )
    if not folder.is_dir():
        raise ModelNotAvailableError(
            f"Model {spec.name!r}: folder {folder} does not exist. {fix}",
            model=spec.name,
            locations=(str(folder),),
        )
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise ModelNotAvailableError(
            f"Model {spec.name!r}: {folder} has no {CONFIG_NAME}. {fix}",
            model=spec.name,
            locations=(str(folder),),
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model_cfg = config["model_cfg"]
        if not isinstance(model_cfg, dict) or "embed_dim" not in model_cfg:
            raise KeyError("model_cfg.embed_dim")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelSpecError(
            f"Model {spec.name!r}: {config_path} is not an open_clip config (needs model_cfg with embed_dim): {exc}"
        ) from exc
    weights = find_weights(folder)
    if weights is None:
        raise ModelNotAvailableError(
            f"Model {spec.name!r}: {folder} has {CONFIG_NAME} but no weights file "
            f"(*.safetensors, *.bin or *.pth); refusing to run with random weights. {fix}",
            model=spec.name,
            locations=(str(folder),),
        )
    module = _create(
        spec,
        f"local-dir:{folder}",
        None,
        device,
        where=str(folder),
    )
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    return _Loaded(module, tokenizer, model_cfg, _architecture_name(model_cfg))


def _load_builtin(spec: ModelSpec, device: str, cache_dir: str | os.PathLike[str] | None) -> _Loaded:
    arch = spec.architecture or ""
    known = open_clip.list_models()
    if arch not in known:
        raise ModelSpecError(
            f"Model {spec.name!r}: {arch!r} is not an open_clip architecture. Known architectures "
            f"include {', '.join(known[:12])}, ... (open_clip.list_models())."
        )
    kind = spec.kind
    if kind == "random":
        log.warning(
            "Model %r has RANDOM weights (asked for with random:%s): its embeddings mean nothing. "
            "Use it for benchmarks only.",
            spec.name,
            arch,
        )
        module = _create(spec, arch, None, device, where="(random weights)", require=False)
    elif kind == "checkpoint":
        path = spec.pretrained or ""
        if not os.path.isfile(path):
            raise ModelNotAvailableError(
                f"Model {spec.name!r}: checkpoint file {path} does not exist.",
                model=spec.name,
                locations=(path,),
            )
        module = _create(spec, arch, path, device, where=path)
    else:
        tag = spec.pretrained or ""
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag not in tags:
            raise ModelSpecError(
                f"Model {spec.name!r}: {tag!r} is not a pretrained tag of {arch}; its tags are "
                f"{', '.join(tags) or 'none'} (open_clip.list_pretrained())."
            )
        tag_cfg = open_clip.get_pretrained_cfg(arch, tag)
        if tag_cfg.get("hf_hub"):
            where = hf_cache_dir(cache_dir)
            download_dir: str | None = where
            where = f"the Hugging Face cache at {where}"
        else:
            download_dir = None
            where = f"open_clip's download cache ({os.path.expanduser('~/.cache/clip')})"
        module = _create(spec, arch, tag, device, where=where, cache_dir=download_dir)
    return _Loaded(module, open_clip.get_tokenizer(arch), open_clip.get_model_config(arch), arch)


def _create(
    spec: ModelSpec,
    name: str,
    pretrained: str | None,
    device: str,
    *,
    where: str,
    require: bool = True,
    cache_dir: str | None = None,
) -> torch.nn.Module:
    """open_clip.create_model with weights required and failures turned into named errors."""
    try:
        return open_clip.create_model(
            name,
            pretrained=pretrained,
            device=device,
            precision="fp32",  # autocast handles bf16/fp16; weights stay fp32 for exact fp32 paths
            require_pretrained=require,
            pretrained_image=False,
            pretrained_text=False,
            cache_dir=cache_dir,
        )
    except (RuntimeError, OSError, ValueError) as exc:
        raise ModelNotAvailableError(
            f"Model {spec.name!r}: the weights could not be loaded from {where}: {str(exc).rstrip('. ')}. "
            "If they are not downloaded yet, run the same command once on a machine with network "
            "access and copy its cache, or download a checkpoint file and use ARCH:/path/to/file, "
            "or a model folder with --model local-dir:PATH.",
            model=spec.name,
            locations=(where,),
        ) from exc


def _architecture_name(model_cfg: Mapping[str, Any]) -> str:
    """The open_clip built-in whose config equals ``model_cfg`` (``ViT-B-16`` for BioCLIP), else a
    short description built from the config."""
    matches = [name for name in open_clip.list_models() if open_clip.get_model_config(name) == model_cfg]
    if matches:
        return min(matches, key=lambda n: (len(n), n))
    vision = model_cfg.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        return f"timm:{vision['timm_model_name']}"
    parts = [f"{key}={vision[key]}" for key in ("image_size", "patch_size", "width", "layers") if key in vision]
    return f"custom({', '.join(parts)}, embed_dim={model_cfg.get('embed_dim')})"
