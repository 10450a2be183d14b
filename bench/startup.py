"""The fixed cost of a build and of a query: a no-op rebuild and a first text query, against the code
before this round.

    python bench/startup.py [--baseline c8dea1d] [--rounds 3] [--images 48]

Both versions run as a user runs them, each its console script in a fresh Python process: this
checkout, and the baseline commit checked out into a temporary ``git worktree`` (its own code first
on ``PYTHONPATH``), in the same run and interleaved. Model: random weights of BioCLIP's architecture
(ViT-B-16) written as a model folder, loaded through ``local-dir:`` as ``hf-hub:imageomics/bioclip`` is;
images: real photos (../shared/data, ``BIOCLIP_SHARED_DATA``, and the repository's sample). Each version
first builds its own collection of the same images; then, ``--rounds`` times:

  - ``bioclip-index build FOLDER --out COL`` again with nothing new (and whether it wrote a generation);
  - ``bioclip-search COL "a photo of Corvus corax."``: opening the collection, encoding the text (this
    checkout: the text tower exported by the first build, in ONNX Runtime; the baseline: loading the
    model in torch), searching.

Printed: medians in seconds and the ratio this / baseline (goal <= 0.3), the CPU and its bf16 capability,
the machine's load, and where this checkout's first query spends its time. The one-time work of this
checkout's first build (the precision decision of ``--precision auto`` and the export of the text tower,
once per machine and model, cached) is in its first build's time; a first query on a machine without
either (the model loaded in torch) is printed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_bf16, load_average  # noqa: E402
from encode_throughput import real_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUERY = "a photo of Corvus corax."

_PHASES = """
import sys, time, json
t = [time.perf_counter()]
from indexer.search.engine import SearchEngine; t.append(time.perf_counter())
engine = SearchEngine.open(sys.argv[1], device="cpu", refresh_interval=None); t.append(time.perf_counter())
encoder = engine.text_model; t.append(time.perf_counter())
engine.search(sys.argv[2], k=10); t.append(time.perf_counter())
names = ["imports", "open the collection", "text encoder: " + type(encoder).__name__, "first search"]
out = {n: round(b - a, 3) for n, a, b in zip(names, t, t[1:])}
print(json.dumps({**out, "torch imported": "torch" in sys.modules}))
"""


class Version:
    """One version's console scripts, run from its own tree."""

    def __init__(self, name: str, tree: Path, env: dict[str, str]):
        self.name = name
        self.tree = tree
        self.env = {**env, "PYTHONPATH": str(tree)}
        # [project.scripts] of that tree's pyproject.toml (tomllib is Python 3.11+)
        text = (tree / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
        self.scripts = {k: v.split(":") for k, v in re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', text, re.M)}

    def run(self, script: str, *args: str) -> float:
        module, func = self.scripts[script]
        code = f"import sys; from {module} import {func} as m; sys.argv[0] = {script!r}; m()"
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=self.tree, env=self.env, capture_output=True)
        if out.returncode:
            raise RuntimeError(f"{self.name} {script} {' '.join(args)} failed:\n{out.stderr.decode()[-3000:]}")
        return time.perf_counter() - t0


def _generations(col: Path) -> int:
    return len(list((col / "generations").glob("gen-*.json")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="c8dea1d", help="the commit to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=48, help="real photos in the collection")
    args = ap.parse_args()

    print(f"machine: {cpu_bf16()}")
    print(f"at start: {load_average()}")
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    base_tree = work / "baseline"
    env = {**os.environ, "BIOCLIP_SEARCH_CACHE": str(work / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("BIOCLIP_TEXT_ENCODER", None)  # as a user runs it: the text tower exported by the first build
    # A first query in a fresh process, as the issue measures it: not through bioclip-search's warm
    # background server (which would also outlive the bench); the baseline has none anyway.
    env["BIOCLIP_SEARCH_NO_SERVER"] = "1"
    try:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.baseline], check=True
        )
        import open_clip

        from bioclip.testing import write_random_model

        model = f"local-dir:{write_random_model(work / 'model', open_clip.get_model_config('ViT-B-16'))}"
        photos = real_images(work / "all")[: args.images]
        folder = work / "photos"
        for p in photos:
            target = folder / p.relative_to(work / "all")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(p, target)
        versions = [Version("this", ROOT, env), Version(f"baseline {args.baseline}", base_tree, env)]
        cols = {}
        for v in versions:
            col = work / f"col-{v.name.split()[0]}"
            seconds = v.run("bioclip-index", "build", str(folder), "--out", str(col), "--model", model, "-q")
            cols[v.name] = col
            print(f"{v.name}: first build of {len(photos)} photos {seconds:.1f}s")
        decided = work / "cache" / "precision.json"  # absent where the CPU's flags decided at once
        first_cache = json.loads(decided.read_text()) if decided.is_file() else {}
        times: dict[tuple[str, str], list[float]] = {}
        wrote: dict[str, int] = {}
        for _ in range(args.rounds):
            for v in versions:
                col = cols[v.name]
                before = _generations(col)
                t = v.run("bioclip-index", "build", str(folder), "--out", str(col), "-q")
                wrote[v.name] = wrote.get(v.name, 0) + _generations(col) - before
                times.setdefault((v.name, "no-op rebuild"), []).append(t)
                t = v.run("bioclip-search", str(col), QUERY, "--device", "cpu")
                times.setdefault((v.name, "first text query"), []).append(t)
        print(f"\n{'command':18s} {'this (s)':>9s} {'baseline (s)':>13s} {'ratio':>6s}  goal")
        this, base = versions[0].name, versions[1].name
        for what in ("no-op rebuild", "first text query"):
            a, b = statistics.median(times[(this, what)]), statistics.median(times[(base, what)])
            print(f"{what:18s} {a:9.2f} {b:13.2f} {a / b:6.2f}  <= 0.3: {'met' if a / b <= 0.3 else 'MISSED'}")
        print(f"(medians of {args.rounds} interleaved runs; each a fresh process)")
        print(f"generations written by {args.rounds} no-op rebuilds: this {wrote[this]}, baseline {wrote[base]}")
        out = subprocess.run(
            [sys.executable, "-c", _PHASES, str(cols[this]), QUERY], cwd=ROOT, env=env, capture_output=True, text=True
        )
        if out.returncode == 0:
            phases = json.loads(out.stdout.strip().splitlines()[-1])
            torch_imported = phases.pop("torch imported")
            print(
                "this checkout's first query, in one process: "
                + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items())
                + f"; torch imported: {torch_imported}"
            )
        for record in first_cache.values():
            print(f"precision decided once by the first build: {record.get('precision')} ({record.get('reason')})")
        cold = work / "cold-cache"
        env_cold = {**env, "BIOCLIP_SEARCH_CACHE": str(cold)}
        cold_run = Version("this, cold cache", ROOT, env_cold)
        t = cold_run.run("bioclip-search", str(cols[this]), QUERY, "--device", "cpu")
        print(
            "a first text query on a machine with neither the precision decided nor the text tower exported "
            f"(the model loaded in torch): {t:.2f}s"
        )
        print(f"at end: {load_average()}")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
