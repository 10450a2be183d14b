"""A small JSON client of the API, over a Unix socket or http(s), on the standard library only: the
command line's transport, so that a query through a warm server imports neither numpy nor torch."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

__all__ = ["ApiClient", "ApiAnswerError", "ServerUnavailable"]


class ServerUnavailable(Exception):
    """No server answers there (nothing listening, connection dropped, not our API)."""


class ApiAnswerError(Exception):
    """The server refused the request: ``status``, ``code`` and its message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """``ApiClient(socket_path=...)`` or ``ApiClient(url="https://host/prefix")``; ``api_key`` is sent
    as ``X-API-Key``."""

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 600.0,
    ):
        if (socket_path is None) == (url is None):
            raise ValueError("give socket_path or url")
        self.socket_path = socket_path
        self.api_key = api_key
        self.timeout = timeout
        self.prefix = ""
        if url is not None:
            parts = urlsplit(url if "://" in url else f"http://{url}")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL of a bioclip-serve server")
            self.scheme, self.netloc, self.prefix = parts.scheme, parts.netloc, parts.path.rstrip("/")

    def describe(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"{self.scheme}://{self.netloc}{self.prefix}"

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return _UnixConnection(self.socket_path, timeout)
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.netloc, timeout=timeout)
        return http.client.HTTPConnection(self.netloc, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """The decoded JSON answer; ApiAnswerError for an error answer, ServerUnavailable when no
        server of ours answers."""
        target = self.prefix + path
        if params:
            target += "?" + urlencode(params, doseq=True)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        conn = self._connection(self.timeout if timeout is None else timeout)
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnavailable(f"no answer from {self.describe()}: {exc}") from exc
        finally:
            conn.close()
        try:
            answer = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            raise ServerUnavailable(f"{self.describe()} did not answer with JSON (HTTP {resp.status})") from None
        if resp.status >= 400:
            err = (answer or {}).get("error") if isinstance(answer, dict) else None
            if not isinstance(err, dict):
                raise ServerUnavailable(f"{self.describe()} answered HTTP {resp.status} without an error of ours")
            raise ApiAnswerError(resp.status, str(err.get("code")), str(err.get("message")))
        return answer

    @staticmethod
    def collection_path(name: str) -> str:
        return "/v1/collections/" + quote(name, safe="")
