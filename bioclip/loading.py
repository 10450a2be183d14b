"""Loading a CLIP model: a model string -> its weights -> a :class:`ClipModel` at the chosen precision.

With :mod:`bioclip.model`, the only module that imports open_clip. :func:`load_model` turns a model
string (see ``bioclip.registry``) into a :class:`ClipModel`:

- ``hf-hub:ORG/REPO[@REV]`` is resolved to a local snapshot folder with
  ``huggingface_hub.snapshot_download`` (only the config, weights and tokenizer files), then loaded
  like a model folder. That pins revisions, which open_clip's own ``hf-hub:`` path cannot, records
  the resolved commit, and avoids open_clip's habit of only logging a warning and carrying on with
  random weights when the weight download fails. A revision that is a full commit already in the
  cache is used from it without asking the hub (:func:`bioclip.hub.snapshot`).
- ``local-dir:PATH`` must hold ``open_clip_config.json`` and a weights file; a folder without
  weights is an error here (open_clip would only warn).
- ``ARCH:TAG``, ``ARCH:/path/checkpoint`` and ``random:ARCH`` go to open_clip's built-in configs.

A model with a weights file is built without the random initialisation its weights replace anyway,
and the file's tensors are assigned to it instead of copied (open_clip's own checkpoint fixes still
apply): a ViT-B/16 loads in a fraction of a second instead of seconds. The precision is chosen as
:func:`bioclip.device.resolve_precision` and, for ``auto`` on a CPU, :mod:`bioclip.precision` say.
A model is loaded once per process: the same request while the first :class:`ClipModel` is alive
returns it (random weights excepted).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from .device import check_precision, pick_device, resolve_precision
from .errors import ModelNotAvailableError, ModelSpecError
from .facts import architecture_name
from .hub import file_identity, hf_cache_dir, hf_offline, read_model_folder, snapshot
from .model import ClipModel
from .precision import decide_cpu_precision, detect_cpu_bf16, torch_dtype
from .preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessConfig, choose_preprocess
from .registry import DEFAULT_MODEL, ModelSpec, resolve_spec

__all__ = ["load_model"]

log = logging.getLogger(__name__)

# One load at a time: the construction without initialisation patches torch.nn.init meanwhile.
_LOAD_LOCK = threading.RLock()
_LOADED: weakref.WeakValueDictionary[str, ClipModel] = weakref.WeakValueDictionary()
_PROBE_PROMPTS = ("a photo of Corvus corax.", "a photo of a beetle on a leaf.", "herbarium sheet of Quercus robur")


@dataclass
class _Loaded:
    make: Callable[[], torch.nn.Module]  # a new module on the CPU, in eval mode, weights as stored
    tokenizer: Any
    model_cfg: dict[str, Any]
    architecture: str
    identity: str  # which weights: for the precision cache and the per-process cache
    revision: str | None = None
    random: bool = False


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
    ``fp32``, ``bf16``, ``fp16`` (see :func:`bioclip.device.resolve_precision`). ``revision`` pins a
    Hugging Face branch, tag or commit. ``preprocess``: None (the spec's mode, else the project
    default ``squash``), a mode name (``squash`` / ``crop``, sized and normalised as the model's own
    config says), or a full :class:`PreprocessConfig` (or its dict), e.g. the one recorded in a
    collection. ``cache_dir`` overrides the Hugging Face cache (default: ``HF_HUB_CACHE``, read
    when this is called).

    Raises :class:`ModelSpecError` (bad string, unknown architecture or tag),
    :class:`ModelNotAvailableError` (weights missing and not downloadable: the message says where
    it looked and how to fix it), :class:`DeviceError`.
    """
    spec = resolve_spec(model, revision)
    torch_device = pick_device(device)
    wanted = check_precision(precision)
    with _LOAD_LOCK:
        loaded = _locate(spec, cache_dir)
        key = None
        if not loaded.random:
            pre = preprocess.to_dict() if isinstance(preprocess, PreprocessConfig) else preprocess
            verdict = detect_cpu_bf16().verdict if (wanted, torch_device) == ("auto", "cpu") else None
            key = json.dumps([loaded.identity, torch_device, wanted, verdict, pre], sort_keys=True, default=str)
            hit = _LOADED.get(key)
            if hit is not None:
                return hit
        module, chosen, note = _materialise(loaded, torch_device, wanted)
        oc_preprocess = dict(open_clip.get_model_preprocess_cfg(module))
        text_cfg = loaded.model_cfg.get("text_cfg", {})
        context_length = (
            getattr(module, "context_length", None)
            or getattr(loaded.tokenizer, "context_length", None)
            or text_cfg.get("context_length", 77)
        )
        clip = ClipModel(
            spec=spec,
            module=module,
            tokenizer=loaded.tokenizer,
            device=torch_device,
            precision=chosen,
            preprocess_config=choose_preprocess(preprocess, spec, oc_preprocess),
            dimension=int(loaded.model_cfg["embed_dim"]),
            context_length=int(context_length),
            revision=loaded.revision,
            architecture=loaded.architecture,
            precision_note=note,
            identity=None if loaded.random else loaded.identity,
        )
        if key is not None:
            _LOADED[key] = clip
    log.info("Loaded %r (%s)", clip, note)
    return clip


def _materialise(loaded: _Loaded, device: str, wanted: str) -> tuple[torch.nn.Module, str, str]:
    """(module on ``device`` at its precision, that precision, why)."""
    if wanted == "auto" and device == "cpu":
        support = detect_cpu_bf16()
        check = functools.partial(_probe_vectors, loaded.tokenizer)
        module, chosen, record = decide_cpu_precision(
            loaded.make, identity=loaded.identity, support=support, check=check
        )
        cached = ", cached" if record.get("cached") else ""
        note = f"auto on {support.cpu}: {chosen} ({record.get('reason')}{cached})"
    else:
        chosen = resolve_precision(wanted, device)
        module = loaded.make()
        # bf16: bf16 weights. fp16: fp16 weights on a CPU; on a GPU fp32 weights under fp16
        # autocast, which keeps LayerNorm and softmax in fp32 where fp16 would overflow.
        lowp = chosen == "bf16" or (chosen == "fp16" and device == "cpu")
        module = module.to(torch_dtype(chosen) if lowp else torch.float32)
        note = f"{wanted} on {device}: {chosen}"
    return module.to(device).eval().requires_grad_(False), chosen, note


def _probe_vectors(tokenizer: Any, module: torch.nn.Module, dtype: torch.dtype) -> list[torch.Tensor]:
    """Unit vectors of the precision probe: 8 synthetic photo-like images (smooth colour fields
    with fine noise, normalised like real input) and a few prompts, at ``dtype``."""
    size = open_clip.get_model_preprocess_cfg(module).get("size", 224)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    gen = torch.Generator().manual_seed(0)
    low = torch.rand(8, 3, 6, 6, generator=gen)
    images = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    images = (images + 0.05 * torch.randn(8, 3, size, size, generator=gen)).clamp(0, 1)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    m: Any = module
    with torch.inference_mode():
        out = [m.encode_image(((images - mean) / std).to(dtype))]
        if hasattr(m, "encode_text"):
            out.append(m.encode_text(tokenizer(list(_PROBE_PROMPTS))))
    return [torch.nn.functional.normalize(x.float(), dim=-1) for x in out]


# --------------------------------------------------------------------------- where the weights are


def _locate(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None) -> _Loaded:
    kind = spec.kind
    if kind == "hf-hub":
        folder = snapshot(spec, hf_cache_dir(cache_dir), hf_offline())
        loaded = _local_dir(folder, spec)
        # Snapshot folders are named by their commit hash: the exact weights this model used.
        loaded.revision = folder.name
        return loaded
    if kind == "local-dir":
        return _local_dir(Path(spec.path or ""), spec)
    return _builtin(spec, cache_dir)


def _local_dir(folder: Path, spec: ModelSpec) -> _Loaded:
    folder = folder.resolve() if folder.exists() else folder
    config, weights = read_model_folder(folder, spec)
    model_cfg = config["model_cfg"]
    name = f"local-dir:{folder}"
    make = functools.partial(_with_weights, spec, name, weights, str(folder))
    tokenizer = open_clip.get_tokenizer(name)
    return _Loaded(make, tokenizer, model_cfg, _architecture_name(model_cfg), file_identity(spec, weights))


def _builtin(spec: ModelSpec, cache_dir: str | os.PathLike[str] | None) -> _Loaded:
    arch = spec.architecture or ""
    known = open_clip.list_models()
    if arch not in known:
        raise ModelSpecError(
            f"Model {spec.name!r}: {arch!r} is not an open_clip architecture. Known architectures "
            f"include {', '.join(known[:12])}, ... (open_clip.list_models())."
        )
    kind = spec.kind
    tokenizer, model_cfg = open_clip.get_tokenizer(arch), open_clip.get_model_config(arch)
    if kind == "random":
        log.warning(
            "Model %r has RANDOM weights (asked for with random:%s): its embeddings mean nothing. "
            "Use it for benchmarks only.",
            spec.name,
            arch,
        )
        make = functools.partial(_create_random, spec, arch)
        return _Loaded(make, tokenizer, model_cfg, arch, f"random:{arch}", random=True)
    if kind == "checkpoint":
        path = spec.pretrained or ""
        if not os.path.isfile(path):
            raise ModelNotAvailableError(
                f"Model {spec.name!r}: checkpoint file {path} does not exist.", model=spec.name, locations=(path,)
            )
        make = functools.partial(_with_weights, spec, arch, Path(path), path)
        return _Loaded(make, tokenizer, model_cfg, arch, file_identity(spec, Path(path)))
    tag = spec.pretrained or ""
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        raise ModelSpecError(
            f"Model {spec.name!r}: {tag!r} is not a pretrained tag of {arch}; its tags are "
            f"{', '.join(tags) or 'none'} (open_clip.list_pretrained())."
        )
    download_dir: str | None = None
    where = f"open_clip's download cache ({os.path.expanduser('~/.cache/clip')})"
    if open_clip.get_pretrained_cfg(arch, tag).get("hf_hub"):
        download_dir = hf_cache_dir(cache_dir)
        where = f"the Hugging Face cache at {download_dir}"
    make = functools.partial(_create, spec, arch, tag, where=where, cache_dir=download_dir)
    return _Loaded(make, tokenizer, model_cfg, arch, f"{arch}:{tag}")


# --------------------------------------------------------------------------- making the module


def _with_weights(spec: ModelSpec, name: str, weights: Path, where: str) -> torch.nn.Module:
    """The model ``name`` with the weights file's tensors: built without random initialisation,
    then loaded by open_clip's own checkpoint loader (its fixes for older formats included), with
    the tensors assigned rather than copied. Every parameter comes from the file (strict loading)."""
    with _LOAD_LOCK, _no_init(), _quiet(_RANDOM_INIT_WARNING):
        module = _create(spec, name, None, where=where, require=False, load_weights=False)
    # load_checkpoint calls module.load_state_dict(state, strict=...): assign instead of copy.
    module.load_state_dict = functools.partial(type(module).load_state_dict, module, assign=True)  # type: ignore[method-assign]
    try:
        open_clip.load_checkpoint(module, str(weights), strict=True)
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        raise _unavailable(spec, where, exc) from exc
    finally:
        del module.load_state_dict
    return module.eval()


#: What open_clip logs (to the root logger) for a model built without its weights, as here just
#: before they are assigned: not true of the model this returns, so not shown.
_RANDOM_INIT_WARNING = "No pretrained weights loaded"


@contextlib.contextmanager
def _quiet(prefix: str) -> Iterator[None]:
    """Drop root-logger records starting with ``prefix`` meanwhile."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """torch.nn.init's in-place initialisers do nothing meanwhile: weights about to be replaced by
    a checkpoint's are not drawn at random first (the bulk of building a ViT). Hold _LOAD_LOCK."""
    init = torch.nn.init
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}

    def keep(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor

    try:
        for n in names:
            setattr(init, n, keep)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def _create(
    spec: ModelSpec,
    name: str,
    pretrained: str | None,
    *,
    where: str,
    require: bool = True,
    cache_dir: str | None = None,
    load_weights: bool = True,
) -> torch.nn.Module:
    """open_clip.create_model on the CPU in fp32, weights required, failures as named errors."""
    try:
        return open_clip.create_model(
            name,
            pretrained=pretrained,
            device="cpu",
            precision="fp32",
            require_pretrained=require,
            pretrained_image=False,
            pretrained_text=False,
            cache_dir=cache_dir,
            load_weights=load_weights,
        ).eval()
    except (RuntimeError, OSError, ValueError) as exc:
        raise _unavailable(spec, where, exc) from exc


#: The seed of ``random:ARCH`` weights: the same weights in every process (a warm server and a
#: direct query, two runs of a benchmark), without touching the caller's random state.
RANDOM_SEED = 0


def _create_random(spec: ModelSpec, arch: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return _create(spec, arch, None, where="(random weights)", require=False)


def _unavailable(spec: ModelSpec, where: str, exc: Exception) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"Model {spec.name!r}: the weights could not be loaded from {where}: {str(exc).rstrip('. ')}. "
        "If they are not downloaded yet, run the same command once on a machine with network "
        "access and copy its cache, or download a checkpoint file and use ARCH:/path/to/file, "
        "or a model folder with --model local-dir:PATH.",
        model=spec.name,
        locations=(where,),
    )


def _architecture_name(model_cfg: Mapping[str, Any]) -> str:
    """The open_clip built-in whose config equals ``model_cfg`` (``ViT-B-16`` for BioCLIP), else a
    short description built from the config (:func:`bioclip.facts.architecture_name`, over the
    configs open_clip knows in this process)."""
    return architecture_name(model_cfg, {name: open_clip.get_model_config(name) for name in open_clip.list_models()})
