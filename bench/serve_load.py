"""Load test of ``bioclip-serve``: 32 concurrent clients for 60 s mixing text, picture, filtered and
thumbnail requests while an indexer publishes new generations into the same collection.

    python bench/serve_load.py                          # 32 clients, 60 s, 1 worker
    python bench/serve_load.py --clients 8 --seconds 20 --workers 2

Loopback only (the server binds 127.0.0.1), bounded in time (``--seconds``) and in requests
(``--max-requests``). The collection: ``--images`` generated pictures with Darwin Core labels,
indexed with ``random:ViT-B-16`` (BioCLIP's architecture: the real cost of encoding query texts and
pictures). While the clients run, ``bioclip-index build`` adds batches of new images to the same
collection (a generation every ``--commit-every`` images).

The mix: 35% text (taxon names and free text, some repeated), 25% filtered text (country, year
range, taxon), 15% picture uploads (multipart), 25% thumbnails of images the answers named.
Reported, all in this run: failed requests (anything but 200, or no answer; the goal is zero),
p50 and p99 per kind and overall, requests/s per worker, the generations the server went through,
and the ratio of the p50 under load to a single client's p50 measured just before.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from _common import cpu_description, machine, print_table  # noqa: E402

MODEL = "random:ViT-B-16"
TEXTS = ["Corvus corax", "Corvidae", "Felis catus", "Rosa canina", "common raven", "a bird on a branch", "a cat"]
TEXTS += [f"a {w} in the {p}" for w in ("beetle", "moth", "frog", "fern", "finch") for p in ("forest", "field", "sea")]
FILTERS = ["country=Kenya", "country=Sweden", "year=1900..1950", "year>=1950", "taxon=Corvidae", "institutionCode=NHM"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg(seed: int) -> bytes:
    from imagegen import picture

    buf = io.BytesIO()
    picture(seed, (320, 240)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class Client:
    """One client: its own connection, a seeded mix of requests."""

    def __init__(self, base: str, seed: int, ids: list[int]):
        import urllib3

        self.base = base
        self.rng = random.Random(seed)
        self.http = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(connect=10, read=120))
        self.ids = ids
        self.pictures = [jpeg(seed * 100 + i) for i in range(3)]

    def one(self) -> tuple[str, float, bool]:
        from urllib3 import encode_multipart_formdata

        r = self.rng.random()
        path = "/v1/collections/col"
        t0 = time.perf_counter()
        try:
            if r < 0.35:
                kind = "text"
                resp = self.http.request(
                    "GET", self.base + path + "/search", fields={"q": self.rng.choice(TEXTS), "k": 10}
                )
            elif r < 0.60:
                kind = "filtered"
                fields = [("q", self.rng.choice(TEXTS)), ("where", self.rng.choice(FILTERS)), ("k", "10")]
                resp = self.http.request("GET", self.base + path + "/search", fields=fields)
            elif r < 0.75:
                kind = "picture"
                body, ctype = encode_multipart_formdata(
                    [("image", ("q.jpg", self.rng.choice(self.pictures), "image/jpeg")), ("k", "10")]
                )
                resp = self.http.request(
                    "POST", self.base + path + "/search", body=body, headers={"Content-Type": ctype}
                )
            else:
                kind = "thumbnail"
                image = self.rng.choice(self.ids)
                resp = self.http.request("GET", self.base + path + f"/images/{image}/thumbnail", fields={"size": 256})
            ok = resp.status == 200
            if ok and kind != "thumbnail" and self.rng.random() < 0.3:
                hits = json.loads(resp.data)["hits"]
                if hits:
                    self.ids.append(self.rng.choice(hits)["id"])
        except Exception:  # no answer counts as a failure
            ok = False
        return kind, time.perf_counter() - t0, ok


def run_clients(base: str, n: int, seconds: float, max_requests: int, ids: list[int]) -> list[tuple[str, float, bool]]:
    results: list[tuple[str, float, bool]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker(i: int) -> None:
        c = Client(base, i, list(ids))
        while time.monotonic() < stop_at:
            out = c.one()
            with lock:
                if len(results) >= max_requests:
                    return
                results.append(out)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def indexer_loop(col: Path, work: Path, stop: threading.Event, commit_every: int, log: list[str]) -> None:
    from imagegen import make_folder

    batch = 0
    while not stop.is_set():
        folder = make_folder(work / f"more{batch}", commit_every * 2, start=10_000 + batch * 1000)
        cmd = [
            sys.executable,
            "-c",
            "from indexer.cli.index import main; main()",
            "build",
            str(folder),
            "--labels",
            str(folder / "labels.csv"),
        ]
        cmd += ["--out", str(col), "--model", MODEL, "--commit-every", str(commit_every), "-q"]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        log.append(f"batch {batch}: exit {r.returncode}" + (f" {r.stderr[-300:]}" if r.returncode else ""))
        batch += 1


def summarise(results: list[tuple[str, float, bool]]) -> dict[str, tuple[int, int, float, float]]:
    by: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for kind, dt, ok in results:
        by[kind].append((dt, ok))
        by["all"].append((dt, ok))
    out = {}
    for kind, rows in by.items():
        times = np.array([dt for dt, _ in rows]) * 1000
        out[kind] = (
            len(rows),
            sum(not ok for _, ok in rows),
            float(np.percentile(times, 50)),
            float(np.percentile(times, 99)),
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--max-requests", type=int, default=200_000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--commit-every", type=int, default=8)
    ap.add_argument("--single", type=int, default=60, help="requests of the single-client baseline")
    args = ap.parse_args()

    from imagegen import make_folder

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    server = None
    stop = threading.Event()
    indexer_log: list[str] = []
    try:
        folder = make_folder(work / "imgs", args.images)
        col = work / "col"
        cmd = [
            sys.executable,
            "-c",
            "from indexer.cli.index import main; main()",
            "build",
            str(folder),
            "--labels",
            str(folder / "labels.csv"),
        ]
        subprocess.run([*cmd, "--out", str(col), "--model", MODEL, "-q"], check=True, cwd=ROOT, timeout=3600)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = open(work / "server.log", "wb")  # noqa: SIM115 - closed below
        server = subprocess.Popen(
            [sys.executable, "-m", "indexer.cli.serve", str(col), "--port", str(port), "--host", "127.0.0.1"]
            + ["--workers", str(args.workers), "--rate-limit", "none", "--no-access-log"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        import urllib3

        http = urllib3.PoolManager(retries=False)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            try:
                if http.request("GET", base + "/readyz", timeout=2).status == 200:
                    break
            except urllib3.exceptions.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit((work / "server.log").read_text())
            time.sleep(0.5)
        listing = json.loads(http.request("GET", base + "/v1/collections/col/search", fields={"q": "x", "k": 100}).data)
        ids = [h["id"] for h in listing["hits"]]
        gen0 = json.loads(http.request("GET", base + "/readyz").data)["collections"]["col"]["generation"]

        single = run_clients(base, 1, 3600, args.single, ids)
        threading.Thread(
            target=indexer_loop, args=(col, work, stop, args.commit_every, indexer_log), daemon=True
        ).start()
        t0 = time.perf_counter()
        loaded = run_clients(base, args.clients, args.seconds, args.max_requests, ids)
        elapsed = time.perf_counter() - t0
        stop.set()
        ready = json.loads(http.request("GET", base + "/readyz").data)
        gen1 = ready["collections"]["col"]["generation"]
        images = json.loads(http.request("GET", base + "/v1/collections").data)[0]["images"]
    finally:
        stop.set()
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)

    s1, sl = summarise(single), summarise(loaded)
    print(f"machine: {machine()}")
    print(f"cpu: {cpu_description()}")
    print(
        f"collection: {args.images} images at the start, {MODEL}; server: {args.workers} worker(s), loopback; "
        f"indexer published generations {gen0} -> {gen1} during the run ({images} images at the end)"
    )
    rows = [[k, *sl[k]] for k in ("text", "filtered", "picture", "thumbnail", "all") if k in sl]
    print_table(f"{args.clients} clients for {elapsed:.0f} s", ["kind", "requests", "failed", "p50 ms", "p99 ms"], rows)
    print_table(
        "1 client, same mix, just before",
        ["kind", "requests", "failed", "p50 ms", "p99 ms"],
        [[k, *s1[k]] for k in ("text", "filtered", "picture", "thumbnail", "all") if k in s1],
    )
    failed = sl["all"][1] + s1["all"][1]
    print(f"\nfailed requests: {failed} of {sl['all'][0] + s1['all'][0]}")
    print(f"requests/s: {sl['all'][0] / elapsed:.1f} in all, {sl['all'][0] / elapsed / args.workers:.1f} per worker")
    print(f"p50 under load / single-client p50 = {sl['all'][2] / s1['all'][2]:.2f}")
    print("indexer batches: " + "; ".join(indexer_log))


if __name__ == "__main__":
    main()
