"""``bioclip-app``: start the Streamlit app on one or more collections."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys

import click

from indexer.cli.common import device_option, friendly, setup_logging, verbosity

__all__ = ["main", "run_app", "LOG_QUERIES_ENV"]

#: The app's query-log setting (off, vectors or text), passed to SearchEngine(log_queries=...).
LOG_QUERIES_ENV = "BIOCLIP_SEARCH_LOG_QUERIES"


def _app_script() -> str:
    """The app's entry script, which Streamlit runs in its own process. Found, not imported: the
    command line sits below the app (search_ui imports indexer, never the other way)."""
    spec = importlib.util.find_spec("search_ui.app")
    if spec is None or not spec.origin:  # pragma: no cover - search_ui is part of the package
        raise click.ClickException("the search app (search_ui) is not installed")
    return spec.origin


def run_app(collections: list[str], *, port: int, host: str, device: str, extra_env: dict | None = None) -> int:
    """Become the Streamlit app on ``collections``.

    On POSIX the process execs Streamlit, so the server is the process a service manager started:
    its signals (SIGTERM from systemd, ``docker stop``, Kubernetes; SIGKILL; Ctrl-C) reach the
    server itself and nothing is left running. Elsewhere Streamlit runs as a child, which gets the
    same signal forwarded; returns its exit status."""
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        _app_script(),
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.showErrorDetails",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--server.maxUploadSize",
        os.environ.get("BIOCLIP_SEARCH_MAX_UPLOAD_MB", "20"),
        "--",
        *[os.path.abspath(c) for c in collections],
        "--device",
        device,
    ]
    env = dict(os.environ, **(extra_env or {}))
    click.echo(f"bioclip-search app on http://{host}:{port}  (Ctrl-C to stop)", err=True)
    if os.name == "posix":
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, cmd, env)  # does not return
    return _run_child(cmd, env)  # pragma: no cover - not POSIX


def _run_child(cmd: list[str], env: dict) -> int:  # pragma: no cover - not POSIX
    """Run Streamlit as a child, forwarding SIGTERM (and Ctrl-C) to it, and wait for it."""
    child = subprocess.Popen(cmd, env=env)

    def forward(signum: int, frame: object) -> None:
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            child.send_signal(signal.SIGINT)


@click.command(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Examples:\n\n\b\n  bioclip-app ./photos.collection --port 8501\n  bioclip-app ./herbarium.collection ./insects.collection",
)
@click.argument("collections", nargs=-1, required=True, type=click.Path())
@click.option("--port", type=click.IntRange(1, 65535), default=8501, show_default=True)
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 to share on your network)."
)
@click.option(
    "--log-queries",
    is_flag=True,
    help="Keep the vectors (no text) of the app's queries in each collection's query log, for reindex to tune on.",
)
@click.option("--log-query-text", is_flag=True, help="Log the queries' words too (implies --log-queries).")
@device_option
@verbosity
@friendly
def main(*, collections, port, host, device, log_queries, log_query_text, verbose, quiet):
    """Start the search app (Streamlit) on one or more collections."""
    setup_logging(verbose, quiet)
    from indexer.store import Collection

    for c in collections:
        Collection.open(c)  # fail here, with a message, rather than inside the app
    env = {}
    if log_queries or log_query_text:  # read by search_ui/app.py when it opens the engines
        env[LOG_QUERIES_ENV] = "text" if log_query_text else "vectors"
    check_port(host, port)
    sys.exit(run_app(list(collections), port=port, host=host, device=device, extra_env=env))


def check_port(host: str, port: int) -> None:
    """Refuse, before anything starts, a port that another program (another app) listens on, and
    suggest a free one."""
    if not _port_taken(host, port):
        return
    free = next((p for p in range(port + 1, min(port + 100, 65536)) if not _port_taken(host, p)), None)
    hint = f"; try --port {free}" if free else "; pick another with --port"
    raise click.ClickException(f"port {port} on {host} is taken (is another app running there?){hint}")


def _port_taken(host: str, port: int) -> bool:
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False  # an address that does not resolve: Streamlit says so itself
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as servers set it, so a port in TIME_WAIT after a restart counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError:
            return True
    return False
