"""Peak memory of indexing 1,000 vs 10,000 images: it must not grow with the collection.

    python bench/peak_memory.py [--small 1000] [--large 10000]

Runs ``bioclip-index build`` (tiny random model, CPU, decode workers as chosen by the indexer) as a
subprocess on folders of generated images and samples the proportional set size (PSS: shared pages
counted once across the main process and its decode workers) of the whole process tree every 20 ms.
Prints both peaks and their ratio (target: large / small < 1.2), plus a baseline measured in the same
run: the same command on the small folder a second time, when it encodes nothing (start-up, model and
libraries only), so the growth attributable to the work itself is visible.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mb(pid: int) -> float:
    todo, total = [pid], 0
    while todo:
        p = todo.pop()
        total += _pss_kb(p)
        todo += _children(p)
    return total / 1024


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """(peak PSS of the process tree in MB, seconds)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_pss_mb(proc.pid))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"build failed: {err.decode()[-2000:]}")
    return peak, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=10000)
    args = ap.parse_args()
    from imagegen import make_folder

    from bioclip.testing import write_random_model

    work = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    try:
        model = write_random_model(work / "tiny")
        t0 = time.perf_counter()
        small = make_folder(work / "small", args.small)
        large = make_folder(work / "large", args.large)
        print(
            f"generated {args.small} + {args.large} images in {time.perf_counter() - t0:.0f}s; "
            f"{os.cpu_count()} cores; sampling PSS of the build process tree every 20 ms"
        )

        def cmd(folder: Path, out: Path) -> list[str]:
            return [
                sys.executable,
                "-c",
                "from indexer.cli.index import main; main()",
                "build",
                str(folder),
                "--labels",
                str(folder / "labels.csv"),
                "--out",
                str(out),
                "--model",
                f"local-dir:{model}",
                "--device",
                "cpu",
                "--no-progress",
                "-q",
            ]

        p_small, s_small = run_measured(cmd(small, work / "col-small"))
        p_large, s_large = run_measured(cmd(large, work / "col-large"))
        p_idle, s_idle = run_measured(cmd(small, work / "col-small"))  # nothing to encode: the baseline
        print(f"{'run':34s} {'peak PSS MB':>12s} {'seconds':>8s}")
        print(f"{'baseline (rerun, encodes nothing)':34s} {p_idle:12.0f} {s_idle:8.1f}")
        print(f"{f'{args.small:,} images':34s} {p_small:12.0f} {s_small:8.1f}")
        print(f"{f'{args.large:,} images':34s} {p_large:12.0f} {s_large:8.1f}")
        ratio = p_large / p_small
        print(
            f"peak ratio {args.large:,} / {args.small:,}: {ratio:.3f} (target < 1.2: {'met' if ratio < 1.2 else 'MISSED'}); "
            f"above baseline: {p_small - p_idle:.0f} MB vs {p_large - p_idle:.0f} MB"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
