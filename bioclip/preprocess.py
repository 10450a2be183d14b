"""Image preprocessing: a typed config and the picklable transform built from it.

Two modes, both turning an RGB PIL image into a normalised float32 tensor (3, size, size):

``squash`` (the project default, for every model)
    pybioclip 2.1's preprocessing for BioCLIP: ``ToTensor``, then ``Resize((size, size),
    antialias=True)`` on the tensor, then ``Normalize(mean, std)``. The aspect ratio is not kept
    but nothing is cut off, so the edges of a tall herbarium sheet or a wide camera-trap frame still
    reach the model, and it is what the model authors' own package feeds BioCLIP.
``crop``
    open_clip's evaluation transform: resize the shortest side to ``size`` (PIL, with
    ``interpolation``), centre crop to ``size`` x ``size``, ``ToTensor``, ``Normalize``.

The config used to build a collection is recorded in it (:meth:`PreprocessConfig.to_dict`) and used
again for image queries. This module imports torchvision only when a transform is first called, so
configs can be read, compared and pickled without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from .errors import BioclipError

if TYPE_CHECKING:  # pragma: no cover
    from .registry import ModelSpec

__all__ = [
    "OPENAI_MEAN",
    "OPENAI_STD",
    "PREPROCESS_MODES",
    "INTERPOLATIONS",
    "DEFAULT_MODE",
    "PreprocessConfig",
    "ImageTransform",
    "make_transform",
    "choose_preprocess",
]

#: OpenAI CLIP's normalisation, used by BioCLIP and BioCLIP 2.
OPENAI_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS_MODES = ("squash", "crop")
INTERPOLATIONS = ("bilinear", "bicubic")
#: The project's one default preprocessing mode (see the module docstring for why).
DEFAULT_MODE = "squash"


@dataclass(frozen=True)
class PreprocessConfig:
    """How images are turned into model input. Frozen; validated on construction (ValueError).

    ``size`` is the square side the model takes; ``mode`` is ``squash`` or ``crop``; ``mean`` and
    ``std`` are per-channel RGB normalisation; ``interpolation`` is ``bilinear`` (torchvision's
    default, what pybioclip's squash uses) or ``bicubic`` (open_clip's default for ``crop``).
    """

    size: int = 224
    mode: str = DEFAULT_MODE
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= 8192:
            raise ValueError(f"PreprocessConfig.size must be an int in 1..8192, not {self.size!r}.")
        if self.mode not in PREPROCESS_MODES:
            raise ValueError(f"PreprocessConfig.mode must be one of {PREPROCESS_MODES}, not {self.mode!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"PreprocessConfig.interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}."
            )
        # Lists (from JSON) become tuples so that configs compare equal and stay hashable.
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        object.__setattr__(self, "std", _triple("std", self.std))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"PreprocessConfig.std must be positive, not {self.std!r}.")

    @property
    def draft_size(self) -> tuple[int, int]:
        """(width, height) a decoder may shrink a big image to, at least, before the transform
        (JPEG draft mode, ``Image.reduce``) with no visible change to the model input."""
        return (2 * self.size, 2 * self.size)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples as lists); :meth:`from_dict` reads it back."""
        d = asdict(self)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """Build from a dict such as :meth:`to_dict`'s. Missing keys take the defaults; unknown
        keys raise ValueError naming them (a manifest written by a newer version must not be
        silently misread)."""
        if not isinstance(d, Mapping):
            raise ValueError(f"A preprocessing config is a mapping, not {type(d).__name__}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown preprocessing config key(s) {unknown}; known keys are {sorted(known)}.")
        return cls(**dict(d))


def _triple(name: str, value: Any) -> tuple[float, float, float]:
    try:
        items = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"PreprocessConfig.{name} must be three numbers, not {value!r}.") from None
    if len(items) != 3 or not all(math.isfinite(v) for v in items):
        raise ValueError(f"PreprocessConfig.{name} must be three finite numbers, not {value!r}.")
    return items[0], items[1], items[2]


class ImageTransform:
    """RGB PIL image -> float32 tensor (3, size, size), as :class:`PreprocessConfig` says.

    Picklable (it holds only the config), so it can be sent to decode worker processes. An image
    in another mode is converted with ``Image.convert("RGB")`` first, as open_clip does; decoders
    that care about alpha, 16-bit or CMYK should convert properly before calling this.
    """

    __slots__ = ("config",)

    def __init__(self, config: PreprocessConfig):
        if not isinstance(config, PreprocessConfig):
            raise TypeError(f"ImageTransform takes a PreprocessConfig, not {type(config).__name__}.")
        self.config = config

    def __call__(self, image: Any) -> Any:
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        cfg = self.config
        if getattr(image, "mode", "RGB") != "RGB":
            image = image.convert("RGB")
        interpolation = InterpolationMode(cfg.interpolation)
        if cfg.mode == "squash":
            # pybioclip's order: tensor first, then an antialiased resize of the tensor.
            tensor = TF.to_tensor(image)
            tensor = TF.resize(tensor, [cfg.size, cfg.size], interpolation=interpolation, antialias=True)
        else:
            # open_clip's eval order: PIL resize of the shortest side, centre crop, then tensor.
            image = TF.resize(image, cfg.size, interpolation=interpolation)
            image = TF.center_crop(image, [cfg.size, cfg.size])
            tensor = TF.to_tensor(image)
        return TF.normalize(tensor, mean=list(cfg.mean), std=list(cfg.std))

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config.to_dict()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = PreprocessConfig.from_dict(state["config"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageTransform) and other.config == self.config

    def __hash__(self) -> int:
        return hash(self.config)

    def __repr__(self) -> str:
        return f"ImageTransform({self.config!r})"


def make_transform(cfg: PreprocessConfig) -> ImageTransform:
    """The picklable PIL -> tensor transform for ``cfg`` (see :class:`ImageTransform`)."""
    return ImageTransform(cfg)


def choose_preprocess(
    preprocess: str | PreprocessConfig | Mapping[str, Any] | None,
    spec: ModelSpec,
    oc_cfg: Mapping[str, Any],
) -> PreprocessConfig:
    size = oc_cfg.get("size", 224)
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise BioclipError(f"Model {spec.name!r} takes non-square images {size}; not supported.")
        size = size[0]
    size = int(size)
    if isinstance(preprocess, Mapping):
        preprocess = PreprocessConfig.from_dict(preprocess)
    if isinstance(preprocess, PreprocessConfig):
        if preprocess.size != size:
            raise ValueError(
                f"Preprocessing size {preprocess.size} does not match model {spec.name!r}, which takes {size} px."
            )
        return preprocess
    mode = preprocess if preprocess is not None else (spec.preprocess or DEFAULT_MODE)
    if mode not in PREPROCESS_MODES:
        raise ValueError(f"Preprocessing mode must be one of {PREPROCESS_MODES}, not {mode!r}.")
    if mode == "squash":
        # pybioclip's squash: torchvision's Resize default, bilinear with antialias.
        interpolation = "bilinear"
    else:
        interpolation = oc_cfg.get("interpolation") or "bicubic"
        if interpolation not in INTERPOLATIONS:
            interpolation = "bicubic"  # open_clip uses bicubic for anything else at inference
    return PreprocessConfig(
        size=size,
        mode=mode,
        mean=_per_channel(oc_cfg.get("mean"), OPENAI_MEAN),
        std=_per_channel(oc_cfg.get("std"), OPENAI_STD),
        interpolation=interpolation,
    )


def _per_channel(value: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return (float(value),) * 3  # open_clip allows one number for all channels
    return _triple("mean/std", value)
