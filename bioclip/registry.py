"""Named model specs and the one parser of model strings.

Every model the project can load is described by a frozen :class:`ModelSpec` whose ``source`` is a
schema-prefixed string. :func:`resolve_spec` turns whatever a user typed (``--model``) into one.
Accepted model strings:

=================================  =========================================================
``bioclip``, ``bioclip-2``, ...    a registered name (:func:`list_models`)
``hf-hub:ORG/REPO``                an open_clip model repository on the Hugging Face hub
``hf-hub:ORG/REPO@REVISION``       the same, pinned to a branch, tag or commit
``local-dir:PATH``                 a folder with ``open_clip_config.json`` + a weights file
``ARCH:TAG``                       an open_clip built-in architecture with a pretrained tag
                                   (``ViT-B-16:openai``; the tag is checked when loading)
``ARCH:/path/to/checkpoint.pt``    a built-in architecture with a local checkpoint file
                                   (``.pt``, ``.pth``, ``.bin`` or ``.safetensors``)
``random:ARCH``                    explicitly random weights, for benchmarks only
=================================  =========================================================

A bare architecture name (``ViT-B-16``) is refused: weights are never left random unless asked
for with ``random:``. This module does not import torch or open_clip.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Literal

from .errors import ModelSpecError

__all__ = [
    "ModelSpec",
    "SourceKind",
    "DEFAULT_MODEL",
    "CHECKPOINT_SUFFIXES",
    "PREPROCESS_MODES",
    "resolve_spec",
    "list_models",
    "register",
]

HF_HUB = "hf-hub:"
LOCAL_DIR = "local-dir:"
RANDOM = "random:"

#: Name of the model used when none is given.
DEFAULT_MODEL = "bioclip"
#: File suffixes accepted for ``ARCH:/path/to/checkpoint``.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
#: Preprocessing modes a spec may ask for (see ``bioclip.preprocess``).
PREPROCESS_MODES = ("squash", "crop")

SourceKind = Literal["hf-hub", "local-dir", "pretrained-tag", "checkpoint", "random"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9_.\-]+$")
_ARCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")

ACCEPTED_FORMS = (
    "Accepted model strings: a registered name ({names}); hf-hub:ORG/REPO or "
    "hf-hub:ORG/REPO@REVISION; local-dir:PATH (a folder with open_clip_config.json and a weights "
    "file); ARCH:TAG (an open_clip architecture with a pretrained tag, e.g. ViT-B-16:openai); "
    "ARCH:/path/to/checkpoint.pt (.pt, .pth, .bin or .safetensors); random:ARCH (explicitly "
    "random weights, for benchmarks)."
)


def _accepted_forms() -> str:
    return ACCEPTED_FORMS.format(names=", ".join(_REGISTRY) or "none")


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a name plus a schema-prefixed ``source``.

    Canonical ``source`` forms (what :func:`resolve_spec` produces):

    - ``hf-hub:ORG/REPO`` (``revision`` optionally pins a branch, tag or commit);
    - ``local-dir:/absolute/path``;
    - ``ARCH`` with ``pretrained`` set to an open_clip pretrained tag or an absolute path to a
      checkpoint file;
    - ``random:ARCH`` (``pretrained`` must be None).

    ``preprocess`` is the preprocessing mode this model defaults to (``squash`` or ``crop``);
    None means the project default. Invalid combinations raise :class:`ModelSpecError`.
    """

    name: str
    source: str
    pretrained: str | None = None
    revision: str | None = None
    preprocess: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ModelSpecError("A model spec needs a non-empty name.")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ModelSpecError(f"Model spec {self.name!r} has an empty source.")
        if self.preprocess is not None and self.preprocess not in PREPROCESS_MODES:
            raise ModelSpecError(
                f"Model spec {self.name!r}: preprocess must be one of {PREPROCESS_MODES} or None, "
                f"not {self.preprocess!r}."
            )
        kind = self.kind  # validates the source
        if self.revision is not None:
            if kind != "hf-hub":
                raise ModelSpecError(
                    f"Model spec {self.name!r}: a revision can only be pinned for hf-hub: sources, not {self.source!r}."
                )
            if not _REVISION.match(self.revision):
                raise ModelSpecError(f"Model spec {self.name!r}: invalid revision {self.revision!r}.")
        if kind in ("hf-hub", "local-dir", "random") and self.pretrained is not None:
            raise ModelSpecError(
                f"Model spec {self.name!r}: 'pretrained' is only for ARCH sources, not {self.source!r}."
            )
        if kind == "checkpoint" and not os.path.isabs(self.pretrained or ""):
            raise ModelSpecError(f"Model spec {self.name!r}: checkpoint path {self.pretrained!r} must be absolute.")

    @property
    def kind(self) -> SourceKind:
        """Which loader applies: ``hf-hub``, ``local-dir``, ``pretrained-tag``, ``checkpoint``
        or ``random``."""
        src = self.source
        if src.startswith(HF_HUB):
            repo = src[len(HF_HUB) :]
            if not _REPO_ID.match(repo):
                raise ModelSpecError(f"Model spec {self.name!r}: {src!r} is not hf-hub:ORG/REPO. {_accepted_forms()}")
            return "hf-hub"
        if src.startswith(LOCAL_DIR):
            if not os.path.isabs(src[len(LOCAL_DIR) :]):
                raise ModelSpecError(f"Model spec {self.name!r}: the local-dir: path in {src!r} must be absolute.")
            return "local-dir"
        if src.startswith(RANDOM):
            if not _ARCH.match(src[len(RANDOM) :]):
                raise ModelSpecError(f"Model spec {self.name!r}: {src!r} is not random:ARCH. {_accepted_forms()}")
            return "random"
        if not _ARCH.match(src):
            raise ModelSpecError(f"Model spec {self.name!r}: unknown source {src!r}. {_accepted_forms()}")
        if not self.pretrained:
            raise ModelSpecError(
                f"Model spec {self.name!r}: architecture {src!r} has no weights. Give a pretrained "
                f"tag ({src}:TAG), a checkpoint ({src}:/path/to/checkpoint.pt), or random:{src} for "
                "explicitly random weights."
            )
        return "checkpoint" if _looks_like_path(self.pretrained) else "pretrained-tag"

    @property
    def repo_id(self) -> str | None:
        """``ORG/REPO`` for hf-hub sources, else None."""
        return self.source[len(HF_HUB) :] if self.source.startswith(HF_HUB) else None

    @property
    def path(self) -> str | None:
        """The folder (local-dir) or checkpoint file (checkpoint) this spec loads from, else None."""
        kind = self.kind
        if kind == "local-dir":
            return self.source[len(LOCAL_DIR) :]
        if kind == "checkpoint":
            return self.pretrained
        return None

    @property
    def architecture(self) -> str | None:
        """The open_clip architecture name for ARCH and random sources, else None (known only
        once the model's config has been read)."""
        kind = self.kind
        if kind == "random":
            return self.source[len(RANDOM) :]
        if kind in ("pretrained-tag", "checkpoint"):
            return self.source
        return None

    def with_revision(self, revision: str | None) -> ModelSpec:
        """This spec pinned to ``revision`` (hf-hub sources only)."""
        return dataclasses.replace(self, revision=revision)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry under ``spec.name`` and return it.

    Names are case-insensitive and may not contain ``:`` (so they never look like a source).
    Registering an existing name raises :class:`ModelSpecError` unless ``replace`` is true.
    """
    if not isinstance(spec, ModelSpec):
        raise ModelSpecError(f"register() takes a ModelSpec, not {type(spec).__name__}.")
    key = spec.name.strip().lower()
    if ":" in key or "@" in key or any(c.isspace() for c in key):
        raise ModelSpecError(f"Registered model names may not contain ':', '@' or spaces: {spec.name!r}.")
    if key in _REGISTRY and not replace and _REGISTRY[key] != spec:
        raise ModelSpecError(f"A model named {spec.name!r} is already registered.")
    _REGISTRY[key] = spec
    return spec


def list_models() -> list[ModelSpec]:
    """The registered specs, in registration order (the default model first)."""
    return list(_REGISTRY.values())


register(
    ModelSpec(
        name="bioclip",
        source="hf-hub:imageomics/bioclip",
        description="BioCLIP (Stevens et al. 2024): open_clip ViT-B/16, 224 px, 512-d, trained on TreeOfLife-10M.",
    )
)
register(
    ModelSpec(
        name="bioclip-2",
        source="hf-hub:imageomics/bioclip-2",
        description="BioCLIP 2 (Gu et al. 2025): open_clip ViT-L/14, 224 px, 768-d, trained on TreeOfLife-200M.",
    )
)


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.startswith((".", "~")) or value.lower().endswith(CHECKPOINT_SUFFIXES)


def _registered_hf_spec(source: str) -> ModelSpec | None:
    for spec in _REGISTRY.values():
        if spec.source == source:
            return spec
    return None


def _parse(model: str) -> ModelSpec:
    text = model.strip()
    if not text:
        raise ModelSpecError(f"Empty model string. {_accepted_forms()}")

    registered = _REGISTRY.get(text.lower())
    if registered is not None:
        return registered

    if text.startswith(HF_HUB):
        rest = text[len(HF_HUB) :]
        repo, sep, revision = rest.partition("@")
        if not _REPO_ID.match(repo) or (sep and not _REVISION.match(revision)):
            raise ModelSpecError(f"{text!r} is not hf-hub:ORG/REPO[@REVISION]. {_accepted_forms()}")
        source = HF_HUB + repo
        # hf-hub:imageomics/bioclip and "bioclip" are one model: same name in every manifest.
        spec = _registered_hf_spec(source) or ModelSpec(name=source, source=source)
        return spec.with_revision(revision or None)

    if text.startswith(LOCAL_DIR):
        raw = text[len(LOCAL_DIR) :].strip()
        if not raw:
            raise ModelSpecError(f"{text!r}: empty path after local-dir:. {_accepted_forms()}")
        path = os.path.abspath(os.path.expanduser(raw))
        return ModelSpec(name=LOCAL_DIR + path, source=LOCAL_DIR + path)

    if text.startswith(RANDOM):
        arch = text[len(RANDOM) :].strip()
        if not _ARCH.match(arch):
            raise ModelSpecError(f"{text!r} is not random:ARCH. {_accepted_forms()}")
        return ModelSpec(name=RANDOM + arch, source=RANDOM + arch)

    arch, sep, rest = text.partition(":")
    if sep and _ARCH.match(arch) and rest.strip():
        rest = rest.strip()
        if _looks_like_path(rest):
            if not rest.lower().endswith(CHECKPOINT_SUFFIXES):
                raise ModelSpecError(
                    f"{text!r}: a checkpoint file must end in one of {', '.join(CHECKPOINT_SUFFIXES)}; "
                    f"for a model folder use local-dir:{rest}. {_accepted_forms()}"
                )
            path = os.path.abspath(os.path.expanduser(rest))
            return ModelSpec(name=f"{arch}:{path}", source=arch, pretrained=path)
        if not _TAG.match(rest):
            raise ModelSpecError(f"{text!r}: {rest!r} is not a pretrained tag. {_accepted_forms()}")
        return ModelSpec(name=f"{arch}:{rest}", source=arch, pretrained=rest)

    if not sep and _ARCH.match(text):
        raise ModelSpecError(
            f"{text!r} is neither a registered model name nor a model source. If it is an open_clip "
            f"architecture, say which weights to use: {text}:TAG (a pretrained tag), "
            f"{text}:/path/to/checkpoint.pt, or random:{text} for explicitly random weights. "
            f"{_accepted_forms()}"
        )
    if _looks_like_path(text):
        raise ModelSpecError(
            f"{text!r} looks like a path: use local-dir:{text} for a model folder, or "
            f"ARCH:{text} for a checkpoint file of an open_clip architecture. {_accepted_forms()}"
        )
    raise ModelSpecError(f"Cannot parse model string {text!r}. {_accepted_forms()}")


def resolve_spec(model: str | ModelSpec, revision: str | None = None) -> ModelSpec:
    """Turn a model string (or spec) into a validated :class:`ModelSpec`.

    ``revision`` pins a Hugging Face branch, tag or commit; it is only valid for hf-hub sources,
    and must agree with a revision given in the string (``hf-hub:ORG/REPO@REV``).
    ``hf-hub:imageomics/bioclip`` resolves to the registered ``bioclip`` spec. Paths are made
    absolute. Nothing is checked on disk or on the network here: that happens in ``load_model``.

    Raises :class:`ModelSpecError` listing the accepted forms.
    """
    if isinstance(model, ModelSpec):
        spec = model
    elif isinstance(model, str):
        spec = _parse(model)
    else:
        raise ModelSpecError(f"A model is a string or a ModelSpec, not {type(model).__name__}.")
    if revision is not None:
        if spec.kind != "hf-hub":
            raise ModelSpecError(
                f"A revision ({revision!r}) can only be pinned for hf-hub: models, not {spec.source!r}."
            )
        if spec.revision is not None and spec.revision != revision:
            raise ModelSpecError(
                f"Two different revisions given for {spec.name!r}: {spec.revision!r} and {revision!r}."
            )
        spec = spec.with_revision(revision)
    return spec
