"""Scale benchmark: the sharded on-disk index at growing n, and how each cost grows with n.

    python bench/scale.py [--sizes 100000,300000,1000000] [--dims 512,768] [--quick]
                          [--bytes-per-vector 128] [--workers 2] [--queries 200] [--json OUT]

For each dimension and size: n image vectors (float16, memory-mapped, as a collection stores them)
from the modality-gap testbed (``indexer.ann.testbed``: species-like clusters, text vectors with
CLIP's modality gap), an index chosen for a budget of ``--bytes-per-vector`` x n (the per-vector
budget of 100M images in ~13 GB: IVF with PQ codes and exact re-ranking from the stored vectors)
and built by ``indexer.ann.ondisk.build_ondisk_index`` from shards in ``--workers`` processes.
Reported:

  - build time, peak build memory (anonymous memory of this process and its shard workers, as
    proportional set size so that pages a forked worker shares with its parent count once, sampled
    every 0.2 s; the memory-mapped vectors are file pages and not counted) and this process's
    baseline before the build, the documented bound (``build_memory``, which leaves out each
    process's baseline), index size on disk (index file + lists);
  - search RSS: anonymous resident memory of a fresh process that opens the index and answers 50
    queries, and its fraction of the index size;
  - single-query latency p50 / p99 (one FAISS thread, with exact re-ranking from the memory-mapped
    vectors) and recall@10 against exact search, per query kind: image (held-out images), text
    (taxon names as text vectors), mixed (text + image);
  - filtered recall@10 and p50 at 0.1% and 1% selectivity, for a taxon filter (whole species: a
    region of the space) and for uniformly spread ids;
  - the growth of each figure from each size to the next (ratio), which the README's cost model
    extrapolates to 100M and 1B.

The coarse quantizer is an HNSW32 graph at every size (as the automatic choice has from 16,384
lists on, i.e. at 10M+), so assigning vectors to lists is not what a small n measures. The codes are
the automatic choice's for the budget (PQ64 at 512-d and PQ96 at 768-d for 128 bytes a vector: the
largest PQ with sub-vectors of at least 8 dimensions that fits), re-ranked exactly; ``--pq-subdim S``
forces PQ{d/S} instead (16: PQ32 at 512-d, the code size that misses the text-query target at 1M);
``--opq`` puts an OPQ rotation of as many blocks in front (``OPQ64,IVF...,PQ64``).
Training is always two-level k-means and the codebooks are trained on ``--codebook-sample`` vectors
(the library's default, 65,536).
Everything is seeded. ``--quick``: 20K and 60K at 512-d, 100 queries, to check the script.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import index_ram_mib, latency_ms, machine, print_table  # noqa: E402

from indexer.ann import exact_search, recall_at_k  # noqa: E402
from indexer.ann import train as ann_train  # noqa: E402
from indexer.ann.choice import choose_index, ivf_nlist  # noqa: E402
from indexer.ann.io import ondisk_data_path  # noqa: E402
from indexer.ann.ondisk import build_ondisk_index  # noqa: E402
from indexer.ann.sharded import ShardOptions, build_memory  # noqa: E402
from indexer.ann.testbed import ModalityGapTestbed  # noqa: E402
from indexer.store.pieces import ArrayPiece  # noqa: E402
from indexer.store.vectors import ArrayVectors  # noqa: E402

MiB = 2**20


class PeakSampler:
    """Peak of the anonymous memory of this process and its children, sampled every ``every``
    seconds, as proportional set size (``Pss_Anon``): a forked shard worker shares its parent's pages
    copy-on-write, and counting them in each (``RssAnon``) counted the parent once per worker.
    ``baseline`` is this process's at the start (the interpreter, libraries, the benchmark's data)."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.baseline = self._anon(os.getpid())

    @staticmethod
    def _anon(pid: int) -> float:
        for name, field in ((f"/proc/{pid}/smaps_rollup", "Pss_Anon:"), (f"/proc/{pid}/status", "RssAnon:")):
            try:
                with open(name) as f:
                    for line in f:
                        if line.startswith(field):
                            return int(line.split()[1]) / 1024
            except OSError:
                continue
        return 0.0

    def _children(self) -> list[int]:
        try:
            with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def _run(self) -> None:
        while not self._stop.is_set():
            total = self._anon(os.getpid()) + sum(self._anon(p) for p in self._children())
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def make_data(n: int, d: int, m: int, folder: Path):
    """(float16 memmap (n, d), species or None, {kind: queries}, testbed or None)."""
    vecs = np.lib.format.open_memmap(folder / f"x{n}_{d}.npy", mode="w+", dtype=np.float16, shape=(n, d))
    tb = ModalityGapTestbed(d=d, n_species=max(50, n // 1000), seed=0)
    _, species = tb.images(n, out=vecs)
    images, _ = tb.images(m, stream=1)
    texts = tb.text_queries(m, stream=1)
    return vecs, species, {"image": images, "text": texts, "mixed": tb.mixed(texts, images)}, tb


def tuning_for(tb) -> dict | None:
    """Text tuning queries (other phrasings than the measured ones), so each kind is tuned."""
    return None if tb is None else {"text": tb.text_queries(500, stream=7)}


def taxon_filter(species: np.ndarray | None, p: float, n: int, rng: np.random.Generator) -> np.ndarray | None:
    """Rows of whole species adding up to about p of the collection (None without species)."""
    if species is None:
        return None
    counts = np.bincount(species)
    chosen, total = [], 0
    for s in rng.permutation(counts.size):
        if counts[s] == 0 or total + counts[s] > 1.5 * p * n:
            continue
        chosen.append(s)
        total += counts[s]
        if total >= 0.7 * p * n:
            break
    return np.flatnonzero(np.isin(species, chosen))


def one(n: int, d: int, args: argparse.Namespace, folder: Path) -> dict:
    import faiss

    t0 = time.perf_counter()
    vecs, species, queries, tb = make_data(n, d, args.queries, folder)
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    gen_s = time.perf_counter() - t0
    factory = choose_index(n, d, args.bytes_per_vector * n, ondisk=True)
    head = factory.split(",", 1)[0] if factory.startswith("IVF") else f"IVF{ivf_nlist(n)}"
    if "_HNSW" not in head:  # the coarse quantizer of the 10M+ choice, at every size measured
        head = f"{head}_HNSW32"
    code = factory.split(",")[1] if factory.startswith("IVF") else f"PQ{d // 8}"
    code = f"PQ{d // args.pq_subdim}" if args.pq_subdim else code
    factory = f"{head},{code}"
    if args.opq:  # a learned rotation before the coarse quantizer and the codes
        factory = f"OPQ{code[2:].split('x')[0]},{factory}"
    opts = ShardOptions(executor="local", workers=args.workers)
    bound = build_memory(factory, n, d, opts)
    lookup = ArrayVectors(vecs, ids)
    path = folder / f"scale-{n}-{d}.faiss"
    faiss.omp_set_num_threads(args.workers)
    with PeakSampler() as peak:
        t1 = time.perf_counter()
        ann = build_ondisk_index([ArrayPiece(vecs, ids)], path, factory=factory, dimension=d, options=opts,
                                 tuning_queries=tuning_for(tb), vector_lookup=lookup)  # fmt: skip
        build_s = time.perf_counter() - t1
    size = path.stat().st_size + ondisk_data_path(path).stat().st_size
    ram = index_ram_mib(path)
    faiss.omp_set_num_threads(1)
    row = {
        "n": n, "d": d, "factory": factory, "params": ann.info.params, "generate_s": round(gen_s, 1),
        "build_s": round(build_s, 1), "phases_s": ann.info.build["seconds"], "peak_build_mib": round(peak.peak, 1),
        "baseline_mib": round(peak.baseline, 1),
        "bound_mib": round(bound["peak"] / MiB, 1), "index_mib": round(size / MiB, 1),
        "search_rss_mib": round(ram["after_search_mib"], 1), "search_rss_fraction": round(ram["after_search_mib"] * MiB / size, 4),
    }  # fmt: skip
    for kind, q in queries.items():
        truth = exact_search(vecs, ids, q, 10)[1]
        # each kind searched with its own tuned parameters, as the engine does
        found = ann.search(q, 10, vector_lookup=lookup, kind=kind)[1]
        p50, p99 = latency_ms(
            lambda i, q=q, kind=kind: ann.search(q[i % len(q)], 10, vector_lookup=lookup, kind=kind),
            len(q),
        )
        row[f"{kind}_recall"] = round(recall_at_k(found, truth, 10), 4)
        row[f"{kind}_p50_ms"], row[f"{kind}_p99_ms"] = round(p50, 2), round(p99, 2)
    rng = np.random.default_rng(5)
    qkind = "text" if "text" in queries else "image"
    q = queries[qkind]
    for p in (0.001, 0.01):
        cases = {"uniform": np.sort(rng.choice(n, size=max(10, int(p * n)), replace=False)),
                 "taxon": taxon_filter(species, p, n, rng)}  # fmt: skip
        for name, rows in cases.items():
            if rows is None or rows.size < 10:
                continue
            allowed = ids[rows]
            truth = exact_search(vecs, ids, q, 10, allowed_ids=allowed)[1]
            found = ann.search(q, 10, allowed_ids=allowed, vector_lookup=lookup, kind=qkind)[1]
            p50, _ = latency_ms(
                lambda i, allowed=allowed: ann.search(
                    q[i % len(q)], 10, allowed_ids=allowed, vector_lookup=lookup, kind=qkind
                ),
                50,
            )
            row[f"filter_{name}_{p:.1%}_recall"] = round(recall_at_k(found, truth, 10), 4)
            row[f"filter_{name}_{p:.1%}_p50_ms"] = round(p50, 2)
    for f in folder.glob(f"scale-{n}-{d}.faiss*"):
        f.unlink()
    (folder / f"x{n}_{d}.npy").unlink()
    return row


GROWTH = ("build_s", "peak_build_mib", "index_mib", "search_rss_mib", "image_p50_ms", "image_p99_ms", "text_p50_ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,300000,1000000")
    ap.add_argument("--dims", default="512,768")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bytes-per-vector", type=int, default=128, help="memory budget per vector (picks nlist)")
    ap.add_argument("--pq-subdim", type=int, default=0, help="force PQ{d/this} (default: the automatic choice's code)")
    ap.add_argument("--opq", action="store_true", help="an OPQ rotation before the index (OPQm,IVF...,PQm)")
    ap.add_argument("--codebook-sample", type=int, default=ann_train.CODEBOOK_SAMPLE)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--json", default=None, help="also write the rows here, one JSON object per line")
    ap.add_argument("--tmp", default=None, help="folder for the vectors and indexes (default: a temporary one)")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.dims, args.queries = "20000,60000", "512", 100
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    ann_train.TWO_LEVEL_MIN_NLIST = 1
    ann_train.CODEBOOK_SAMPLE = args.codebook_sample
    print(f"machine: {machine()}")
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.tmp:
        Path(args.tmp).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.tmp))
    rows = []
    try:
        for d in (int(x) for x in args.dims.split(",")):
            for n in sizes:
                row = one(n, d, args, folder)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    keys = [k for k in rows[0] if k not in ("params", "phases_s")]
    print_table("per size", keys, [[r.get(k, "") for k in keys] for r in rows])
    growth = []
    for a, b in zip(rows, rows[1:]):
        if a["d"] == b["d"]:
            growth.append([f"{a['n']:,} -> {b['n']:,} ({b['d']}-d)", round(b["n"] / a["n"], 2)]
                          + [round(b[k] / a[k], 2) if a.get(k) else "" for k in GROWTH])  # fmt: skip
    print_table("growth (ratio of each figure to the size before)", ["sizes", "n ratio", *GROWTH], growth)


if __name__ == "__main__":
    main()
