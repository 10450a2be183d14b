"""Running the server on uvicorn: one worker in this process, or several worker processes.

- TCP on ``host:port``, or a Unix socket bound here (created with mode 0600, or 0660 for a public
  ``--uds`` that a reverse proxy in the same group reads; uvicorn's own would be 0666 and stay
  behind), removed when the server stops.
- SIGTERM and SIGINT stop it gracefully: it stops accepting, lets requests in flight finish (up to
  ``graceful_timeout`` seconds), then closes the collections (uvicorn's lifespan).
- With ``idle_timeout`` (background servers), it stops itself after that many seconds without a
  request, and removes its state file.
- Behind a reverse proxy, client addresses come from ``X-Forwarded-For`` when the proxy's address
  is in ``forwarded_allow_ips`` (uvicorn's default: 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from indexer.serve.config import ENV_CONFIG, ServeConfig, ServeConfigError

__all__ = ["Listen", "serve", "bind_unix", "write_state", "remove_state"]

log = logging.getLogger("indexer.serve")


@dataclass(frozen=True)
class Listen:
    """Where to listen: ``uds`` (a Unix socket path) wins over ``host``/``port``."""

    host: str = "127.0.0.1"
    port: int = 8000
    uds: str | None = None
    uds_mode: int = 0o600
    forwarded_allow_ips: str | None = None
    graceful_timeout: int = 30
    root_path: str = ""  # the path prefix a reverse proxy serves the API under

    def describe(self) -> str:
        return f"unix:{self.uds}" if self.uds else f"http://{self.host}:{self.port}"


def bind_unix(path: str, mode: int = 0o600) -> socket.socket:
    """A listening Unix socket at ``path`` with ``mode``; a stale socket file left by a killed server
    is replaced, a live one is an error."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: left by a server that was killed
        else:
            raise ServeConfigError(f"another server is listening on {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise ServeConfigError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(2048)
    return sock


def write_state(path: str, record: dict[str, Any]) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    os.replace(tmp, path)


def remove_state(path: str, pid: int) -> None:
    """Remove a state file if it is still this process's."""
    try:
        with open(path, encoding="utf-8") as fh:
            if json.load(fh).get("pid") != pid:
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass


def _watch_idle(server: Any, activity: Any, timeout: float) -> None:
    step = max(0.2, min(30.0, timeout / 4))
    while not server.should_exit:
        time.sleep(step)
        idle = activity.idle_for()
        if idle >= timeout:
            log.info("no request for %.0f s (idle timeout %.0f s): stopping", idle, timeout)
            server.should_exit = True
            return


def _uvicorn_options(listen: Listen) -> dict[str, Any]:
    opts: dict[str, Any] = dict(
        log_config=None,
        access_log=False,  # ours (indexer.serve.access) has the time taken
        proxy_headers=True,
        timeout_graceful_shutdown=listen.graceful_timeout,
        server_header=False,
        lifespan="on",
        root_path=listen.root_path,
    )
    if listen.forwarded_allow_ips is not None:
        opts["forwarded_allow_ips"] = listen.forwarded_allow_ips
    return opts


def serve(config: ServeConfig, listen: Listen) -> int:
    """Serve until stopped (signal, idle timeout); returns an exit status."""
    import uvicorn

    sock = bind_unix(listen.uds, listen.uds_mode) if listen.uds else None
    try:
        if config.workers > 1:
            os.environ[ENV_CONFIG] = config.to_json()
            where: dict[str, Any] = {"fd": sock.fileno()} if sock else {"host": listen.host, "port": listen.port}
            log.info("bioclip-serve on %s with %d workers", listen.describe(), config.workers)
            uvicorn.run(
                "indexer.serve.app:app_from_environment",
                factory=True,
                workers=config.workers,
                **where,
                **_uvicorn_options(listen),
            )
            return 0
        from indexer.serve.app import create_app

        app = create_app(config)
        ucfg = uvicorn.Config(app, host=listen.host, port=listen.port, **_uvicorn_options(listen))
        server = uvicorn.Server(ucfg)
        # uvicorn ends the process with the signal that stopped it once it has shut down, so
        # what must go when the server stops goes in the app's shutdown, not only in the finally.
        app.state.on_shutdown.append(lambda: _cleanup(config, listen))
        if config.state_file:
            write_state(config.state_file, _state_record(config, listen))
        if config.idle_timeout:
            threading.Thread(
                target=_watch_idle,
                args=(server, app.state.activity, config.idle_timeout),
                name="bioclip-serve-idle",
                daemon=True,
            ).start()
        log.info("bioclip-serve on %s", listen.describe())
        server.run(sockets=[sock] if sock else None)
        return 0 if server.started else 1
    finally:
        if sock is not None:
            sock.close()
        _cleanup(config, listen)


def _cleanup(config: ServeConfig, listen: Listen) -> None:
    """Remove the socket file and the state file (if still this process's)."""
    if listen.uds:
        with contextlib.suppress(OSError):
            os.unlink(listen.uds)
    if config.state_file:
        remove_state(config.state_file, os.getpid())


def _state_record(config: ServeConfig, listen: Listen) -> dict[str, Any]:
    from indexer._version import __version__

    name, path = config.collections[0]
    return {
        "pid": os.getpid(),
        "name": name,
        "collection": path,
        "socket": listen.uds,
        "started": time.time(),
        "idle_timeout": config.idle_timeout,
        "device": config.device,
        "version": __version__,
        "python": sys.executable,
    }
