"""Where a model's files come from: Hugging Face snapshots (pinned revisions, offline caches) and
the files an open_clip model folder holds. Never falls back to random weights: a model that is not
available is a :class:`ModelNotAvailableError` that says where it looked and how to get it."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from .errors import ModelNotAvailableError, ModelSpecError
from .registry import ModelSpec

__all__ = [
    "CONFIG_NAME",
    "SAFETENSORS_WEIGHTS",
    "PICKLE_WEIGHTS",
    "file_identity",
    "find_weights",
    "hf_cache_dir",
    "hf_offline",
    "how_to_get_offline",
    "pinned_commit",
    "read_model_folder",
    "snapshot",
    "weights_identity",
]

CONFIG_NAME = "open_clip_config.json"
SAFETENSORS_WEIGHTS = "open_clip_model.safetensors"
PICKLE_WEIGHTS = "open_clip_pytorch_model.bin"
# What open_clip's local-dir loader looks for; checked first so that a folder without weights is
# an error instead of open_clip's warning and random weights.
_WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.pth")
# Files an open_clip model with a Hugging Face tokenizer keeps next to its config.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_TRUE = {"1", "on", "yes", "true"}


def how_to_get_offline(spec: ModelSpec) -> str:
    repo = spec.repo_id or "ORG/REPO"
    return (
        "To use it without network access: on a connected machine run "
        f'`hf download {repo}` (or `python -c "import huggingface_hub; '
        f"huggingface_hub.snapshot_download('{repo}')\"`), copy that machine's Hugging Face cache "
        "folder (~/.cache/huggingface/hub) here and point HF_HUB_CACHE at it; or put "
        "open_clip_config.json and the weights file (open_clip_model.safetensors or "
        "open_clip_pytorch_model.bin) in a folder and use --model local-dir:PATH."
    )


def hf_cache_dir(cache_dir: str | os.PathLike[str] | None) -> str:
    """The Hugging Face cache to use, with the environment read now (huggingface_hub reads it once,
    at import, which would make a later HF_HUB_CACHE invisible)."""
    if cache_dir is not None:
        return os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(var)
        if value:
            return os.path.abspath(os.path.expandvars(os.path.expanduser(value)))
    home = os.environ.get("HF_HOME")
    if home:
        return os.path.join(os.path.abspath(os.path.expandvars(os.path.expanduser(home))), "hub")
    from huggingface_hub import constants

    return os.path.abspath(constants.HF_HUB_CACHE)


def hf_offline() -> bool:
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    return env in _TRUE or bool(constants.HF_HUB_OFFLINE)


def pinned_commit(revision: str | None) -> bool:
    """Whether ``revision`` is a full commit hash (40 hex digits), which names fixed files."""
    return bool(revision and re.fullmatch(r"[0-9a-f]{40}", revision))


def find_weights(folder: Path) -> Path | None:
    for pattern in _WEIGHT_GLOBS:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def read_model_folder(folder: Path, spec: ModelSpec) -> tuple[dict[str, Any], Path]:
    """(the parsed ``open_clip_config.json``, the weights file) of a model folder.

    Raises :class:`ModelNotAvailableError` for a folder that is missing or lacks the config or a
    weights file (never random weights), :class:`ModelSpecError` for a config that is not
    open_clip's (no ``model_cfg`` with ``embed_dim``).
    """
    fix = (
        f"A model folder holds {CONFIG_NAME} and a weights file ({SAFETENSORS_WEIGHTS} or "
        f"{PICKLE_WEIGHTS}), as downloaded from an open_clip model repository on the Hugging Face hub."
    )

    def missing(what: str) -> ModelNotAvailableError:
        return ModelNotAvailableError(f"Model {spec.name!r}: {what} {fix}", model=spec.name, locations=(str(folder),))

    if not folder.is_dir():
        raise missing(f"folder {folder} does not exist.")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise missing(f"{folder} has no {CONFIG_NAME}.")
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
        raise missing(
            f"{folder} has {CONFIG_NAME} but no weights file (*.safetensors, *.bin or *.pth); "
            "refusing to run with random weights."
        )
    return config, weights


def snapshot(spec: ModelSpec, cache_dir: str, offline: bool) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id = spec.repo_id or ""
    where = f"the Hugging Face cache at {cache_dir}"
    wanted = f"{spec.name!r} ({spec.source}, revision {spec.revision or 'main'})"

    def fetch(weights_file: str, local_only: bool) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                revision=spec.revision,
                cache_dir=cache_dir,
                allow_patterns=[CONFIG_NAME, weights_file, *_TOKENIZER_FILES],
                local_files_only=local_only,
            )
        )

    def resolve(local_only: bool) -> Path:
        try:
            folder: Path | None = fetch(SAFETENSORS_WEIGHTS, local_only)
        except LocalEntryNotFoundError:
            # Offline, a cache holding only the pickled weights counts as incomplete for the
            # safetensors pattern; the fallback below may still find a complete snapshot.
            folder = None
        if folder is None or find_weights(folder) is None:
            # Older repositories (and some caches) have only the pickled weights.
            folder = fetch(PICKLE_WEIGHTS, local_only)
        return folder

    def unavailable(reason: str) -> ModelNotAvailableError:
        return ModelNotAvailableError(
            f"Model {wanted} is not available: {reason} Looked in {where}"
            f"{' (offline: HF_HUB_OFFLINE is set)' if offline else ''}. {how_to_get_offline(spec)}",
            model=spec.name,
            locations=(cache_dir,),
        )

    try:
        folder = None
        if pinned_commit(spec.revision) and not offline:
            # A commit never changes: when the cache has it, the hub has nothing to add.
            with contextlib.suppress(LocalEntryNotFoundError):
                folder = resolve(local_only=True)
        if folder is None:
            folder = resolve(local_only=offline)
    except GatedRepoError as exc:
        raise unavailable(f"the repository is gated and needs a Hugging Face token ({exc}).") from exc
    except RepositoryNotFoundError as exc:
        raise unavailable(f"the repository {repo_id} was not found on the Hugging Face hub.") from exc
    except RevisionNotFoundError as exc:
        raise unavailable(f"revision {spec.revision!r} was not found in {repo_id}.") from exc
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        reason = "it is not in the local cache and the hub cannot be reached"
        if offline:
            reason = "it is not in the local cache and network access is off"
        raise unavailable(f"{reason} ({type(exc).__name__}).") from exc
    except ValueError as exc:  # huggingface_hub's validation of repo id / revision
        raise ModelSpecError(f"Invalid Hugging Face model {spec.source!r}: {exc}") from exc

    if not (folder / CONFIG_NAME).is_file() or find_weights(folder) is None:
        raise unavailable(
            f"the snapshot at {folder} has no {CONFIG_NAME} or no weights file "
            f"({SAFETENSORS_WEIGHTS} / {PICKLE_WEIGHTS}); it is incomplete or not an open_clip model."
        )
    return folder


def file_identity(spec: ModelSpec, weights: Path) -> str:
    """Names one weights file of one model: its source, path, size and modification time."""
    st = weights.stat()
    return f"{spec.source}|{weights.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def weights_identity(spec: ModelSpec, cache_dir: str | None = None) -> str | None:
    """The identity :func:`bioclip.load_model` gives ``spec``'s weights, found without torch or open_clip
    (for caches keyed by model); None for random weights and where the weights are not at hand."""
    kind = spec.kind
    try:
        if kind == "hf-hub":
            folder: Path | None = snapshot(spec, hf_cache_dir(cache_dir), hf_offline())
        elif kind == "local-dir":
            folder = Path(spec.path or "").resolve()
        elif kind == "checkpoint":
            return file_identity(spec, Path(spec.pretrained or ""))
        elif kind == "random":
            return None
        else:
            return f"{spec.architecture}:{spec.pretrained}"
        weights = find_weights(folder) if folder is not None and folder.is_dir() else None
        return file_identity(spec, weights) if weights is not None else None
    except (ModelNotAvailableError, ModelSpecError, OSError):
        return None
