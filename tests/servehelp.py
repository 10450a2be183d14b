"""Helpers for the HTTP API tests: a collection with awkward metadata, and a real ``bioclip-serve``
in a subprocess on 127.0.0.1 that always stops (idle timeout, and the fixture's kill)."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import urllib3
from click.testing import CliRunner
from imagegen import make_folder

ROOT = Path(__file__).resolve().parents[1]

#: Metadata that must come back as the same plain strings (no HTML or Markdown handling).
HTML = '<script>alert("x")</script><img src=x onerror=alert(1)>'
MARKDOWN = "**bold** [a link](javascript:alert(1)) `code` \u00e9t\u00e9 \u2014 \U0001f98a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_collection(root: Path, model_source: str, n: int = 16) -> tuple[Path, Path]:
    """(collection, image folder): ``n`` generated images; image 0 has HTML as its vernacular name
    and Markdown as its locality; image 1's catalogue number looks like SQL."""
    from indexer.cli import index as index_cli

    folder = make_folder(root / "imgs", n)
    labels = folder / "labels.csv"
    with open(labels, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["locality"] = ""
    rows[0]["vernacularName"] = HTML
    rows[0]["locality"] = MARKDOWN
    rows[1]["catalogNumber"] = "CAT-1' OR '1'='1"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = root / "col"
    args = ["build", str(folder), "--labels", str(labels), "--out", str(out), "--model", model_source]
    r = CliRunner().invoke(index_cli.main, [*args, "--device", "cpu", "--workers", "0"])
    assert r.exit_code == 0, r.output
    return out, folder


class Server:
    """``bioclip-serve ARGS`` on 127.0.0.1:PORT in a subprocess; ``stop()`` ends it."""

    def __init__(self, args: list[str], *, port: int | None = None, env: dict[str, str] | None = None, log: Path):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed by stop()
        cmd = [sys.executable, "-m", "indexer.cli.serve", *args, "--port", str(self.port), "--idle-timeout", "900"]
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})), cwd=ROOT
        )
        self.http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=120))

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"bioclip-serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.http.request("GET", self.base + "/readyz", timeout=2).status == 200:
                    return
            except urllib3.exceptions.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"bioclip-serve did not get ready:\n{self.log()}")

    def get(self, path: str, **kw):
        return self.http.request("GET", self.base + path, **kw)

    def request(self, method: str, path: str, **kw):
        return self.http.request(method, self.base + path, **kw)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode
