"""The warm command line: the first bioclip-search query starts a background server for the
collection, later ones reuse it, its answers print exactly what --no-server prints, it stops after
its idle timeout, a killed one is replaced, bioclip-serve status/stop manage it, and --server URL
(or $BIOCLIP_SEARCH_SERVER) uses a server of one's choosing."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from imagegen import picture
from servehelp import ROOT, Server, build_collection

pytestmark = pytest.mark.slow

STARTING = "note: starting a background server for"


@pytest.fixture(scope="module")
def col(tmp_path_factory, tiny_model_source):
    root = tmp_path_factory.mktemp("warm")
    path, _ = build_collection(root, tiny_model_source)
    picture(777).save(root / "photo.jpg")
    np.save(root / "q.npy", np.random.default_rng(0).standard_normal(64).astype(np.float32))
    return path, root


def _env(runtime: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, BIOCLIP_SEARCH_NO_SERVER="0", BIOCLIP_SEARCH_RUNTIME_DIR=str(runtime))
    env.setdefault("BIOCLIP_SEARCH_IDLE_MINUTES", "10")  # a server a test leaves behind stops by itself
    env.pop("BIOCLIP_SEARCH_SERVER", None)
    return {**env, **extra}


def run(args, env, *, cmd="indexer.cli.search", timeout=600):
    return subprocess.run(
        [sys.executable, "-m", cmd, *[str(a) for a in args]],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


class _Result:
    def __init__(self, r):
        self.returncode, self.stdout, self.stderr = r.exit_code, r.stdout, r.stderr


def cli(args, env, *, cmd="search"):
    """The command in this process (click's runner), with ``env``: the same code as the console
    script, without an interpreter's start per call; a background server it starts is a real process."""
    from click.testing import CliRunner

    from indexer.cli import search as search_cli
    from indexer.cli import serve as serve_cli

    main = search_cli.main if cmd == "search" else serve_cli.main
    changes = {k: v for k, v in env.items() if os.environ.get(k) != v}
    return _Result(CliRunner(env=changes).invoke(main, [str(a) for a in args]))


def state_of(runtime: Path) -> dict:
    files = list(runtime.glob("*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def wait_gone(pid: int, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not alive(pid)


@pytest.fixture(scope="module")
def warm(col, tmp_path_factory):
    runtime = tmp_path_factory.mktemp("rt")
    env = _env(runtime)
    yield env, runtime
    run(["stop"], env, cmd="indexer.cli.serve")


def test_the_first_query_starts_a_private_server_and_the_next_reuses_it(col, warm):
    path, _ = col
    env, runtime = warm
    first = run([path, "Corvus", "--k", 3], env)
    assert first.returncode == 0, first.stderr
    # the note gives the idle timeout in force (the environment's 10, not the default 30)
    assert STARTING in first.stderr and "(it stops after 10 idle minutes;" in first.stderr, first.stderr
    state = state_of(runtime)
    assert state["collection"] == str(path.resolve()) and alive(state["pid"])
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    sock = Path(state["socket"])
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    second = run([path, "Corvus", "--k", 3], env)
    assert second.returncode == 0 and STARTING not in second.stderr
    assert second.stdout == first.stdout and state_of(runtime)["pid"] == state["pid"]


@pytest.mark.parametrize(
    "args",
    [
        ["Corvus", "--k", "3"],
        ["Corvus", "--json"],
        ["bird", "--where", "country=Kenya", "--taxon", "Corvidae", "--format", "csv"],
        ["bird", "--where", "catalogNumber=CAT-1' OR '1'='1", "--json"],
        ["--id", "3", "--group", "similar", "--group-similarity", "-1", "--k", "2"],
        ["Corvus", "--image", "{photo}", "--minus", "juvenile", "--json"],
        ["--term", "text:2=Corvus", "--term", "vector:0.5={npy}", "--k", "4", "--format", "csv"],
        ["Corvus coraxx", "--json"],
        ["Corvidae", "--k", "5", "--offset", "5", "--min-score", "-1"],
        ["--fields"],
        ["--fields", "--json"],
        ["crow", "--where", "contry=Kenya"],
        ["--id", "-5"],
        ["--image", "{missing}"],
        ["crow", "--minus", "crow"],
    ],
)
def test_a_warm_query_prints_what_a_direct_one_prints(col, warm, args):
    path, root = col
    env, _ = warm
    args = [a.format(photo=root / "photo.jpg", npy=root / "q.npy", missing=root / "nope.jpg") for a in args]
    through_server = cli([path, *args], env)
    direct = cli([path, *args, "--no-server"], env)
    assert direct.returncode == through_server.returncode
    assert through_server.stdout == direct.stdout
    served_err = "\n".join(ln for ln in through_server.stderr.splitlines() if not ln.startswith(STARTING))
    assert served_err == direct.stderr.rstrip("\n")
    assert "Traceback" not in through_server.stderr


def test_status_and_stop(col, warm):
    path, _ = col
    env, runtime = warm
    assert cli([path, "Felidae", "--k", 1], env).returncode == 0
    pid = state_of(runtime)["pid"]
    status = cli(["status"], env, cmd="serve")
    assert status.returncode == 0 and str(path.resolve()) in status.stdout and f"pid {pid}" in status.stdout
    assert "ready" in status.stdout and "stops in" in status.stdout
    listed = json.loads(cli(["status", "--json"], env, cmd="serve").stdout)
    assert [s["pid"] for s in listed] == [pid] and listed[0]["status"]["status"] == "ready"
    stopped = cli(["stop", path], env, cmd="serve")
    assert stopped.returncode == 0 and "stopped the server" in stopped.stdout
    assert wait_gone(pid, 30) and not list(runtime.glob("*.json")) and not list(runtime.glob("*.sock"))
    assert "no background server is running" in cli(["status"], env, cmd="serve").stdout


def test_a_killed_server_is_replaced_and_an_idle_one_stops_by_itself(col, tmp_path):
    path, _ = col
    runtime = tmp_path / "rt"
    env = _env(runtime, BIOCLIP_SEARCH_IDLE_MINUTES="0.1")  # 6 seconds
    try:
        first = run([path, "Corvus", "--k", 1], env)
        assert first.returncode == 0 and "0.1 idle minutes" in first.stderr
        pid = state_of(runtime)["pid"]
        os.kill(pid, signal.SIGKILL)  # its socket and state file stay behind
        assert wait_gone(pid, 30)
        again = run([path, "Corvus", "--k", 1, "--json"], env)
        assert again.returncode == 0 and STARTING in again.stderr and json.loads(again.stdout)
        second = state_of(runtime)["pid"]
        assert second != pid
        assert wait_gone(second, 90)  # no query for 6 s: it stops, and cleans up after itself
        assert not list(runtime.glob("*.json")) and not list(runtime.glob("*.sock"))
        assert "idle timeout" in next(runtime.glob("*.log")).read_text()
    finally:
        run(["stop"], env, cmd="indexer.cli.serve")


def test_server_url_from_the_option_or_the_environment(col, tmp_path):
    path, root = col
    keys = tmp_path / "keys"
    keys.write_text("a-long-enough-api-key-0123\n")
    keys.chmod(0o600)
    s = Server([f"mine={path}", "--show-paths", "--api-key-file", str(keys)], log=tmp_path / "s.log")
    try:
        s.wait_ready()
        env = _env(tmp_path / "rt", BIOCLIP_SEARCH_API_KEY="a-long-enough-api-key-0123")
        direct = cli([path, "Corvus", "--json", "--no-server"], env)
        by_option = cli(["mine", "Corvus", "--json", "--server", s.base], env)
        by_env = cli(["mine", "Corvus", "--json"], {**env, "BIOCLIP_SEARCH_SERVER": s.base})
        assert by_option.returncode == 0, by_option.stderr
        assert by_option.stdout == direct.stdout == by_env.stdout
        assert not list((tmp_path / "rt").glob("*.sock")) if (tmp_path / "rt").exists() else True
        no_key = cli(["mine", "Corvus", "--server", s.base], {**env, "BIOCLIP_SEARCH_API_KEY": ""})
        assert no_key.returncode == 1 and "an API key is required" in no_key.stderr
        unknown = cli(["other", "Corvus", "--server", s.base], env)
        assert unknown.returncode == 1 and "no collection named 'other'" in unknown.stderr
    finally:
        s.stop()
