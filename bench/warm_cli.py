"""A warm ``bioclip-search`` text query (through its auto-started background server) against a cold
one (``--no-server``: import torch, load the model, open the collection), in the same run.

    python bench/warm_cli.py                 # ViT-B-16 random weights (BioCLIP's architecture)
    python bench/warm_cli.py --cold 5 --warm 30

The collection: ``--images`` generated pictures indexed with ``random:ViT-B-16`` (the cost of
BioCLIP's model without its weights). Every query is the real console script in a fresh process,
with a text never asked before (no text-cache hit on the server). Reported: the cold query's
median, the first query that starts the server, the warm queries' p50/p90, and warm p50 / cold
median (goal: <= 0.02).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from _common import cpu_description, machine, print_table  # noqa: E402

MODEL = "random:ViT-B-16"
WORDS = ["raven", "beetle", "orchid", "moth", "frog", "fern", "finch", "snail", "lizard", "sedge", "shrew", "crow"]


def script(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed (pip install -e .)")
    return found


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return dt, r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--cold", type=int, default=3, help="cold queries (each loads the model)")
    ap.add_argument("--warm", type=int, default=20, help="warm queries")
    args = ap.parse_args()

    from imagegen import make_folder

    work = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    runtime = Path(tempfile.mkdtemp(prefix="bcs-rt-"))
    env = dict(os.environ, BIOCLIP_SEARCH_RUNTIME_DIR=str(runtime), BIOCLIP_SEARCH_NO_SERVER="0")
    env.pop("BIOCLIP_SEARCH_SERVER", None)
    search = script("bioclip-search")
    try:
        folder = make_folder(work / "imgs", args.images)
        col = work / "col"
        build = [script("bioclip-index"), "build", str(folder), "--labels", str(folder / "labels.csv")]
        subprocess.run([*build, "--out", str(col), "--model", MODEL, "-q"], check=True, env=env, timeout=1800)

        queries = iter(f"a {a} {b} {i}" for i in range(10_000) for a in WORDS for b in WORDS)
        cold = [timed([search, str(col), next(queries), "--no-server"], env)[0] for _ in range(args.cold)]
        start, first = timed([search, str(col), next(queries)], env)
        assert "starting a background server" in first.stderr, first.stderr
        warm = []
        for _ in range(args.warm):
            dt, r = timed([search, str(col), next(queries)], env)
            assert "starting a background server" not in r.stderr
            warm.append(dt)
        same_cold = timed([search, str(col), "a raven on a branch", "--json", "--no-server"], env)[1].stdout
        same_warm = timed([search, str(col), "a raven on a branch", "--json"], env)[1].stdout
    finally:
        subprocess.run([script("bioclip-serve"), "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(runtime, ignore_errors=True)

    cold_med = statistics.median(cold)
    warm_p50 = statistics.median(warm)
    warm_p90 = sorted(warm)[int(0.9 * (len(warm) - 1))]
    print(f"machine: {machine()}")
    print(f"cpu: {cpu_description()}")
    print(f"collection: {args.images} images, {MODEL}; text queries, each a new text, each a fresh process")
    print_table(
        "bioclip-search text query, seconds (the whole command: interpreter start to exit)",
        ["path", "runs", "median", "min", "max"],
        [
            ["cold: --no-server", len(cold), cold_med, min(cold), max(cold)],
            ["first: starts the server", 1, start, start, start],
            ["warm: background server", len(warm), warm_p50, min(warm), max(warm)],
        ],
    )
    print(f"\nwarm p90 {warm_p90 * 1000:.0f} ms; same output warm and cold: {same_cold == same_warm}")
    ratio = warm_p50 / cold_med
    print(f"warm p50 / cold median = {ratio:.4f}  (goal <= 0.02: {'met' if ratio <= 0.02 else 'NOT met'})")


if __name__ == "__main__":
    main()
