"""Crash safety and concurrent readers, with real processes.

- An indexer process is killed with SIGKILL at random moments (also mid-commit), several times, and
  resumed with the same command: the result has exactly the source's images, no duplicates, and the
  same vectors as an uninterrupted run. The same holds for a run that edits every label and adds
  images, and every image keeps its id through the edits.
- A reader process queries in a loop while a writer process adds images: no query fails, and the
  count it sees only grows.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from imagegen import make_folder

from indexer.store import Collection

pytestmark = pytest.mark.slow

N_IMAGES = 240


def _build_cmd(folder: Path, col: Path, model_source: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from indexer.cli.index import main; main()",
        "build",
        str(folder),
        "--labels",
        str(folder / "labels.csv"),
        "--out",
        str(col),
        "--model",
        model_source,
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--commit-every",
        "8",
        "--workers",
        "1",
        "--no-progress",
        *extra,
    ]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


def _state(col: Path) -> dict[str, np.ndarray]:
    snap = Collection.open(col).snapshot()
    ids, vecs = snap.load_vectors()
    con = snap.connect()
    keys = dict(con.execute("SELECT id, key FROM images").fetchall())
    total, distinct = con.execute("SELECT count(*), count(DISTINCT key) FROM images").fetchall()[0]
    assert total == distinct, "duplicate images"
    assert len(ids) == total, "vectors and metadata disagree"
    return {keys[i]: v for i, v in zip(ids.tolist(), vecs)}


def _ids_and_labels(col: Path) -> dict[str, tuple[int, str]]:
    """key -> (id, catalogNumber) of the live images."""
    con = Collection.open(col).snapshot().connect()
    return {k: (i, c) for k, i, c in con.execute('SELECT key, id, "catalogNumber" FROM images').fetchall()}


def _kill_at_random_moments(cmd: list[str], col: Path, rng: random.Random, attempts: int) -> int:
    """Run ``cmd`` ``attempts`` times, each killed (SIGKILL) at a random instant after it published
    a few commits; after every kill the collection must open. Returns how many runs were killed."""
    kills = 0
    for _attempt in range(attempts):
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = _generation(col) + rng.randint(1, 4)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _generation(col) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        proc.stderr.close()
        if _generation(col):
            _state(col)  # opens, whole images only, vectors and metadata agree
    return kills


def _generation(col: Path) -> int:
    try:
        return Collection.open(col).latest_generation_number()
    except Exception:
        return 0


def test_sigkill_at_random_moments_then_resume_gives_the_uninterrupted_result(tmp_path, tiny_model_source):
    folder = make_folder(tmp_path / "imgs", N_IMAGES)
    ref = tmp_path / "ref"
    done = subprocess.run(
        _build_cmd(folder, ref, tiny_model_source), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    expected = _state(ref)
    assert len(expected) == N_IMAGES

    col = tmp_path / "col"
    rng = random.Random(1234)
    kills = 0
    for _attempt in range(6):
        proc = subprocess.Popen(
            _build_cmd(folder, col, tiny_model_source), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        start_gen = _generation(col)
        target = start_gen + rng.randint(1, 4)
        deadline = time.monotonic() + 120
        # Wait until the run has published a few commits, then kill it at a random instant.
        while proc.poll() is None and _generation(col) < target and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.15))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        proc.stderr.close()
        # After every kill the collection opens, holds only whole images, and searches.
        if _generation(col):
            state = _state(col)
            assert set(state) <= set(expected)
    assert kills >= 3, "the runs ended before they could be killed; make the test's work longer"
    final = subprocess.run(
        _build_cmd(folder, col, tiny_model_source), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert final.returncode == 0, final.stderr
    got = _state(col)
    assert set(got) == set(expected)
    for key, vec in expected.items():
        np.testing.assert_allclose(got[key], vec, atol=2e-3, err_msg=key)
    # Nothing left behind by the killed runs.
    snap = Collection.open(col).snapshot()
    referenced = {p.split("/", 1)[1] for p in snap.generation.referenced_files() if p.startswith("segments/")}
    on_disk = set(os.listdir(col / "segments"))
    assert on_disk <= referenced | {n for n in on_disk if not n.startswith(".")}


READER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from indexer.search.engine import SearchEngine
    col, stop_file = sys.argv[1], sys.argv[2]
    import os
    while not os.path.exists(os.path.join(col, "collection.json")) or not os.listdir(os.path.join(col, "generations")):
        time.sleep(0.01)
    engine = SearchEngine.open(col, refresh_interval=0.0)
    rng = np.random.default_rng(0)
    d = engine.collection.dimension
    while not os.path.exists(stop_file):
        try:
            q = rng.normal(size=(1, d)).astype(np.float32)
            res = engine.search(vector=q[0], k=5)
            n = engine.count()
            print(json.dumps({"ok": True, "count": n, "hits": len(res.hits)}), flush=True)
        except Exception as exc:
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
        time.sleep(0.01)
    """
)


def test_a_reader_process_is_never_blocked_and_sees_the_count_grow(tmp_path, tiny_model_source):
    folder = make_folder(tmp_path / "imgs", 120)
    col = tmp_path / "col"
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(col), str(stop)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        writer = subprocess.run(
            _build_cmd(folder, col, tiny_model_source), env=_env(), capture_output=True, text=True, timeout=600
        )
        assert writer.returncode == 0, writer.stderr
        # Let the reader see the final state, then stop it.
        time.sleep(1.5)
    finally:
        stop.write_text("stop")
        out, err = reader.communicate(timeout=60)
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    failures = [r for r in records if not r["ok"]]
    assert not failures, failures[:3]
    counts = [r["count"] for r in records]
    assert len(counts) > 10, err
    assert all(a <= b for a, b in zip(counts, counts[1:])), "the count went down"
    assert counts[-1] == 120
    assert len(set(counts)) > 2, "the reader never saw intermediate states"


def test_sigkill_while_labels_are_edited_and_images_added_then_resume_keeps_every_id(tmp_path, tiny_model_source):
    folder = make_folder(tmp_path / "imgs", 96)
    col = tmp_path / "col"
    first = subprocess.run(
        _build_cmd(folder, col, tiny_model_source), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stderr
    before = _ids_and_labels(col)
    # Every label edited, a new column, and 64 new images (enough commits that the runs below are
    # killed mid-way on a fast machine too).
    make_folder(folder, 64, start=96)
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], "drawer"])
        w.writeheader()
        w.writerows(
            {**r, "catalogNumber": r["catalogNumber"] + "-fixed", "drawer": f"D{n % 7}"} for n, r in enumerate(rows)
        )
    ref = tmp_path / "ref"
    shutil.copytree(col, ref)
    done = subprocess.run(
        _build_cmd(folder, ref, tiny_model_source), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    expected, expected_labels = _state(ref), _ids_and_labels(ref)
    assert len(expected) == 160

    kills = _kill_at_random_moments(_build_cmd(folder, col, tiny_model_source), col, random.Random(99), 4)
    assert kills >= 2, "the runs ended before they could be killed; make the test's work longer"
    final = subprocess.run(
        _build_cmd(folder, col, tiny_model_source), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert final.returncode == 0, final.stderr
    got, labels = _state(col), _ids_and_labels(col)
    assert labels == expected_labels  # the same ids and labels as the uninterrupted run
    for key, (image_id, _) in before.items():
        assert labels[key] == (image_id, before[key][1] + "-fixed"), key  # ids survived the edits
    assert set(got) == set(expected)
    for key, vec in expected.items():
        np.testing.assert_allclose(got[key], vec, atol=2e-3, err_msg=key)
