"""Which torch device and precision a model runs on."""

from __future__ import annotations

import torch

from .errors import DeviceError

__all__ = ["PRECISIONS", "check_precision", "pick_device", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def pick_device(device: str = "auto") -> str:
    """The torch device string to use for ``device``.

    ``auto``: cuda, then mps, then cpu. ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` are checked
    and returned as given; one this machine does not have raises :class:`DeviceError`.
    """
    wanted = (device or "auto").strip().lower()
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu"
    if wanted == "cpu":
        return "cpu"
    if wanted == "cuda" or wanted.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"Device {device!r} was asked for but CUDA is not available (torch {torch.__version__}, "
                f"built with CUDA {torch.version.cuda or 'none'}). Use --device cpu or auto."
            )
        if ":" in wanted:
            index = wanted.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise DeviceError(f"Device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
        return wanted
    if wanted == "mps":
        if not _mps_available():
            raise DeviceError("Device 'mps' was asked for but Apple MPS is not available. Use cpu or auto.")
        return "mps"
    raise DeviceError(f"Unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def check_precision(precision: str | None) -> str:
    """``precision`` lower-cased (None: ``auto``); one not in :data:`PRECISIONS` raises DeviceError."""
    wanted = (precision or "auto").strip().lower()
    if wanted not in PRECISIONS:
        raise DeviceError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    return wanted


def resolve_precision(precision: str, device: str) -> str:
    """``fp32``, ``bf16`` or ``fp16`` for ``precision`` on ``device``.

    ``auto``: on cuda bf16 (fp16 where the GPU has no bf16); on mps fp32; on cpu bf16 where the CPU
    has bf16 units or bf16 instructions (:func:`bioclip.precision.detect_cpu_bf16`), else fp32 --
    where bf16 is not certain to pay, :func:`bioclip.load_model` settles it by measuring once
    (:func:`bioclip.precision.decide_cpu_precision`). bf16 means bf16 weights; fp16 means fp16
    weights on a CPU and fp32 weights under fp16 autocast on a GPU.
    """
    wanted = check_precision(precision)
    if wanted != "auto":
        return wanted
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu":
        from .precision import detect_cpu_bf16

        return "fp32" if detect_cpu_bf16().verdict == "no" else "bf16"
    return "fp32"
