"""The downloader against a local HTTP server, and read_location (indexer.media.read) for files and tar members."""

from __future__ import annotations

import email.utils
import io
import os
import tarfile
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from imagegen import write_shard
from PIL import Image

from indexer.build.download import DownloadConfig, Downloader
from indexer.build.http import looks_like_image
from indexer.build.http import parse_retry_after as _retry_after
from indexer.errors import FetchError
from indexer.locations import tar_location
from indexer.media.read import read_location


def _jpeg(color=(200, 30, 30), size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (timeouts, size limits) are part of the tests


class _Server:
    """A scripted HTTP server on 127.0.0.1 (ephemeral port) that records what it was asked."""

    def __init__(self) -> None:
        self.hits: dict[str, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802
                with server.lock:
                    server.hits[self.path].append(time.monotonic())
                    n = len(server.hits[self.path])
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    server.respond(self, self.path, n)
                finally:
                    with server.lock:
                        server.active -= 1

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    @staticmethod
    def send(h, status: int, body: bytes = b"", ctype: str = "image/jpeg", headers: dict | None = None) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def respond(self, h, path: str, n: int) -> None:
        if (
            path.startswith("http://museum.invalid/") or path.startswith("/img/") or path.startswith("/count/")
        ):  # asked as a proxy
            self.send(h, 200, JPEG)
        elif path == "/404":
            self.send(h, 404, b"nope", "text/plain")
        elif path == "/flaky500":
            self.send(h, 500, b"oops", "text/plain") if n == 1 else self.send(h, 200, JPEG)
        elif path == "/always503":
            self.send(h, 503, b"busy", "text/plain")
        elif path == "/429":
            if n == 1:
                self.send(h, 429, b"slow down", "text/plain", {"Retry-After": "1"})
            else:
                self.send(h, 200, JPEG)
        elif path == "/slow":
            time.sleep(1.0)
            self.send(h, 200, JPEG)
        elif path == "/drip":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", "400")
            h.end_headers()
            try:
                for _ in range(40):
                    h.wfile.write(b"x")
                    h.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif path == "/truncated":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Content-Length", str(len(JPEG) + 500))
            h.end_headers()
            h.wfile.write(JPEG)
            h.wfile.flush()
            h.close_connection = True
        elif path == "/html":
            self.send(h, 200, b"<html>not a picture</html>", "text/html; charset=utf-8")
        elif path == "/octet-image":
            self.send(h, 200, JPEG, "application/octet-stream")
        elif path == "/octet-text":
            self.send(h, 200, b"just some words, certainly no image here at all", "application/octet-stream")
        elif path == "/big":
            self.send(h, 200, JPEG + b"\0" * 5000)
        elif path == "/big-unsized":
            h.send_response(200)
            h.send_header("Content-Type", "image/jpeg")
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(JPEG + b"\0" * 5000)
            h.close_connection = True
        elif path.startswith("/busy/"):
            time.sleep(0.15)
            self.send(h, 200, JPEG)
        else:
            self.send(h, 404, b"", "text/plain")


_PROXY_VARS = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
    "all_proxy",
    "ALL_PROXY",
)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The local test server is reached directly, whatever proxy the developer's shell names."""
    for var in _PROXY_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _config(tmp_path, **kw) -> DownloadConfig:
    defaults = dict(
        cache_dir=tmp_path / "cache", concurrency=4, per_host=4, timeout=2.0, retries=2, backoff=0.01, max_backoff=5.0
    )
    defaults.update(kw)
    return DownloadConfig(**defaults)


def _fetch(tmp_path, urls, **kw) -> dict[str, str | FetchError]:
    with Downloader(_config(tmp_path, **kw)) as dl:
        return dict(dl.fetch_many(urls))


def _reason(result) -> str:
    assert isinstance(result, FetchError), f"expected a failure, got {result!r}"
    return result.reason


def test_success_is_cached_file_with_the_body(server, tmp_path):
    url = server.url("/img/a.jpg")
    out = _fetch(tmp_path, [url])
    path = out[url]
    assert isinstance(path, str) and Path(path).read_bytes() == JPEG
    assert not list((tmp_path / "cache").rglob(".*")), "no temporary file left behind"


def test_404_is_not_retried(server, tmp_path):
    url = server.url("/404")
    result = _fetch(tmp_path, [url])[url]
    assert _reason(result) == "http-404" and url in result.detail
    assert len(server.hits["/404"]) == 1


def test_500_then_success_is_retried(server, tmp_path):
    url = server.url("/flaky500")
    result = _fetch(tmp_path, [url])[url]
    assert isinstance(result, str)
    assert len(server.hits["/flaky500"]) == 2


def test_5xx_retries_are_bounded(server, tmp_path):
    url = server.url("/always503")
    assert _reason(_fetch(tmp_path, [url], retries=2)[url]) == "http-503"
    assert len(server.hits["/always503"]) == 3


def test_429_waits_for_retry_after(server, tmp_path):
    url = server.url("/429")
    result = _fetch(tmp_path, [url], backoff=0.01)[url]
    assert isinstance(result, str)
    first, second = server.hits["/429"]
    assert second - first >= 0.95, "Retry-After: 1 was not honoured"


def test_retry_after_forms():
    assert _retry_after("3") == 3.0
    assert _retry_after("garbage") is None
    future = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= _retry_after(future) <= 31
    past = email.utils.formatdate(time.time() - 30, usegmt=True)
    assert _retry_after(past) == 0.0


def test_slow_response_times_out(server, tmp_path):
    url = server.url("/slow")
    result = _fetch(tmp_path, [url], timeout=0.3, retries=0)[url]
    assert _reason(result) == "timeout" and url in result.detail


def test_drip_feed_hits_the_attempt_deadline(server, tmp_path):
    url = server.url("/drip")
    started = time.monotonic()
    result = _fetch(tmp_path, [url], timeout=0.5, attempt_deadline=0.6, retries=0)[url]
    assert _reason(result) == "timeout"
    assert time.monotonic() - started < 3.5, "a drip-feeding server held the slot past its deadline"


def test_truncated_body(server, tmp_path):
    url = server.url("/truncated")
    result = _fetch(tmp_path, [url], retries=1)[url]
    assert _reason(result) == "truncated"
    assert len(server.hits["/truncated"]) == 2, "a truncated body is retried once"
    assert not list((tmp_path / "cache").rglob("*")) or all(p.is_dir() for p in (tmp_path / "cache").rglob("*"))


def test_non_image_content_type(server, tmp_path):
    url = server.url("/html")
    assert _reason(_fetch(tmp_path, [url])[url]) == "not-an-image"


def test_generic_content_type_is_sniffed(server, tmp_path):
    good, bad = server.url("/octet-image"), server.url("/octet-text")
    out = _fetch(tmp_path, [good, bad])
    assert isinstance(out[good], str)
    assert _reason(out[bad]) == "not-an-image"


def test_oversized_body(server, tmp_path):
    sized, unsized = server.url("/big"), server.url("/big-unsized")
    out = _fetch(tmp_path, [sized, unsized], max_bytes=2000)
    assert _reason(out[sized]) == "too-large"
    assert _reason(out[unsized]) == "too-large"


def test_invalid_urls(tmp_path):
    out = _fetch(tmp_path, ["ftp://example.org/a.jpg", "http://", "not a url"])
    assert {_reason(v) for v in out.values()} == {"invalid-url"}


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (a connection is refused at once)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_connection_refused(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/a.jpg"
    assert _reason(_fetch(tmp_path, [url], retries=1)[url]) == "connection-error"


def test_a_host_that_never_answers_is_given_up_on(server, tmp_path, monkeypatch):
    """200 URLs on a dead host cost a few attempts, not 200 x (1 + retries); other hosts go on."""
    port = _closed_port()
    dead = [f"http://127.0.0.1:{port}/img{i}.jpg" for i in range(200)]
    good = server.url("/img/ok.jpg")
    attempts = []
    real = Downloader._attempt

    def counting(self, url):
        attempts.append(url)
        return real(self, url)

    monkeypatch.setattr(Downloader, "_attempt", counting)
    out = _fetch(tmp_path, [*dead, good], retries=3, host_down_after=6)
    reasons = Counter(_reason(out[u]) for u in dead)
    assert set(reasons) <= {"connection-error", "host-unreachable"} and reasons["host-unreachable"] >= 190
    assert sum(1 for u in attempts if u in dead) < 6 + 4 * 4  # the strikes, plus what was in flight
    assert "did not answer 6 attempts in a row" in out[dead[-1]].detail
    assert isinstance(out[good], str)  # another host is not affected


def test_cache_hit_on_second_run(server, tmp_path):
    urls = [server.url(f"/count/{i}.jpg") for i in range(5)]
    first = _fetch(tmp_path, urls)
    second = _fetch(tmp_path, urls)  # a new Downloader: across runs
    assert first == second
    assert all(len(server.hits[f"/count/{i}.jpg"]) == 1 for i in range(5))


def test_failures_are_not_cached(server, tmp_path):
    url = server.url("/404")
    _fetch(tmp_path, [url])
    _fetch(tmp_path, [url])
    assert len(server.hits["/404"]) == 2


def test_duplicate_urls_download_once(server, tmp_path):
    url = server.url("/busy/dup.jpg")
    with Downloader(_config(tmp_path)) as dl:
        results = list(dl.fetch_many([url, url, url]))
    assert len(results) == 3 and all(isinstance(r, str) for _, r in results)
    assert len(server.hits["/busy/dup.jpg"]) == 1


def test_per_host_concurrency_is_bounded(server, tmp_path):
    urls = [server.url(f"/busy/{i}.jpg") for i in range(12)]
    out = _fetch(tmp_path, urls, concurrency=8, per_host=2)
    assert all(isinstance(v, str) for v in out.values())
    assert server.max_active <= 2
    assert server.max_active == 2, "downloads should run in parallel up to the per-host limit"


def test_input_is_consumed_lazily(server, tmp_path):
    taken = []

    def urls():
        for i in range(50):
            taken.append(i)
            yield server.url(f"/img/{i}.jpg")

    with Downloader(_config(tmp_path, max_pending=5)) as dl:
        gen = dl.fetch_many(urls())
        next(gen)
        assert len(taken) <= 6, f"read {len(taken)} URLs ahead with max_pending=5"
        gen.close()


def test_looks_like_image():
    assert looks_like_image(JPEG[:32])
    png = io.BytesIO()
    Image.new("RGB", (2, 2)).save(png, "PNG")
    assert looks_like_image(png.getvalue()[:32])
    assert not looks_like_image(b"<!doctype html><html>")


def test_config_is_frozen_and_checked(tmp_path):
    cfg = DownloadConfig(cache_dir=tmp_path)
    assert cfg.concurrency == 16 and cfg.per_host == 4 and cfg.max_bytes == 64 << 20
    assert cfg.user_agent.startswith("bioclip-search/")
    with pytest.raises(Exception):
        cfg.concurrency = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        DownloadConfig(cache_dir=tmp_path, per_host=0)


# -- read_location -----------------------------------------------------------------------------


def test_read_location_local_file(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(JPEG)
    assert read_location(str(p)) == JPEG
    assert read_location(p.as_uri()) == JPEG
    with pytest.raises(FetchError) as e:
        read_location(str(p), max_bytes=10)
    assert e.value.reason == "too-large"
    with pytest.raises(FetchError) as e:
        read_location(str(tmp_path / "missing.jpg"))
    assert e.value.reason == "not-found"


def test_read_location_url_needs_a_downloader(server, tmp_path):
    url = server.url("/img/x.jpg")
    with pytest.raises(FetchError) as e:
        read_location(url)
    assert e.value.reason == "invalid-url"
    with Downloader(_config(tmp_path)) as dl:
        assert read_location(url, downloader=dl) == JPEG


def test_read_location_tar_member_by_offset(tmp_path):
    shard = tmp_path / "s.tar"
    write_shard(shard, {"a.jpg": JPEG, "b.jpg": b"second"})
    with tarfile.open(shard) as tf:
        b = tf.getmember("b.jpg")
    loc = tar_location(str(shard), "b.jpg", b.offset_data, b.size)
    assert read_location(loc) == b"second"
    with pytest.raises(FetchError) as e:
        read_location(loc, max_bytes=3)
    assert e.value.reason == "too-large"
    # the shard was cut short after the scan: the member's bytes are no longer all there
    data = shard.read_bytes()
    shard.write_bytes(data[: b.offset_data + 2])
    with pytest.raises(FetchError) as e:
        read_location(loc)
    assert e.value.reason == "truncated"


def test_read_location_compressed_tar_member(tmp_path):
    shard = tmp_path / "s.tar.gz"
    write_shard(shard, {f"{i:03d}.jpg": f"img{i}".encode() for i in range(5)}, mode="w:gz")
    for i in (1, 3, 0, 4):  # in order and backwards
        assert read_location(tar_location(str(shard), f"{i:03d}.jpg")) == f"img{i}".encode()
    with pytest.raises(FetchError) as e:
        read_location(tar_location(str(shard), "nope.jpg"))
    assert e.value.reason == "not-found"


def test_read_location_bad_tar_location():
    with pytest.raises(FetchError) as e:
        read_location("tar:///x.tar?offset=zz&size=1#a.jpg")
    assert e.value.reason == "invalid-url"


def test_read_location_unknown_scheme():
    with pytest.raises(FetchError) as e:
        read_location("ftp://example.org/a.jpg")
    assert e.value.reason == "invalid-url"


def test_downloader_fetches_nothing_after_close(tmp_path):
    dl = Downloader(_config(tmp_path))
    dl.close()
    with pytest.raises(RuntimeError):
        next(dl.fetch_many(["http://127.0.0.1:9/a.jpg"]))
    assert os.path.isdir(tmp_path / "cache")


def test_proxy_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("http_proxy", server.url(""))
    url = "http://museum.invalid/asset/1.jpg"
    assert isinstance(_fetch(tmp_path, [url])[url], str)
    assert server.hits[url], "the request went through the proxy"
