"""The server's gatekeepers, as plain ASGI middleware (outermost first): the access log (which also
tracks activity for the idle timeout and adds ``X-Content-Type-Options: nosniff``), CORS
(Starlette's, only for configured origins), the request-size limit, API keys, and per-client
rate limits (the ``limits`` library, in memory: per worker process)."""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from typing import Any

from indexer.serve.config import key_digest, read_api_keys
from indexer.serve.errors import error_body

__all__ = [
    "setup_worker_logging",
    "Activity",
    "AccessLog",
    "BodyLimit",
    "ApiKeys",
    "RateLimit",
    "send_error",
    "PUBLIC_PATHS",
]

access_log = logging.getLogger("indexer.serve.access")
log = logging.getLogger("indexer.serve")

#: Paths open without an API key and never rate-limited (probes and the API's description).
PUBLIC_PATHS = ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/static-offline-docs/")

Scope = dict[str, Any]


async def send_error(send: Any, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(code, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None


def _route_path(scope: Scope) -> str:
    """The path without the proxy's prefix (uvicorn puts ``root_path`` in front of it)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def _is_public(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) for p in PUBLIC_PATHS)


def setup_worker_logging(*, force: bool = False, quiet: bool = False) -> None:
    """Log lines with their time on stderr (the access log included); ``force``: replace what was
    set up before, ``quiet``: errors only."""
    root = logging.getLogger()
    if force or not root.handlers:
        logging.basicConfig(
            level=logging.ERROR if quiet else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            force=True,
        )
    if quiet:
        return
    for name in ("indexer.serve", "indexer.serve.access", "indexer.search.engine"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.INFO)


class Activity:
    """Requests in flight and when the last one ended: what the idle timeout watches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.in_flight = 0
        self.last = time.monotonic()
        self.requests = 0

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.requests += 1

    def end(self) -> None:
        with self._lock:
            self.in_flight -= 1
            self.last = time.monotonic()

    def idle_for(self) -> float:
        with self._lock:
            return 0.0 if self.in_flight else time.monotonic() - self.last


class AccessLog:
    """One line per request on the ``indexer.serve.access`` logger: client, request line, status,
    bytes, milliseconds. Never the API key (it is a header)."""

    def __init__(self, app: Any, activity: Activity, enabled: bool = True):
        self.app = app
        self.activity = activity
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        state = {"status": 500, "bytes": 0}

        async def logged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers") or [])
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                state["bytes"] += len(message.get("body", b""))
            await send(message)

        self.activity.begin()
        try:
            await self.app(scope, receive, logged)
        finally:
            self.activity.end()
            if self.enabled:
                client = scope.get("client")
                who = client[0] if client else "-"
                qs = scope.get("query_string", b"").decode("latin-1")
                target = scope.get("path", "") + (f"?{qs}" if qs else "")
                access_log.info(
                    '%s "%s %s HTTP/%s" %d %dB %.1fms',
                    who,
                    scope.get("method", "-"),
                    target,
                    scope.get("http_version", "1.1"),
                    state["status"],
                    state["bytes"],
                    (time.perf_counter() - t0) * 1000,
                )


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 for a request body over ``max_bytes``: at once by its Content-Length, else (chunked) as
    soon as the bytes read pass the limit."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        message = f"the request body is over the limit of {limit / (1024 * 1024):.1f} MB"
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await send_error(send, 413, "body_too_large", message, {"connection": "close"})
            return
        seen = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge()
            return msg

        async def watched(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, "body_too_large", message, {"connection": "close"})


class ApiKeys:
    """With keys configured, every /v1 request needs one: ``X-API-Key: KEY`` or
    ``Authorization: Bearer KEY``. The key file is read again when it changes (checked at most
    every 5 seconds), so keys are added and revoked without a restart."""

    def __init__(self, app: Any, key_file: str):
        self.app = app
        self.key_file = key_file
        self._digests = read_api_keys(key_file)
        self._mtime = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> float | None:
        try:
            return os.stat(self.key_file).st_mtime
        except OSError:
            return None

    def _current(self) -> frozenset[str]:
        now = time.monotonic()
        if now - self._checked >= 5.0:
            self._checked = now
            mtime = self._stat()
            if mtime != self._mtime:
                try:
                    self._digests = read_api_keys(self.key_file)
                    log.info("read the API keys again from %s", self.key_file)
                except Exception as exc:  # keep the keys we have
                    log.warning("cannot read the API key file again (%s); keeping the keys already read", exc)
                self._mtime = mtime
        return self._digests

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or _is_public(_route_path(scope)):
            await self.app(scope, receive, send)
            return
        key = _header(scope, b"x-api-key")
        auth = _header(scope, b"authorization")
        if key is None and auth and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
        if not key:
            await send_error(
                send, 401, "unauthorized", "an API key is required (X-API-Key header)", {"www-authenticate": "Bearer"}
            )
            return
        digest = key_digest(key)
        if not any(hmac.compare_digest(digest, d) for d in self._current()):
            await send_error(send, 401, "unauthorized", "the API key is not known", {"www-authenticate": "Bearer"})
            return
        scope.setdefault("state", {})["client_id"] = "key:" + digest[:16]
        await self.app(scope, receive, send)


class RateLimit:
    """At most ``rate`` (``"600/minute"``, ``"10/second;600/minute"``) requests per client: its API
    key, else its address (the forwarded one behind a trusted proxy). 429 with Retry-After."""

    def __init__(self, app: Any, rate: str):
        from limits import parse_many
        from limits.storage import MemoryStorage
        from limits.strategies import MovingWindowRateLimiter

        self.app = app
        self.items = parse_many(rate)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") == "OPTIONS" or _is_public(_route_path(scope)):
            await self.app(scope, receive, send)
            return
        client = (scope.get("state") or {}).get("client_id")
        if client is None:
            peer = scope.get("client")
            client = "ip:" + (peer[0] if peer else "-")
        for item in self.items:
            if not self.limiter.hit(item, client):
                reset = self.limiter.get_window_stats(item, client).reset_time
                wait = max(1, int(reset - time.time() + 0.999))
                await send_error(
                    send,
                    429,
                    "rate_limited",
                    f"too many requests: at most {item} per client; try again in {wait} s",
                    {"retry-after": str(wait)},
                )
                return
        await self.app(scope, receive, send)
