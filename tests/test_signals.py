"""Signals from service managers, with real process trees.

- SIGTERM to a build (to its whole process group, as systemd sends it, or to the build process
  alone, as ``docker stop`` and Kubernetes do) commits the work in progress, exits with status 143
  and one line; the same command resumes and encodes only what was not committed.
- ``bioclip-app`` is the Streamlit server itself (it execs Streamlit): SIGTERM or SIGKILL to the
  process it started as leaves no server behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from imagegen import make_folder

from indexer.store import Collection

pytestmark = pytest.mark.slow

N_IMAGES = 160


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return env


def _build_cmd(folder: Path, col: Path, model_source: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from indexer.cli.index import main; main()",
        "build",
        str(folder),
        "--out",
        str(col),
        "--model",
        model_source,
        "--device",
        "cpu",
        "--batch-size",
        "4",
        "--workers",
        "1",
        # No commit by size or time: whatever is in the collection after a SIGTERM was committed
        # by the SIGTERM itself.
        "--commit-every",
        "1000000",
        "--commit-seconds",
        "100000",
        *extra,
    ]


class _Stderr:
    """Reads a process's stderr in a thread; ``progress()`` is the last images done tqdm showed."""

    def __init__(self, proc: subprocess.Popen):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        while True:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                return
            self.text += chunk.decode("utf-8", "replace")

    def progress(self) -> int:
        done = re.findall(r"indexing:[^\r\n]*?\|\s*(\d+)/\d+", self.text)
        return int(done[-1]) if done else 0

    def join(self) -> str:
        self._thread.join(timeout=30)
        return self.text


def _stop_midway(cmd: list[str], signal_group: bool) -> tuple[int, int, str]:
    """Run ``cmd``, send SIGTERM once it has done some images; (exit status, images seen done, stderr)."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    err = _Stderr(proc)
    deadline = time.monotonic() + 300
    while proc.poll() is None and err.progress() < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    seen = err.progress()
    assert proc.poll() is None, "the build ended before it could be stopped: " + err.join()[-2000:]
    if signal_group:
        os.killpg(proc.pid, signal.SIGTERM)  # systemd: every process of the service
    else:
        proc.send_signal(signal.SIGTERM)  # docker stop, Kubernetes: the main process
    status = proc.wait(timeout=120)
    return status, seen, err.join()


def test_sigterm_commits_the_work_in_progress_and_the_same_command_resumes(tmp_path, tiny_model_source):
    folder = make_folder(tmp_path / "imgs", N_IMAGES)
    col = tmp_path / "col"
    cmd = _build_cmd(folder, col, tiny_model_source, "--progress")
    committed = 0
    for signal_group in (True, False):
        status, seen, stderr = _stop_midway(cmd, signal_group)
        assert status == 143, stderr[-3000:]
        assert "stopped (SIGTERM); committed work is kept and the same command resumes it" in stderr
        assert "Traceback" not in stderr and "killed by signal" not in stderr
        gen = Collection.open(col).latest_generation()
        # Everything done when the signal came was committed (nothing was, before it).
        assert gen.images >= committed + seen and gen.images < N_IMAGES
        committed = gen.images
    done = subprocess.run(
        _build_cmd(folder, col, tiny_model_source, "--json"), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["encoded"] == N_IMAGES - committed and report["images"] == N_IMAGES
    con = Collection.open(col).snapshot().connect()
    assert con.execute("SELECT count(*), count(DISTINCT key) FROM images").fetchall()[0] == (N_IMAGES, N_IMAGES)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_bioclip_app_stops_the_server(tmp_path, tiny_model_source, sig):
    from imagegen import make_folder as mk

    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource

    folder = mk(tmp_path / "imgs", 2)
    build(tmp_path / "col", [FolderSource(folder)], model_name=tiny_model_source, options=BuildOptions(workers=0))
    port = _free_port()
    app = subprocess.Popen(
        [sys.executable, "-c", "from indexer.cli.app import main; main()", str(tmp_path / "col"), "--port", str(port)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not _answers(port) and app.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _answers(port), app.stderr.read().decode() if app.poll() is not None else "the app did not start"
        # The server is the process bioclip-app started as, with no process of its own left over.
        assert _descendants(app.pid) == []
        app.send_signal(sig)
        app.wait(timeout=60)
        assert not _answers(port)
    finally:
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGKILL)
            app.wait()
        app.stderr.close()
