"""The downloader: http(s) media into an on-disk cache, politely and robustly.

:class:`Downloader` fetches http(s) URLs into an on-disk cache keyed by URL,
with bounded concurrency (overall and per host), timeouts, retries with backoff that honour
``Retry-After``, a size limit and a check that the body is an image. Every failure is a
:class:`~indexer.errors.FetchError` whose ``reason`` is one of ``http-<status>``, ``timeout``,
``too-large``, ``not-an-image``, ``truncated``, ``connection-error``, ``host-unreachable``,
``invalid-url``, ``cache-error``, and whose ``detail`` names the URL. (Local files and tar members are
read by :mod:`indexer.media.read`.)
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import random
import time
import urllib.request
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from indexer._version import __version__
from indexer.build.http import GENERIC_TYPES, RETRY_STATUS, content_length, host_of, looks_like_image, parse_retry_after
from indexer.errors import FetchError
from indexer.locations import RemoteUrl, parse_location
from indexer.media.read import cache_file
from indexer.store.files import atomic_file

__all__ = ["DownloadConfig", "Downloader", "looks_like_image", "DEFAULT_MAX_BYTES"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 << 20

# -- the downloader ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadConfig:
    """How the :class:`Downloader` fetches: limits, patience and where the cache is.

    ``timeout`` is for connecting and for each read; ``attempt_deadline`` bounds one whole attempt
    (None: 4 x ``timeout``; a server that drips bytes loses the slot at its first read after the
    deadline). ``retries`` more attempts follow a 408/429/5xx, a timeout, a broken connection or a
    truncated body, after ``backoff * 2**n`` seconds (with jitter, at most ``max_backoff``), or after
    ``Retry-After`` (seconds or an HTTP date, at most ``max_backoff``; it also pauses that host).
    ``max_pending`` bounds the URLs read ahead of the downloads (None: max(256, 16 x concurrency)).
    ``host_down_after``: after this many attempts in a row on one host end without a response (no
    route, DNS failure, refused, timed out), the host is taken as down for the rest of the run and its
    remaining URLs fail at once as ``host-unreachable`` (a transient reason: the next run tries again).
    """

    cache_dir: str | os.PathLike
    concurrency: int = 16
    per_host: int = 4
    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5
    max_backoff: float = 60.0
    max_bytes: int = DEFAULT_MAX_BYTES
    user_agent: str = f"bioclip-search/{__version__}"
    attempt_deadline: float | None = None
    max_pending: int | None = None
    host_down_after: int = 8

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.per_host < 1:
            raise ValueError("concurrency and per_host must be at least 1")
        if self.timeout <= 0 or (self.attempt_deadline is not None and self.attempt_deadline <= 0):
            raise ValueError("timeouts must be positive")
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        if self.max_pending is not None and self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")


@dataclass
class _Outcome:
    path: str | None = None
    error: FetchError | None = None
    retry: bool = False
    retry_after: float | None = None


@dataclass
class _Task:
    url: str
    host: str
    attempt: int = 0
    last_error: FetchError | None = field(default=None, repr=False)


class _Failed(Exception):
    def __init__(self, reason: str, detail: str, *, retry: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.error = FetchError(reason, detail)
        self.retry = retry
        self.retry_after = retry_after


class Downloader:
    """Downloads http(s) URLs into ``config.cache_dir`` (one file per URL, named by its SHA-256).

    A URL whose file is in the cache is never downloaded again, in this run or a later one; a
    failure leaves nothing in the cache. Files are written atomically (:mod:`indexer.store.files`),
    so a killed run leaves no partial file under a final name. Thread-safe for one
    :meth:`fetch_many` at a time per instance. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, config: DownloadConfig):
        import urllib3

        self.config = config
        self.cache_dir = os.path.abspath(os.fspath(config.cache_dir))
        os.makedirs(self.cache_dir, exist_ok=True)
        self._timeout = urllib3.Timeout(connect=config.timeout, read=config.timeout)
        pool_kw: dict[str, Any] = dict(
            num_pools=max(64, 4 * config.concurrency),
            maxsize=config.per_host,
            block=False,
            headers={
                "User-Agent": config.user_agent,
                "Accept": "image/*, */*;q=0.5",
                # Content-Length must be the image's size, for the size and truncation checks.
                "Accept-Encoding": "identity",
            },
        )
        self._pool = urllib3.PoolManager(**pool_kw)
        # Machines on a museum network often reach the web through a proxy named in the usual
        # environment variables (http_proxy, https_proxy, no_proxy), as curl and requests honour.
        self._proxies = {
            scheme: urllib3.ProxyManager(url, **pool_kw)
            for scheme, url in urllib.request.getproxies().items()
            if scheme in ("http", "https") and url
        }
        self._executor = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="bioclip-fetch")
        self._closed = False

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (waiting for running downloads) and close the connections."""
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._pool.clear()
            for proxy in self._proxies.values():
                proxy.clear()

    # -- cache ------------------------------------------------------------------------------------

    def cache_path(self, url: str) -> str:
        """Where the body of ``url`` is (or will be) cached."""
        return cache_file(self.cache_dir, url)

    def cached(self, url: str) -> str | None:
        """The cache file of ``url`` if it was downloaded before, else None."""
        path = self.cache_path(url)
        try:
            return path if os.stat(path).st_size > 0 else None
        except OSError:
            return None

    # -- scheduling -------------------------------------------------------------------------------

    def fetch_many(self, urls: Iterable[str]) -> Iterator[tuple[str, str | FetchError]]:
        """Yield ``(url, cache file path)`` or ``(url, FetchError)`` for every URL, as each completes.

        ``urls`` is consumed lazily: at most ``max_pending`` URLs are held at a time, at most
        ``concurrency`` download at once and at most ``per_host`` from one host. A URL given twice
        while the first is pending is downloaded once and yielded twice. Cached URLs are yielded
        without a request. Closing the generator early cancels what has not started.
        """
        if self._closed:
            raise RuntimeError("Downloader is closed")
        cfg = self.config
        max_pending = cfg.max_pending or max(256, 16 * cfg.concurrency)
        source = iter(urls)
        exhausted = False
        ready: deque[_Task] = deque()
        delayed: list[tuple[float, int, _Task]] = []
        inflight: dict[Future, _Task] = {}
        active: Counter[str] = Counter()
        paused_until: dict[str, float] = {}
        waiting: dict[str, int] = {}
        strikes: Counter[str] = Counter()  # attempts in a row without a response, per host
        down: dict[str, FetchError] = {}  # hosts given up on, with their last error
        order = itertools.count()

        def unreachable(task: _Task) -> Iterator[tuple[str, FetchError]]:
            last = down[task.host]
            err = FetchError(
                "host-unreachable",
                f"{task.url}: {task.host} did not answer {cfg.host_down_after} attempts in a row; "
                f"not tried (last error: {last.detail})",
            )
            for _ in range(waiting.pop(task.url)):
                yield task.url, err

        try:
            while True:
                while not exhausted and len(ready) + len(delayed) + len(inflight) < max_pending:
                    try:
                        url = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    if url in waiting:
                        waiting[url] += 1
                        continue
                    host, problem = host_of(url)
                    if problem is not None:
                        yield url, problem
                        continue
                    hit = self.cached(url)
                    if hit is not None:
                        yield url, hit
                        continue
                    waiting[url] = 1
                    if host in down:
                        yield from unreachable(_Task(url, host))
                        continue
                    ready.append(_Task(url, host))
                now = time.monotonic()
                while delayed and delayed[0][0] <= now:
                    ready.append(heapq.heappop(delayed)[2])
                if ready and len(inflight) < cfg.concurrency:
                    held: list[_Task] = []
                    while ready and len(inflight) < cfg.concurrency:
                        task = ready.popleft()
                        if task.host in down:
                            yield from unreachable(task)
                            continue
                        if active[task.host] >= cfg.per_host or paused_until.get(task.host, 0.0) > now:
                            held.append(task)
                            continue
                        active[task.host] += 1
                        inflight[self._executor.submit(self._attempt, task.url)] = task
                    ready.extendleft(reversed(held))
                if exhausted and not ready and not delayed and not inflight:
                    return
                wake = [t for t, _, _ in delayed[:1]]
                wake += [paused_until[t.host] for t in ready if paused_until.get(t.host, 0.0) > now]
                timeout = max(0.0, min(wake) - now) if wake else None
                if not inflight:
                    time.sleep(timeout if timeout is not None else 0.01)
                    continue
                done, _ = wait(list(inflight), timeout=timeout, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = inflight.pop(fut)
                    active[task.host] -= 1
                    outcome = fut.result()
                    if outcome.error is not None and outcome.error.reason in ("connection-error", "timeout"):
                        strikes[task.host] += 1
                        if strikes[task.host] >= cfg.host_down_after and task.host not in down:
                            down[task.host] = outcome.error
                            log.warning(
                                "%s did not answer %d attempts in a row; its other URLs are not tried in this run",
                                task.host,
                                strikes[task.host],
                            )
                    else:
                        strikes[task.host] = 0
                    if task.host in down and outcome.path is None:
                        yield from unreachable(task)
                        continue
                    if outcome.path is not None:
                        for _ in range(waiting.pop(task.url)):
                            yield task.url, outcome.path
                        continue
                    assert outcome.error is not None
                    if outcome.retry and task.attempt < cfg.retries:
                        now = time.monotonic()
                        if outcome.retry_after is not None:
                            delay = min(outcome.retry_after, cfg.max_backoff)
                            paused_until[task.host] = max(paused_until.get(task.host, 0.0), now + delay)
                        else:
                            delay = min(cfg.max_backoff, cfg.backoff * (2**task.attempt))
                            delay *= random.uniform(0.5, 1.0)  # jitter: retries of many URLs do not stampede
                        log.debug("retrying %s in %.2fs after %s", task.url, delay, outcome.error)
                        task.attempt += 1
                        heapq.heappush(delayed, (now + delay, next(order), task))
                        continue
                    log.debug("failed %s: %s", task.url, outcome.error)
                    for _ in range(waiting.pop(task.url)):
                        yield task.url, outcome.error
        finally:
            for fut in inflight:
                fut.cancel()

    # -- one attempt (in a worker thread) ---------------------------------------------------------

    def _pool_for(self, url: str):
        loc = parse_location(url)
        assert isinstance(loc, RemoteUrl)  # checked by _host_of before any attempt
        proxy = self._proxies.get(loc.scheme)
        if proxy is not None and not urllib.request.proxy_bypass(loc.hostname):
            return proxy
        return self._pool

    def _attempt(self, url: str) -> _Outcome:
        try:
            return _Outcome(path=self._download(url))
        except _Failed as f:
            return _Outcome(error=f.error, retry=f.retry, retry_after=f.retry_after)
        except Exception as exc:  # never let one URL take the generator down
            log.debug("unexpected error fetching %s", url, exc_info=True)
            return _Outcome(error=FetchError("connection-error", f"{url}: {type(exc).__name__}: {exc}"), retry=True)

    def _download(self, url: str) -> str:
        import urllib3
        from urllib3.exceptions import (
            ConnectTimeoutError,
            HTTPError,
            LocationParseError,
            MaxRetryError,
            NewConnectionError,
            ProtocolError,
            ReadTimeoutError,
        )
        from urllib3.exceptions import (
            TimeoutError as U3Timeout,
        )

        cfg = self.config
        deadline = time.monotonic() + (cfg.attempt_deadline or 4 * cfg.timeout)
        try:
            resp = self._pool_for(url).request(
                "GET",
                url,
                preload_content=False,
                timeout=self._timeout,
                retries=urllib3.Retry(
                    total=None, connect=0, read=0, status=0, other=0, redirect=5, raise_on_status=False
                ),
            )
        except MaxRetryError as exc:
            inner = exc.reason
            # NewConnectionError subclasses ConnectTimeoutError in urllib3: a refused connection is no timeout.
            if isinstance(inner, (ConnectTimeoutError, ReadTimeoutError, U3Timeout)) and not isinstance(
                inner, NewConnectionError
            ):
                raise _Failed("timeout", f"{url}: {inner}", retry=True) from None
            if "redirect" in str(exc).lower():
                raise _Failed("connection-error", f"{url}: too many redirects") from None
            raise _Failed("connection-error", f"{url}: {inner}", retry=True) from None
        except NewConnectionError as exc:
            raise _Failed("connection-error", f"{url}: {exc}", retry=True) from None
        except (ConnectTimeoutError, ReadTimeoutError, U3Timeout) as exc:
            raise _Failed("timeout", f"{url}: {exc}", retry=True) from None
        except (LocationParseError, ValueError) as exc:
            raise _Failed("invalid-url", f"{url}: {exc}") from None
        except (ProtocolError, HTTPError, OSError) as exc:
            raise _Failed("connection-error", f"{url}: {exc}", retry=True) from None
        try:
            return self._receive(url, resp, deadline)
        except (ReadTimeoutError, U3Timeout) as exc:
            raise _Failed("timeout", f"{url}: {exc}", retry=True) from None
        except (ProtocolError, HTTPError) as exc:
            raise _Failed("connection-error", f"{url}: {exc}", retry=True) from None
        finally:
            resp.release_conn()

    def _receive(self, url: str, resp, deadline: float) -> str:
        from urllib3.exceptions import ProtocolError

        cfg = self.config
        status = resp.status
        if status >= 300:
            resp.close()  # the error page is not wanted; its connection is not reused
            retry_after = parse_retry_after(resp.headers.get("Retry-After")) if status in (429, 503) else None
            raise _Failed(
                f"http-{status}",
                f"{url}: HTTP {status} {resp.reason or ''}".rstrip(),
                retry=status in RETRY_STATUS,
                retry_after=retry_after,
            )
        length = content_length(resp.headers.get("Content-Length"))
        if length is not None and length > cfg.max_bytes:
            resp.close()
            raise _Failed("too-large", f"{url}: Content-Length {length} is more than the limit of {cfg.max_bytes}")
        ctype = (resp.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        generic = ctype in GENERIC_TYPES
        if not generic and not ctype.startswith("image/"):
            resp.close()
            raise _Failed("not-an-image", f"{url}: Content-Type {ctype!r} is not an image")
        final = self.cache_path(url)
        folder = os.path.dirname(final)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            resp.close()
            raise _Failed("cache-error", f"{url}: cannot write to the cache {folder}: {exc}") from None
        received = 0
        head = b""
        ok = False
        try:
            with atomic_file(final) as out:
                while True:
                    if time.monotonic() > deadline:
                        raise _Failed("timeout", f"{url}: not complete within the attempt deadline", retry=True)
                    try:
                        chunk = resp.read1(1 << 16)
                    except ProtocolError as exc:
                        if length is not None and received < length:
                            raise _Failed(
                                "truncated", f"{url}: {received} of {length} bytes ({exc})", retry=True
                            ) from None
                        raise
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > cfg.max_bytes:
                        raise _Failed("too-large", f"{url}: more than the limit of {cfg.max_bytes} bytes")
                    if generic and len(head) < 32:
                        head += chunk[: 32 - len(head)]
                        if len(head) >= 32 and not looks_like_image(head):
                            raise _Failed(
                                "not-an-image", f"{url}: Content-Type {ctype or 'missing'} and not an image format"
                            )
                    out.write(chunk)
                if length is not None and received < length:
                    raise _Failed("truncated", f"{url}: {received} of {length} bytes", retry=True)
                if received == 0:
                    raise _Failed("not-an-image", f"{url}: empty body")
                if generic and len(head) < 32 and not looks_like_image(head):
                    raise _Failed("not-an-image", f"{url}: Content-Type {ctype or 'missing'} and not an image format")
            ok = True
            return final
        except OSError as exc:
            raise _Failed("cache-error", f"{url}: cannot write to the cache: {exc}") from None
        finally:
            if not ok:
                resp.close()
