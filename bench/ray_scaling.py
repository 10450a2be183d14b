"""Build throughput of the Ray executor against the local executor, on this machine's CPUs.

    python bench/ray_scaling.py [--images 120] [--rounds 2] [--cpus 2] [--size 640x480] [--model tiny|ViT-B-16]

Model: the tests' tiny random model (``--model tiny``, decode-bound) or random weights of BioCLIP's
architecture (``--model ViT-B-16``, encode-bound). Images: generated JPEGs of ``--size``. Each
executor builds a collection of ``n`` and of ``3n`` images (fresh collections, no ANN index, model
loaded once in this process, Ray started once with ``--cpus`` CPUs and warmed up by one small
build before timing), ``--rounds`` times each; medians. The difference between the two
builds is the marginal cost of ``2n`` images, free of fixed costs (for Ray: starting the encoder
actor and loading the model in it, a few seconds per build). Printed: images/s per build, the
marginal images/s, and the ratio ray / local of each. Both executors use their defaults.

On one machine the Ray executor cannot beat the local one (same cores, plus serialisation through
the object store); it exists to spread encoding over many GPUs. What this measures is its
overhead: the marginal ratio is the fraction of the local executor's speed it keeps.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def make_images(dest: Path, n: int, size: tuple[int, int]) -> Path:
    from imagegen import picture

    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        picture(i, size).save(dest / f"img_{i:05d}.jpg", quality=90)
    return dest


def timed_build(folder: Path, out: Path, model, executor: str) -> float:
    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    report = build(out, [FolderSource(folder)], model=model, options=BuildOptions(executor=executor, build_index=False))
    seconds = time.perf_counter() - t0
    if report.failed:
        raise SystemExit(f"{executor}: {report.failed} failures: {report.failed_by_reason}")
    print(f"  {executor:5s} {report.encoded:5d} images in {seconds:6.2f} s", flush=True)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=120, help="n; the second build has 3n")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray (keep it at the machine's share)")
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--model", default="tiny", choices=["tiny", "ViT-B-16"])
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    import ray
    import torch

    from bioclip import load_model
    from bioclip.testing import write_random_model

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    ray_tmp = tempfile.mkdtemp(prefix="ray-")
    try:
        source = f"local-dir:{write_random_model(work / 'tiny')}" if args.model == "tiny" else "random:ViT-B-16"
        model = load_model(source, device="cpu")
        n = args.images
        small = make_images(work / "small", n, size)
        large = make_images(work / "large", 3 * n, size)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, ray {ray.__version__}"
        )
        print(f"model {args.model}; {n} and {3 * n} generated {size[0]}x{size[1]} JPEGs; Ray with {args.cpus} CPUs")
        runs: dict[str, list[tuple[float, float]]] = {"local": [], "ray": []}
        # All local builds before Ray starts: with local builds (which fork decode workers) between
        # Ray builds in one process, a later Ray call hung twice here (Ray 2.60); a fork in a process
        # that holds Ray's gRPC connections is the likely cause. Production never mixes the two.
        for _ in range(args.rounds):
            runs["local"].append(
                (
                    timed_build(small, work / "local-small", model, "local"),
                    timed_build(large, work / "local-large", model, "local"),
                )
            )
        ray.init(
            address="local",
            num_cpus=args.cpus,
            num_gpus=0,
            include_dashboard=False,
            object_store_memory=300 * 1024 * 1024,
            _temp_dir=ray_tmp,
            configure_logging=False,
            log_to_driver=False,
        )
        try:
            warm = make_images(work / "warm", 8, size)
            timed_build(warm, work / "warm-col", model, "ray")  # Ray's workers started, imports done
            for _ in range(args.rounds):
                runs["ray"].append(
                    (
                        timed_build(small, work / "ray-small", model, "ray"),
                        timed_build(large, work / "ray-large", model, "ray"),
                    )
                )
        finally:
            ray.shutdown()
        times = {
            executor: (statistics.median(t for t, _ in r), statistics.median(t for _, t in r))
            for executor, r in runs.items()
        }
        print()
        print(f"{'executor':9s} {'n/s':>8s} {'3n/s':>8s} {'marginal/s':>11s}")
        rates = {}
        for executor, (t1, t3) in times.items():
            marginal = 2 * n / (t3 - t1) if t3 > t1 else float("nan")
            rates[executor] = (n / t1, 3 * n / t3, marginal)
            print(f"{executor:9s} {n / t1:8.1f} {3 * n / t3:8.1f} {marginal:11.1f}")
        r, loc = rates["ray"], rates["local"]
        print(f"ratio ray/local: n {r[0] / loc[0]:.2f}, 3n {r[1] / loc[1]:.2f}, marginal {r[2] / loc[2]:.2f}")
        print(
            f"(images/s of whole builds, medians of {args.rounds} rounds, model already loaded here; "
            "marginal = 2n / (t(3n) - t(n)))"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
