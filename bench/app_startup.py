"""Benchmark: the app from its start to a usable search box, and to the first page of a query, in a
real headless Chromium, against the app as it was before issue 18 (git commit 7a0febd, checked out
into a temporary ``git worktree`` in the same run).

Each measurement is a fresh ``streamlit run search_ui/app.py`` process (the tree's own code first on
``PYTHONPATH``) on the same small collection (the app tests' 12 generated pictures, the tiny
random-weight model: its load is dominated by importing torch and open_clip, as a real model's
load is by reading its weights), and a browser that opens the page as soon as the server answers
its health check:

- **search box**: process start until the page shows an enabled search box;
- **first page**: process start until the first result card of ``?q=Corvidae`` (a taxon query,
  which needs the model) is on the page.

Runs alternate between the two trees; the figures are medians, the ratio is this tree / baseline
(below 1: faster). The machine (CPU model, bf16 units) and its load are printed: on a shared
machine the absolute times move with the load, the ratio less so.

    python bench/app_startup.py               # 3 runs of each
    python bench/app_startup.py --repeat 5 --baseline 7a0febd
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
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from browserhelp import free_port, make_driver, stop, streamlit_command, wait_healthy  # noqa: E402

LIMIT = 900.0  # seconds a single measurement may take (a loaded 2-core machine is slow)


LAUNCHER = """
import runpy, sys
tree = sys.argv.pop(1)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(type(f), "__module__", "")]
sys.path.insert(0, tree)
for name in [m for m in sys.modules if m.split(".")[0] in ("bioclip", "indexer", "search_ui")]:
    del sys.modules[name]
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def measure(tree: Path, coll: Path, drv, what: str, launcher: Path) -> float:
    """Seconds from starting the app of ``tree`` to ``what`` ("box" or "page") in the browser."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", BIOCLIP_SEARCH_THREADS="1")
    env.pop("BIOCLIP_SEARCH_COLLECTIONS", None)
    app = tree / "search_ui" / "app.py"
    cmd = streamlit_command(
        app, port, [str(coll), "--device", "cpu"], python=[sys.executable, str(launcher), str(tree), "streamlit"]
    )
    probe = launcher.with_name("probe.py")
    probe.write_text("import search_ui, indexer\nprint(search_ui.__file__, indexer.__file__)\n")
    where = subprocess.run(
        [sys.executable, str(launcher), str(tree), "probe"],
        cwd=probe.parent,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(w.startswith(str(tree)) for w in where), f"{tree}'s code is not the one imported: {where}"
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, LIMIT, poll=0.1)
        drv.get(url if what == "box" else f"{url}/?q=Corvidae")
        css = 'input[aria-label="Search"]' if what == "box" else '[data-testid="stCaptionContainer"]'
        while time.monotonic() - t0 < LIMIT:
            if what == "box":
                boxes = drv.find_elements("css selector", css)
                if boxes and boxes[0].is_enabled():
                    return time.monotonic() - t0
            elif any("cat. MUS-" in e.text for e in drv.find_elements("css selector", css)):
                return time.monotonic() - t0
            time.sleep(0.05)
        raise RuntimeError(f"{what} did not appear within {LIMIT:.0f} s")
    finally:
        stop(proc, timeout=20)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline", default="7a0febd", help="the commit to compare with")
    args = ap.parse_args()

    from _common import machine
    from test_app_fixtures import build_app_collection

    from bioclip.testing import write_random_model

    work = Path(tempfile.mkdtemp(prefix="bench-app-startup-"))
    base_tree = work / "baseline"
    try:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), args.baseline],
            check=True,
            capture_output=True,
        )
        launcher = work / "launch.py"
        launcher.write_text(LAUNCHER)
        model = write_random_model(work / "tiny")
        coll = build_app_collection(work / "data", model).path
        drv = make_driver()
        times: dict[tuple[str, str], list[float]] = {}
        try:
            for _ in range(args.repeat):
                for what in ("box", "page"):
                    for name, tree in (("baseline", base_tree), ("this tree", ROOT)):
                        times.setdefault((name, what), []).append(measure(tree, coll, drv, what, launcher))
        finally:
            drv.quit()
        print()
        print(f"app start-up in headless Chromium; {machine()}")
        print(f"collection: 12 images, tiny random-weight model; baseline = {args.baseline}; {args.repeat} runs each")
        for what, label in (("box", "start -> usable search box"), ("page", "start -> first page of ?q=Corvidae")):
            b = statistics.median(times[("baseline", what)])
            t = statistics.median(times[("this tree", what)])
            runs = ", ".join(f"{x:.1f}" for x in times[("this tree", what)])
            bruns = ", ".join(f"{x:.1f}" for x in times[("baseline", what)])
            print(f"  {label:38s} baseline {b:6.1f} s [{bruns}]  this tree {t:6.1f} s [{runs}]  ratio {t / b:5.2f}x")
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
