"""A user's own background servers: what keeps ``bioclip-search`` warm between queries.

One server per collection, started by the first query (``bioclip-serve COLLECTION --uds ...
--idle-timeout ...``, detached from the terminal), listening on a Unix socket in a folder only
the user may enter (mode 0700: ``$BIOCLIP_SEARCH_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/bioclip-search``,
else ``/tmp/bioclip-search-UID``), and stopping itself after ``$BIOCLIP_SEARCH_IDLE_MINUTES``
(30) minutes without a query. Per collection, named by a hash of its real path:
``HASH.sock`` (the socket, 0600), ``HASH.json`` (its state: pid, collection, version, device),
``HASH.log`` (its log) and ``HASH.lock`` (taken while one is started, so two queries at once
start one server). Standard library only: this runs before every warm query.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.errors import IndexerError
from indexer.serve.client import ApiAnswerError, ApiClient, ServerUnavailable

__all__ = [
    "LocalServer",
    "LocalServerError",
    "RUNTIME_ENV",
    "IDLE_ENV",
    "DEFAULT_IDLE_MINUTES",
    "runtime_dir",
    "idle_timeout",
    "local_server",
    "ensure_running",
    "servers",
    "stop",
    "forget",
]

RUNTIME_ENV = "BIOCLIP_SEARCH_RUNTIME_DIR"
IDLE_ENV = "BIOCLIP_SEARCH_IDLE_MINUTES"
DEFAULT_IDLE_MINUTES = 30.0
_MAX_SOCKET_PATH = 100  # AF_UNIX paths hold 104-108 bytes, depending on the system
_MAX_LOG = 10 * 1024 * 1024


class LocalServerError(IndexerError):
    """A background server cannot be found, started or stopped."""


def runtime_dir() -> Path:
    """The user's folder for background servers, made with mode 0700; refused when someone else
    owns it or others may enter it."""
    env = os.environ.get(RUNTIME_ENV)
    if env:
        base = Path(env)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "bioclip-search"
    else:
        base = Path("/tmp") / f"bioclip-search-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = base.lstat()
    except OSError as exc:
        raise LocalServerError(f"cannot make the folder for background servers {base}: {exc.strerror or exc}") from None
    if not base.is_dir() or base.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise LocalServerError(
            f"{base} is not a private folder of yours (owner {info.st_uid}, mode {oct(info.st_mode & 0o777)}); "
            f"remove it, or set {RUNTIME_ENV} to a folder only you may enter"
        )
    return base


def idle_timeout() -> float:
    """Seconds a background server waits for a query before it stops (``$BIOCLIP_SEARCH_IDLE_MINUTES``)."""
    text = os.environ.get(IDLE_ENV, "")
    try:
        minutes = float(text) if text.strip() else DEFAULT_IDLE_MINUTES
    except ValueError:
        raise LocalServerError(f"{IDLE_ENV}={text!r} is not a number of minutes") from None
    if minutes <= 0:
        raise LocalServerError(f"{IDLE_ENV} must be more than 0 minutes (use --no-server to start none)")
    return minutes * 60.0


@dataclass(frozen=True)
class LocalServer:
    """The files of the background server of one collection."""

    collection: str  # real path
    name: str
    folder: Path
    key: str

    @property
    def socket(self) -> str:
        return str(self.folder / f"{self.key}.sock")

    @property
    def state_file(self) -> str:
        return str(self.folder / f"{self.key}.json")

    @property
    def log_file(self) -> str:
        return str(self.folder / f"{self.key}.log")

    @property
    def lock_file(self) -> str:
        return str(self.folder / f"{self.key}.lock")

    def client(self, timeout: float = 600.0) -> ApiClient:
        return ApiClient(socket_path=self.socket, timeout=timeout)

    def state(self) -> dict[str, Any] | None:
        return _read_json(self.state_file)


def local_server(collection: str | os.PathLike) -> LocalServer:
    real = os.path.realpath(collection)
    key = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    ls = LocalServer(real, Path(real).name, runtime_dir(), key)
    if len(ls.socket.encode()) > _MAX_SOCKET_PATH:
        raise LocalServerError(
            f"the socket path {ls.socket} is too long for a Unix socket; set {RUNTIME_ENV} to a shorter folder"
        )
    return ls


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped by whoever adopted it) is gone for us
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(fh.readlines()[-lines:]).strip()
    except OSError:
        return ""


def _spawn(ls: LocalServer, device: str, timeout_s: float) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "indexer.cli.serve",
        ls.collection,
        "--uds",
        ls.socket,
        "--idle-timeout",
        f"{timeout_s:g}",
        "--device",
        device,
        "--background",
        ls.state_file,
    ]
    with contextlib.suppress(OSError):
        if os.path.getsize(ls.log_file) > _MAX_LOG:
            os.unlink(ls.log_file)
    fd = os.open(ls.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            start_new_session=True,  # not stopped by the terminal's Ctrl-C or hang-up
            close_fds=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    finally:
        os.close(fd)


def _wait_ready(ls: LocalServer, proc: subprocess.Popen | None, deadline: float) -> None:
    client = ls.client(timeout=2.0)
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LocalServerError(
                f"the background server for {ls.collection} stopped while starting (exit status {proc.returncode}); "
                f"its log, {ls.log_file}, ends with:\n{_log_tail(ls.log_file)}"
            )
        try:
            client.request("GET", "/readyz")
            return
        except ApiAnswerError as exc:  # 503: still loading, or the model cannot be loaded
            if exc.status == 503 and "cannot load" in exc.message:
                raise LocalServerError(f"the background server for {ls.collection}: {exc.message}") from None
        except ServerUnavailable:
            pass
        time.sleep(0.1)
    raise LocalServerError(f"the background server for {ls.collection} did not get ready; see {ls.log_file}")


def _stale(ls: LocalServer, device: str) -> bool:
    """True when the socket's server must not be used: gone, another version, another device."""
    from indexer._version import __version__

    state = ls.state()
    if state is None or not _alive(state.get("pid")):
        return True
    return state.get("version") != __version__ or (device != "auto" and state.get("device") != device)


def ensure_running(
    ls: LocalServer,
    device: str = "auto",
    *,
    wait_s: float = 900.0,
    on_start: Callable[[LocalServer], None] | None = None,
) -> ApiClient:
    """A client of the collection's background server, started (and waited for) when none runs."""
    if os.path.exists(ls.socket) and not _stale(ls, device):
        return ls.client()
    with _locked(ls.lock_file):
        if os.path.exists(ls.socket) and not _stale(ls, device):  # another query started it meanwhile
            _wait_ready(ls, None, time.monotonic() + wait_s)
            return ls.client()
        state = ls.state()
        if state is not None and _alive(state.get("pid")):
            stop(state)
        for path in (ls.socket, ls.state_file):
            with contextlib.suppress(OSError):
                os.unlink(path)
        if on_start is not None:
            on_start(ls)
        proc = _spawn(ls, device, idle_timeout())
        _wait_ready(ls, proc, time.monotonic() + wait_s)
    return ls.client()


def forget(ls: LocalServer) -> None:
    """Remove the files of a server that does not answer on its socket (killed, crashed, hung): the
    next query starts another; a hung one, getting no more queries, stops at its idle timeout."""
    for path in (ls.socket, ls.state_file):
        with contextlib.suppress(OSError):
            os.unlink(path)


def servers() -> list[dict[str, Any]]:
    """The state of every background server of this user (dead ones: ``alive`` False), with what its
    ``/readyz`` says when it answers."""
    out = []
    for path in sorted(runtime_dir().glob("*.json")):
        state = _read_json(str(path))
        if state is None:
            continue
        state["state_file"] = str(path)
        state["alive"] = _alive(state.get("pid"))
        if state["alive"] and state.get("socket"):
            try:
                state["status"] = ApiClient(socket_path=state["socket"], timeout=5).request("GET", "/readyz")
            except ApiAnswerError as exc:
                state["status"] = {"status": "loading" if exc.status == 503 else "error", "error": exc.message}
            except ServerUnavailable as exc:
                state["status"] = {"status": "not answering", "error": str(exc)}
            state["rss_mib"] = _rss_mib(state["pid"])
        out.append(state)
    return out


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def _is_our_server(state: dict[str, Any]) -> bool:
    """The pid is a server of ours: it answers on its socket with that pid (a pid reused by another
    process is never signalled)."""
    try:
        ready = ApiClient(socket_path=state["socket"], timeout=5).request("GET", "/readyz")
    except ApiAnswerError:
        return _cmdline_is_ours(state["pid"])
    except (ServerUnavailable, KeyError, TypeError):
        return _cmdline_is_ours(state.get("pid"))
    return isinstance(ready, dict) and ready.get("pid") == state.get("pid")


def _cmdline_is_ours(pid: Any) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"indexer.cli.serve" in fh.read()
    except OSError:
        return False


def stop(state: dict[str, Any], wait_s: float = 15.0) -> bool:
    """Stop the server a state record describes (SIGTERM: requests in flight finish); True when it
    was running. Its socket and state file are removed."""
    pid = state.get("pid")
    was = _alive(pid) and _is_our_server(state)
    if was:
        assert isinstance(pid, int)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.05)
        if _alive(pid):
            raise LocalServerError(f"the background server {pid} did not stop within {wait_s:g} s")
    for path in (state.get("socket"), state.get("state_file")):
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return was
