"""Headless Chromium and a Streamlit server for the browser tests and the app benchmark (not tests
themselves): one place for the flags this machine needs and for starting and stopping the app.

Chromium and ChromeDriver are Debian's (``apt-get install chromium chromium-driver``); a test tool's own
browser download does not work here. The flags keep Chromium off the network it cannot reach
(background networking, component updates, sync) and out of the sandbox it cannot make as root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from servehelp import free_port

__all__ = [
    "CHROMIUM",
    "CHROMEDRIVER",
    "free_port",
    "make_driver",
    "skip_reason",
    "stop",
    "streamlit_command",
    "streamlit_server",
    "wait_healthy",
]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


def skip_reason() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[dev]')"
    return None


def make_driver(
    profile: Path | None = None,
    *,
    window: str = "1400,1000",
    log_requests: bool = False,
    page_load_timeout: float | None = None,
) -> Any:
    """A headless Chromium under Selenium, with a fresh profile folder ``profile`` (when given) and,
    with ``log_requests``, the performance log (every request the page makes)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--window-size={window}"):
        opts.add_argument(flag)
    if profile is not None:
        opts.add_argument(f"--user-data-dir={profile}")
    if log_requests:
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    if page_load_timeout is not None:
        drv.set_page_load_timeout(page_load_timeout)
    return drv


def streamlit_command(app: Path, port: int, app_args: Sequence[str], python: Sequence[str] = ()) -> list[str]:
    """``streamlit run APP`` on 127.0.0.1:``port``, headless, no usage statistics, no file watcher;
    ``python`` is what runs Streamlit's module (default: this interpreter's ``-m streamlit``)."""
    head = list(python) or [sys.executable, "-m", "streamlit"]
    return [
        *head,
        "run",
        str(app),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--",
        *app_args,
    ]


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float, log: Path | None = None, poll: float = 0.2) -> None:
    """Until Streamlit's health check at ``url`` answers ok; RuntimeError if the process exits first
    (with the end of its ``log``) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.is_file() else ""
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {tail}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as resp:
                if resp.read().strip() == b"ok":
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"streamlit did not come up within {timeout:.0f} s")
        time.sleep(poll)


def stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def streamlit_server(
    app: Path, app_args: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float
) -> Iterator[str]:
    """The app served on a free port of 127.0.0.1 while the block runs (its output in
    ``cwd/streamlit.log``); yields its URL once it answers, and stops it afterwards."""
    port = free_port()
    log_path = cwd / "streamlit.log"
    with open(log_path, "wb") as log:
        cmd = streamlit_command(app, port, app_args)
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(proc, url, timeout, log_path)
            yield url
        finally:
            stop(proc)
