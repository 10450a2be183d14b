"""Which precision a model runs at on a CPU, decided once per machine and model, and cached.

A CPU with bfloat16 matrix units (Intel AMX) runs a ViT several times faster with its weights in
bf16 (``module.to(torch.bfloat16)``; bf16 *autocast* is slower than fp32 there, which is why the
weights themselves are converted). A CPU without them runs bf16 slower than fp32. So ``auto`` on a
CPU reads the CPU's bf16 features (:func:`detect_cpu_bf16`):

- ``amx_bf16``: bf16 matrix units; bf16, once its vectors are checked against fp32;
- ``avx512_bf16`` without AMX, or Arm's ``bf16``: bf16 dot products whose speed depends on the CPU
  and the torch build, so one batch is timed both ways and the faster wins;
- none: fp32, with nothing measured.

The check and the timing run once per machine (CPU, bf16 features, torch version, threads) and model
(source, revision, weights file), on a fixed batch of synthetic photo-like images and a few
prompts: bf16 is kept only where every vector has a cosine of at least :data:`MIN_COSINE` with its
fp32 counterpart. The result is cached in ``precision.json`` in the user's cache folder
(``$BIOCLIP_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/bioclip-search``, else
``~/.cache/bioclip-search``), so later processes pay nothing.

``BIOCLIP_CPU_BF16`` overrides the detection: ``yes`` (treat the CPU as having bf16 units),
``no`` (as lacking them), ``probe`` (time it), ``auto`` or unset (detect).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DeviceError

__all__ = [
    "ENV_BF16",
    "ENV_CACHE",
    "MIN_COSINE",
    "CpuBf16",
    "detect_cpu_bf16",
    "cache_file",
    "cache_folder",
    "decide_cpu_precision",
    "torch_dtype",
]

log = logging.getLogger(__name__)

ENV_BF16 = "BIOCLIP_CPU_BF16"
ENV_CACHE = "BIOCLIP_SEARCH_CACHE"
#: bf16 is used only where every probe vector keeps at least this cosine to fp32.
MIN_COSINE = 0.9999
#: Where bf16 speed is uncertain, bf16 must be at least this much faster than fp32 to be chosen.
MIN_SPEEDUP = 1.1
_FORCED = {"yes": "yes", "1": "yes", "true": "yes", "on": "yes", "no": "no", "0": "no", "false": "no", "off": "no"}
_X86_FEATURES = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class CpuBf16:
    """What this CPU offers for bf16: its name, the bf16 features found, and the ``verdict``:
    ``yes`` (bf16 matrix units), ``probe`` (bf16 instructions of uncertain speed: time them) or
    ``no``; ``how`` says where that came from."""

    cpu: str
    features: tuple[str, ...]
    verdict: str
    how: str

    def summary(self) -> str:
        """One line for benchmarks and logs: ``Intel Xeon: amx_bf16, avx512_bf16 (bf16 matrix units)``."""
        what = {"yes": "bf16 matrix units", "probe": "bf16 instructions, speed measured", "no": "no bf16 units"}
        feats = ", ".join(self.features) or "none"
        return f"{self.cpu}: bf16 features {feats} -> {what[self.verdict]} ({self.how})"


def detect_cpu_bf16(env: Mapping[str, str] | None = None) -> CpuBf16:
    """This CPU's bf16 support, from torch's CPU capabilities and /proc/cpuinfo, unless
    ``BIOCLIP_CPU_BF16`` (in ``env``, default ``os.environ``) forces it. Raises DeviceError for a
    value of ``BIOCLIP_CPU_BF16`` it does not understand."""
    env = os.environ if env is None else env
    caps = _torch_capabilities()
    info = _proc_cpuinfo()
    cpu = str(caps.get("cpu_name") or info.get("model name") or platform.processor() or platform.machine())
    flags = set((info.get("flags") or "").split())
    arm = set((info.get("Features") or "").split())
    features = tuple(f for f in _X86_FEATURES if caps.get(f) or f in flags) + (("bf16",) if "bf16" in arm else ())
    forced = (env.get(ENV_BF16) or "auto").strip().lower()
    if forced == "probe":
        return CpuBf16(cpu, features, "probe", f"{ENV_BF16}=probe")
    if forced in _FORCED:
        return CpuBf16(cpu, features, _FORCED[forced], f"{ENV_BF16}={forced}")
    if forced != "auto":
        raise DeviceError(f"{ENV_BF16}={forced!r} is not understood; use auto, yes, no or probe.")
    how = "torch.cpu.get_capabilities" if caps else "/proc/cpuinfo"
    if "amx_bf16" in features:
        return CpuBf16(cpu, features, "yes", how)
    return CpuBf16(cpu, features, "probe" if features else "no", how)


def _torch_capabilities() -> dict[str, Any]:
    """torch.cpu.get_capabilities() (torch >= 2.7), or {} where torch lacks it or fails."""
    try:
        import torch

        get = getattr(torch.cpu, "get_capabilities", None)
        return dict(get()) if callable(get) else {}
    except Exception:  # an old or unusual torch: fall back to /proc/cpuinfo
        return {}


def _proc_cpuinfo() -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo (Linux); {} elsewhere."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in out:
                    out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def torch_dtype(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# --------------------------------------------------------------------------- the cached decision


def cache_folder(env: Mapping[str, str] | None = None) -> Path:
    """The user's bioclip-search cache folder: ``$BIOCLIP_SEARCH_CACHE``, else
    ``$XDG_CACHE_HOME/bioclip-search``, else ``~/.cache/bioclip-search``."""
    env = os.environ if env is None else env
    folder = env.get(ENV_CACHE)
    if not folder:
        base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "bioclip-search")
    return Path(os.path.expanduser(folder))


def cache_file(env: Mapping[str, str] | None = None) -> Path:
    """Where decisions are cached: ``precision.json`` in the user's bioclip-search cache folder."""
    return cache_folder(env) / "precision.json"


#: Runs the probe's images (and texts) through a module at a dtype; returns unit vectors (n, d) float32.
Check = Callable[[Any, Any], list[Any]]


def decide_cpu_precision(
    load: Callable[[], Any], *, identity: str, support: CpuBf16, check: Check
) -> tuple[Any, str, dict[str, Any]]:
    """(module, precision, record) for ``auto`` on a CPU.

    ``load()`` makes the fp32 module (called again only if a probe converted one to bf16 and fp32
    won); ``identity`` names the model's weights; ``check(module, dtype)`` encodes the probe inputs.
    A CPU without bf16 gets fp32 at once; otherwise the cached decision for this machine and model
    is used, or made now (see the module docstring) and cached.
    """
    if support.verdict == "no":
        return load(), "fp32", {"precision": "fp32", "reason": "no bf16 units", "cpu": support.summary()}
    key = _cache_key(identity, support)
    path = cache_file()
    record = _read_cache(path).get(key)
    if isinstance(record, dict) and record.get("precision") in ("fp32", "bf16"):
        module = load()
        if record["precision"] == "bf16":
            module = module.to(torch_dtype("bf16"))
        return module, record["precision"], {**record, "cached": True}
    module = load()
    record = _probe(module, support, check)
    record.update(model=identity, cpu=support.summary(), measured=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    _write_cache(path, key, record)
    if record["precision"] == "fp32":
        module = load()  # the probe left ``module`` in bf16
    log.info(
        "precision on this CPU for %s: %s (%s); cached in %s", identity, record["precision"], record["reason"], path
    )
    return module, record["precision"], record


def _probe(module: Any, support: CpuBf16, check: Check) -> dict[str, Any]:
    """Encode the probe inputs in fp32, convert ``module`` to bf16 in place, encode them again;
    timed (after a warm-up) where the verdict is ``probe``."""
    import torch

    timed = support.verdict == "probe"
    fp32_s, ref = _run(check, module, torch.float32, timed)
    module.to(torch.bfloat16)
    bf16_s, out = _run(check, module, torch.bfloat16, timed)
    # decided on the figures the cache records, so that a record always agrees with its own numbers
    fp32_s, bf16_s = round(fp32_s, 4), round(bf16_s, 4)
    cosine = min(float((a.detach() * b.detach()).sum(dim=-1).min()) for a, b in zip(ref, out))
    record: dict[str, Any] = {"min_cosine": round(cosine, 6), "verdict": support.verdict}
    if timed:
        record.update(fp32_seconds=fp32_s, bf16_seconds=bf16_s)
    if cosine < MIN_COSINE:
        log.warning(
            "bf16 vectors of this model reach a cosine of only %.6f to fp32 (< %s): using fp32", cosine, MIN_COSINE
        )
        record.update(precision="fp32", reason=f"bf16 cosine {cosine:.6f} < {MIN_COSINE}")
    elif timed and bf16_s * MIN_SPEEDUP > fp32_s:
        record.update(precision="fp32", reason=f"bf16 not faster ({bf16_s:.3f}s vs fp32 {fp32_s:.3f}s)")
    else:
        speed = f", {fp32_s / max(bf16_s, 1e-4):.1f}x fp32" if timed else ""
        record.update(precision="bf16", reason=f"bf16 units, cosine {cosine:.6f} to fp32{speed}")
    return record


def _run(check: Check, module: Any, dtype: Any, timed: bool) -> tuple[float, list[Any]]:
    if timed:
        check(module, dtype)  # warm-up: kernels are chosen on the first call
    t0 = time.perf_counter()
    out = check(module, dtype)
    return time.perf_counter() - t0, out


def _cache_key(identity: str, support: CpuBf16) -> str:
    import torch

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = {
        "cpu": support.cpu,
        "features": list(support.features),
        "verdict": support.verdict,
        "torch": torch.__version__,
        "threads": threads,
        "model": identity,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, unreadable or damaged: decide again
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, record: dict[str, Any]) -> None:
    """Add ``record`` under ``key``, atomically (a temporary file renamed into place); a cache that
    cannot be written only costs the probe again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read_cache(path)
        data[key] = record
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".precision-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("could not cache the precision decision in %s (%s)", path, exc)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
