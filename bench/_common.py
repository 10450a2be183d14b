"""Shared helpers for the benchmarks: synthetic embeddings, memory readings, timing, tables."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def clustered_embeddings(
    n: int,
    d: int,
    *,
    seed: int = 0,
    out: np.ndarray | None = None,
    per_cluster: int = 1000,
    chunk: int = 65_536,
) -> np.ndarray:
    """n L2-normalised embeddings shaped like an image collection's, written chunk by chunk.

    A shared "cone" direction (CLIP embeddings all lie in a narrow cone), genera, species within
    genera (one per ``per_cluster`` vectors on average, sizes Pareto-skewed like taxa in a museum) and
    per-image noise, all drawn with one decaying spectrum (variance ~ 1/i over a random rotation,
    intrinsic dimension ~25). Species overlap, so neighbours cross cluster borders: at 200K x 512,
    IVF1024 needs nprobe ~8-16 for recall@10 0.95, and random pairs have cosine ~0.3 while the 10th
    neighbour has ~0.9, as with real CLIP image embeddings.

    ``out`` (e.g. a float16 ``np.memmap`` of shape (n, d)) receives the rows; memory stays at one
    chunk. Deterministic for a given seed, chunk size aside.
    """
    rng = np.random.default_rng(seed)
    n_species = max(8, n // per_cluster)
    n_genera = max(2, n_species // 8)
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    spectrum = np.arange(1, d + 1) ** -0.5
    basis = ((spectrum / np.linalg.norm(spectrum))[:, None] * rotation.T).astype(np.float32)
    cone = rng.standard_normal(d)
    cone /= np.linalg.norm(cone)
    genera = rng.standard_normal((n_genera, d)) @ basis
    species = (
        0.8 * cone + genera[rng.integers(0, n_genera, n_species)] + 0.6 * (rng.standard_normal((n_species, d)) @ basis)
    )
    sizes = rng.pareto(1.2, n_species) + 1.0
    probs = sizes / sizes.sum()
    if out is None:
        out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        labels = rng.choice(n_species, size=m, p=probs)
        x = species[labels].astype(np.float32) + 0.6 * (rng.standard_normal((m, d), dtype=np.float32) @ basis)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def memory_mib() -> dict[str, float]:
    """This process's resident memory in MiB: anonymous (heap) and file-backed (mapped files)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:", "VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) / 1024
    return out


def latency_ms(fn: Callable[[int], object], count: int, warmup: int = 5) -> tuple[float, float]:
    """(p50, p99) in ms of fn(i) for i in range(count), one call at a time."""
    for i in range(min(warmup, count)):
        fn(i)
    times = []
    for i in range(count):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 100_000:
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def machine() -> str:
    """The CPU (model, bf16 capability), its cores and how busy they were, and the libraries' versions."""
    import faiss

    return (
        f"{cpu_description()}; {platform.machine()}, {load_average()}; python {platform.python_version()}, "
        f"numpy {np.__version__}, faiss {faiss.__version__} ({faiss.get_compile_options().strip()})"
    )


def cpu_bf16() -> str:
    """The CPU's model and bf16 capability, as the indexer's precision choice sees them."""
    from bioclip.precision import detect_cpu_bf16

    return detect_cpu_bf16().summary()


def load_average() -> str:
    """How busy the machine was (other processes compete for its cores)."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def file_mib(path: Path) -> float:
    return path.stat().st_size / 2**20


_LOAD_PROBE = """
import json, sys
import numpy as np
from indexer.ann import AnnIndex
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
base = anon()
index = AnnIndex.load(sys.argv[1], mmap=sys.argv[2] == "1")
loaded = anon()
q = np.random.default_rng(0).standard_normal((50, index.dimension)).astype(np.float32)
q /= np.linalg.norm(q, axis=1, keepdims=True)
for row in q:
    index.search(row[None], 10)
print(json.dumps({"load_mib": loaded - base, "after_search_mib": anon() - base}))
"""


def index_ram_mib(path: Path, *, mmap: bool = False) -> dict[str, float]:
    """Anonymous resident memory an index takes in a fresh process: after loading, and after 50
    queries (without vector_lookup). File-backed pages of a memory-mapped index are not counted."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_PROBE, str(path), "1" if mmap else "0"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_description() -> str:
    """The CPU model and its bf16 capability (from /proc/cpuinfo; 'unknown' elsewhere)."""
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown CPU":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    bf16 = [f for f in ("amx_bf16", "avx512_bf16", "bf16") if f in flags]
    return f"{model}; bf16: {', '.join(bf16) if bf16 else 'none'}"
