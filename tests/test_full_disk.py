"""A full disk, for real: a collection on a small tmpfs (mounted in a private mount namespace, so
nothing outlives the test), filled up between two builds.

The build that runs out of space ends with one line naming the collection and the space it needs
(no traceback), everything committed before is intact, and once there is room the same command
completes the build. Skipped where tmpfs cannot be mounted (no ``unshare``, or neither root nor
user namespaces).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from imagegen import make_folder

pytestmark = pytest.mark.slow

#: Runs inside the namespace, with the tmpfs mounted at argv[1]; prints one JSON object.
DRIVER = textwrap.dedent(
    """
    import json, os, subprocess, sys
    mnt, folder, spare, model = sys.argv[1:5]
    col = os.path.join(mnt, "photos.collection")
    build = [sys.executable, "-c", "from indexer.cli.index import main; main()", "build", folder, "--out", col,
             "--model", model, "--device", "cpu", "--workers", "0", "--commit-every", "16", "--no-progress"]
    out = {}
    def run(name):
        done = subprocess.run(build, capture_output=True, text=True, timeout=600)
        out[name] = {"status": done.returncode, "stderr": done.stderr}
    def count():
        from indexer.store import Collection
        snap = Collection.open(col).snapshot()
        ids, _ = snap.load_vectors()
        con = snap.connect()
        n, distinct = con.execute("SELECT count(*), count(DISTINCT key) FROM images").fetchall()[0]
        assert n == distinct == len(ids), (n, distinct, len(ids))
        return n
    os.makedirs(os.path.join(folder, "later"), exist_ok=True)
    run("first")
    out["first_count"] = count()
    # Fill the disk, leaving a few pages, then add images the collection has no room for.
    filler = os.path.join(mnt, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\\0" * 65536)
                f.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, os.path.getsize(filler) - 12 * 1024))
    for name in sorted(os.listdir(spare)):
        os.rename(os.path.join(spare, name), os.path.join(folder, "later", name))
    run("full")
    out["full_count"] = count()
    out["leftovers"] = sorted(n for n in os.listdir(os.path.join(col, "segments")) if n.startswith("."))
    os.remove(filler)
    run("resumed")
    out["resumed_count"] = count()
    print(json.dumps(out))
    """
)


def _namespace_prefix() -> list[str] | None:
    """The command that runs the rest in a private mount namespace where we may mount tmpfs."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (
        ["unshare", "--mount", "--propagation", "private"],
        ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"],
    ):
        probe = subprocess.run(
            [*prefix, "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d && umount $d"],
            capture_output=True,
        )
        if probe.returncode == 0:
            return prefix
    return None


def test_a_full_disk_ends_the_build_with_one_line_and_committed_work_intact(tmp_path, tiny_model_source):
    prefix = _namespace_prefix()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (needs unshare with root or user namespaces)")
    folder = make_folder(tmp_path / "imgs", 24, labels=False)
    spare = tmp_path / "spare"
    spare.mkdir()
    for path in sorted(make_folder(tmp_path / "spare-src", 40, start=100, labels=False).rglob("*.png")):
        shutil.copy(path, spare / path.name)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    script = f'mount -t tmpfs -o size=2m tmpfs "{mnt}" && exec "{sys.executable}" "{tmp_path / "driver.py"}" "$@"'
    done = subprocess.run(
        [*prefix, "sh", "-c", script, "sh", str(mnt), str(folder), str(spare), tiny_model_source],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["first"]["status"] == 0, out["first"]["stderr"]
    assert out["first_count"] == 24

    full = out["full"]
    lines = [line for line in full["stderr"].splitlines() if line.strip()]
    assert full["status"] == 1, full["stderr"]
    assert len(lines) == 1 and "Traceback" not in full["stderr"], full["stderr"]
    collection = str(mnt / "photos.collection")
    assert lines[0].startswith(f"Error: the disk holding the collection {collection} is full:"), lines[0]
    assert " needs about " in lines[0] and " is free; free at least " in lines[0]
    assert "everything committed before is intact" in lines[0]
    assert out["full_count"] == 24  # committed work intact, nothing half-written visible
    assert out["leftovers"] == []  # no temporary files left taking space

    assert out["resumed"]["status"] == 0, out["resumed"]["stderr"]
    assert out["resumed_count"] == 64
