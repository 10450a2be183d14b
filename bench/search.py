"""Search benchmark: the automatically chosen ANN index against exact search and a plain HNSW32.

    python bench/search.py [--n 1000000] [--d 512] [--quick] [--queries 300] [--skip-hnsw]

Data: ``--n`` clustered, L2-normalised embeddings (bench/_common.py: cone + genera + species + noise on
a decaying spectrum), stored as float16 in a memory-mapped file like the collection's vector segments,
with stable non-contiguous ids (3 * row + 1); ``--queries`` held-out vectors from the same distribution.
Exact ground truth is computed for those queries only (one streaming pass over the file per filter).

Reported, all measured in this one run (absolute times are noisy on a shared machine; compare ratios):

  1. the automatically chosen index (``choose_index``, default memory budget): build time, bytes per
     vector, single-query latency p50/p99, recall@10 vs exact; the same for exact search (``Flat``) and
     for a plain FAISS HNSW32 at efSearch 256, and ratios against both;
  2. a compressed configuration chosen for a budget of 600 MiB per million vectors: its RAM (anonymous
     resident memory of a fresh process that loads it and answers queries) and recall;
  3. filtered search at selectivities 0.1%, 1%, 10%, 50% (random ids) and a filter concentrated in one
     region of the space queried from elsewhere: recall vs exact filtered search and latency p50, for
     the policy, for each of its two paths forced, and for plain HNSW32 with a selector;
  4. growth of build time and memory from n/10 to n.

Threads: builds use every core; every latency is one query at a time with one FAISS (OpenMP) thread,
as a search server answering concurrent users would run (numpy keeps its default BLAS threads).

Targets on this 2-core machine at 1M x 512: p50 <= 5 ms at recall@10 >= 0.95; a compressed
configuration in <= 600 MB RAM at recall@10 >= 0.9.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import (  # noqa: E402
    Timer,
    clustered_embeddings,
    file_mib,
    index_ram_mib,
    latency_ms,
    machine,
    memory_mib,
    print_table,
)

from indexer import ann  # noqa: E402
from indexer.ann import search as ann_search  # noqa: E402

K = 10
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
COMPRESSED_BUDGET = 600 * 2**20


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class Bench:
    def __init__(self, n: int, d: int, nq: int, seed: int, workdir: Path):
        self.n, self.d, self.nq, self.seed, self.workdir = n, d, nq, seed, workdir
        with Timer() as t:
            store = np.memmap(workdir / "vectors.f16", dtype=np.float16, mode="w+", shape=(n + nq, d))
            clustered_embeddings(n + nq, d, seed=seed, out=store)
            store.flush()
        self.xb = np.memmap(workdir / "vectors.f16", dtype=np.float16, mode="r", shape=(n, d))
        q = np.asarray(store[n:], dtype=np.float32)
        self.xq = q / np.linalg.norm(q, axis=1, keepdims=True)
        del store
        self.ids = np.arange(n, dtype=np.int64) * 3 + 1
        print(
            f"data: {n:,} x {d} float16 ({file_mib(workdir / 'vectors.f16'):.0f} MiB) + {nq} queries in {t.seconds:.1f} s"
        )
        with Timer() as t:
            self.truth = ann.exact_search(self.xb, self.ids, self.xq, K)[1]
        print(f"exact ground truth for {nq} queries: {t.seconds:.1f} s")

    def lookup(self, wanted: np.ndarray) -> np.ndarray:
        """The stored float16 vectors by id, widened: what the search engine passes as vector_lookup."""
        rows = (wanted - 1) // 3
        order = np.argsort(rows)
        out = np.empty((rows.size, self.d), dtype=np.float32)
        out[order] = self.xb[rows[order]]
        return out

    def measure(
        self,
        name: str,
        index: ann.AnnIndex,
        build_s: float,
        ram_mib: float,
        params: dict | None = None,
        nq: int | None = None,
    ) -> dict:
        nq = min(nq or self.nq, self.nq)
        lookup = self.lookup
        with faiss_threads(1):
            p50, p99 = latency_ms(
                lambda i: index.search(self.xq[i : i + 1], K, params=params, vector_lookup=lookup), nq
            )
            found = index.search(self.xq, K, params=params, vector_lookup=lookup)[1]
        return {
            "name": name,
            "factory": index.factory,
            "params": {**index.info.params, **(params or {})},
            "build_s": build_s,
            "bytes_per_vector": index.info.bytes_per_vector,
            "ram_mib": ram_mib,
            "p50": p50,
            "p99": p99,
            "recall": ann.recall_at_k(found, self.truth, K),
            "tuned_recall": index.info.measured_recall,
            "needs_lookup": index.needs_vector_lookup,
        }

    def build(
        self, factory: str | None = None, *, n: int | None = None, memory_budget: int | None = None
    ) -> tuple[ann.AnnIndex, float, float]:
        """(index, build seconds, growth of anonymous resident memory in MiB)."""
        n = n or self.n
        gc.collect()
        before = memory_mib()["RssAnon"]
        with Timer() as t:
            index = ann.build_index(
                self.xb[:n], self.ids[:n], factory=factory, memory_budget=memory_budget, seed=self.seed
            )
        gc.collect()
        return index, t.seconds, memory_mib()["RssAnon"] - before


def hnsw_reference(b: Bench) -> tuple[dict, object]:
    """Plain FAISS HNSW32 (efConstruction 40, efSearch 256), no id map, no tuning."""
    import faiss

    gc.collect()
    before = memory_mib()["RssAnon"]
    with Timer() as t:
        index = faiss.IndexHNSWFlat(b.d, 32, faiss.METRIC_INNER_PRODUCT)
        step = 65_536
        for start in range(0, b.n, step):
            index.add(np.ascontiguousarray(b.xb[start : start + step], dtype=np.float32))
    ram = memory_mib()["RssAnon"] - before
    params = faiss.SearchParametersHNSW(efSearch=256)
    with faiss_threads(1):
        p50, p99 = latency_ms(lambda i: index.search(b.xq[i : i + 1], K, params=params), b.nq)
        rows = index.search(b.xq, K, params=params)[1]
    found = np.where(rows >= 0, rows * 3 + 1, -1)
    row = {
        "name": "HNSW32 (reference)",
        "factory": "HNSW32",
        "params": {"efSearch": 256},
        "build_s": t.seconds,
        "bytes_per_vector": ram * 2**20 / b.n,
        "ram_mib": ram,
        "p50": p50,
        "p99": p99,
        "recall": ann.recall_at_k(found, b.truth, K),
        "tuned_recall": None,
    }
    return row, index


def hnsw_filtered(b: Bench, index: object, allowed: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(recall, p50 ms) of plain HNSW32 efSearch 256 with a bitmap selector over the allowed rows."""
    import faiss

    rows = (allowed - 1) // 3
    flags = np.zeros(((b.n + 7) // 8) * 8, dtype=bool)
    flags[rows] = True
    bitmap = np.packbits(flags, bitorder="little")
    sel = faiss.IDSelectorBitmap(bitmap.size, faiss.swig_ptr(bitmap))
    params = faiss.SearchParametersHNSW(efSearch=256, sel=sel)
    with faiss_threads(1):
        p50, _ = latency_ms(lambda i: index.search(b.xq[i : i + 1], K, params=params), min(b.nq, 100))
        found = index.search(b.xq, K, params=params)[1]
    found = np.where(found >= 0, found * 3 + 1, -1)
    return ann.recall_at_k(found, truth, K), p50


def filtered(b: Bench, index: ann.AnnIndex, hnsw: object | None) -> list[list[object]]:
    """Recall and latency under filters: the policy, each path forced, and plain HNSW32."""
    rng = np.random.default_rng(b.seed + 1)
    rows = []
    cases = [
        (f"random {s:.1%}", np.sort(rng.choice(b.ids, size=max(K, int(b.n * s)), replace=False))) for s in SELECTIVITIES
    ]
    anchor = np.asarray(b.xb[int(rng.integers(b.n))], dtype=np.float32)
    closeness = np.concatenate(
        [np.asarray(b.xb[s : s + 65_536], dtype=np.float32) @ anchor for s in range(0, b.n, 65_536)]
    )
    region = b.ids[closeness >= np.quantile(closeness, 0.9)]
    cases.append(("region 10%, far queries", region))
    far = np.argsort(b.xq @ anchor)[: max(20, b.nq // 3)]  # the third of the queries least like the region
    nq = min(b.nq, 100)
    for label, allowed in cases:
        queries = b.xq[far] if label.startswith("region") else b.xq
        truth = ann.exact_search(b.xb, b.ids, queries, K, allowed_ids=allowed)[1]
        row: list[object] = [label, f"{allowed.size:,}"]
        variants = ["policy", "selector"] + (["exact subset"] if allowed.size <= 100_000 else [])
        results = {}
        for name in variants:
            with _forced_path(name), faiss_threads(1):
                p50, _ = latency_ms(
                    lambda i, queries=queries, allowed=allowed: index.search(
                        queries[i % len(queries) : i % len(queries) + 1],
                        K,
                        allowed_ids=allowed,
                        vector_lookup=b.lookup,
                    ),
                    nq,
                )
                found = index.search(queries, K, allowed_ids=allowed, vector_lookup=b.lookup)[1]
            assert np.isin(found[found >= 0], allowed).all(), "a filtered search returned an id outside the filter"
            results[name] = (ann.recall_at_k(found, truth, K), p50)
        for name in ("policy", "selector", "exact subset"):
            row += list(results.get(name, ("-", "-")))
        if hnsw is not None:
            sub = b
            if label.startswith("region"):
                sub = _SubQueries(b, far)
            row += list(hnsw_filtered(sub, hnsw, allowed, truth))
        rows.append(row)
    return rows


class _SubQueries:
    """A view of the bench with a subset of the queries (for the region filter)."""

    def __init__(self, b: Bench, which: np.ndarray):
        self.n, self.d, self.xq, self.nq = b.n, b.d, b.xq[which], len(which)


@contextlib.contextmanager
def _forced_path(path: str) -> Iterator[None]:
    """Force the filtered-search policy down one path: "policy" (leave it alone), "selector" or
    "exact subset"."""
    names = ("FILTER_EXACT_MAX_FLOATS", "HNSW_FILTER_EXACT_MAX_FLOATS", "POSTFILTER_MIN_SELECTIVITY")
    before = {name: getattr(ann_search, name) for name in names}
    if path != "policy":
        cap = 0 if path == "selector" else math.inf
        ann_search.FILTER_EXACT_MAX_FLOATS = ann_search.HNSW_FILTER_EXACT_MAX_FLOATS = cap
        ann_search.POSTFILTER_MIN_SELECTIVITY = 2.0  # never
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(ann_search, name, value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="200K vectors, for a fast check")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-hnsw", action="store_true", help="skip the HNSW32 reference (its build is the slowest part)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the temporary files go (default: the system temp dir)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    n = 200_000 if args.quick else args.n
    t_start = time.perf_counter()
    print(f"bench/search.py: n={n:,} d={args.d} queries={args.queries} seed={args.seed}")
    print(f"machine: {machine()}")
    workdir = Path(tempfile.mkdtemp(prefix="bench-search-", dir=args.workdir))
    try:
        run(Bench(n, args.d, args.queries, args.seed, workdir), skip_hnsw=args.skip_hnsw)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


def run(b: Bench, *, skip_hnsw: bool) -> None:
    main_rows = []

    # 1. exact search (the baseline and the fallback)
    flat, secs, _ = b.build("Flat")
    exact = b.measure("exact (Flat)", flat, secs, flat.info.memory_bytes / 2**20, nq=50)
    exact["ram_how"] = "estimate"
    main_rows.append(exact)
    del flat
    gc.collect()

    # 2. the automatically chosen index, in RAM and memory-mapped
    index, secs, _ = b.build()
    path = b.workdir / "auto.faiss"
    index.save(path)
    auto = b.measure("auto", index, secs, index_ram_mib(path)["after_search_mib"])
    auto["ram_how"] = "fresh process"
    main_rows.append(auto)
    mapped = ann.AnnIndex.load(path, mmap=True)
    auto_mmap = b.measure("auto, memory-mapped", mapped, secs, index_ram_mib(path, mmap=True)["after_search_mib"])
    auto_mmap["ram_how"] = "fresh process, anonymous only"
    main_rows.append(auto_mmap)
    del mapped
    print(f"auto index: {index!r}; tuning: {index.info.tuning}")

    # 3. plain HNSW32 reference
    hnsw = None
    if not skip_hnsw:
        hnsw_row, hnsw = hnsw_reference(b)
        hnsw_row["ram_how"] = "RSS growth while building"
        main_rows.append(hnsw_row)

    print_table(
        f"single queries, k={K}, 1 FAISS thread ({b.n:,} x {b.d})",
        [
            "index",
            "factory",
            "params",
            "build s",
            "bytes/vec",
            "RAM MiB",
            "RAM measured as",
            "p50 ms",
            "p99 ms",
            "recall@10",
            "tuned recall",
        ],
        [
            [
                r["name"],
                r["factory"],
                r["params"],
                r["build_s"],
                r["bytes_per_vector"],
                r["ram_mib"],
                r["ram_how"],
                r["p50"],
                r["p99"],
                r["recall"],
                r["tuned_recall"] if r["tuned_recall"] is not None else "-",
            ]
            for r in main_rows
        ],
    )
    ratios = [_ratios("auto vs exact", auto, exact)]
    if hnsw is not None:
        ratios.append(_ratios("auto vs HNSW32 ef256", auto, main_rows[-1]))
    print_table(
        "ratios (> 1: auto is faster / smaller)",
        ["", "speed-up p50", "speed-up p99", "recall diff", "build time ratio", "bytes/vec ratio"],
        ratios,
    )
    ok = auto["p50"] <= 5 and auto["recall"] >= 0.95
    print(
        f"target p50 <= 5 ms at recall@10 >= 0.95: {'met' if ok else 'MISSED'} (p50 {auto['p50']:.2f} ms, recall {auto['recall']:.3f})"
    )

    # 4. filtered search
    rows = filtered(b, index, hnsw)
    header = [
        "filter",
        "allowed",
        "policy recall",
        "policy p50 ms",
        "selector recall",
        "selector p50 ms",
        "exact-subset recall",
        "exact-subset p50 ms",
    ]
    if hnsw is not None:
        header += ["HNSW32 recall", "HNSW32 p50 ms"]
    print_table(
        f"filtered search on the auto index ({auto['factory']}), vs exact filtered search, 1 FAISS thread", header, rows
    )
    del index, hnsw
    gc.collect()

    # 5. a compressed configuration within 600 MiB per million vectors
    budget = int(COMPRESSED_BUDGET * b.n / 1_000_000)
    comp, secs, _ = b.build(memory_budget=budget)
    path = b.workdir / "compressed.faiss"
    comp.save(path)
    row = b.measure("compressed", comp, secs, 0.0)
    del comp
    gc.collect()
    ram = index_ram_mib(path)
    ram_mmap = index_ram_mib(path, mmap=True)
    print_table(
        f"compressed configuration for a {budget / 2**20:.0f} MiB budget (RAM: a fresh process loading the index file)",
        [
            "factory",
            "params",
            "build s",
            "bytes/vec",
            "file MiB",
            "RAM loaded MiB",
            "RAM after queries MiB",
            "RAM mmap MiB",
            "p50 ms",
            "recall@10",
            "needs vector_lookup",
        ],
        [
            [
                row["factory"],
                row["params"],
                row["build_s"],
                row["bytes_per_vector"],
                file_mib(path),
                ram["load_mib"],
                ram["after_search_mib"],
                ram_mmap["after_search_mib"],
                row["p50"],
                row["recall"],
                row["needs_lookup"],
            ]
        ],
    )
    ok = max(ram["load_mib"], ram["after_search_mib"]) * 2**20 <= 600e6 * b.n / 1_000_000 and row["recall"] >= 0.9
    print(f"target <= 600 MB RAM per 1M vectors at recall@10 >= 0.9: {'met' if ok else 'MISSED'}")

    # 6. growth
    growth = []
    for m in sorted({max(10_000, b.n // 10), max(10_000, b.n * 3 // 10)} - {b.n}):
        idx, secs, _ = b.build(n=m)
        idx.save(b.workdir / "growth.faiss")
        growth.append(
            [
                f"{m:,}",
                idx.factory,
                idx.info.params,
                secs,
                file_mib(b.workdir / "growth.faiss"),
                idx.info.measured_recall,
            ]
        )
        del idx
        gc.collect()
    growth.append(
        [
            f"{b.n:,}",
            auto["factory"],
            auto["params"],
            auto["build_s"],
            file_mib(b.workdir / "auto.faiss"),
            auto["tuned_recall"],
        ]
    )
    first_s, first_mib = growth[0][3], growth[0][4]
    for row in growth:
        row += [row[3] / first_s, row[4] / first_mib]
    print_table(
        "growth of the automatically chosen index",
        ["n", "factory", "params", "build s", "index file MiB", "tuned recall", "build time x", "size x"],
        growth,
    )


def _ratios(label: str, a: dict, ref: dict) -> list[object]:
    return [
        label,
        ref["p50"] / a["p50"],
        ref["p99"] / a["p99"],
        a["recall"] - ref["recall"],
        a["build_s"] / max(ref["build_s"], 1e-9),
        a["bytes_per_vector"] / ref["bytes_per_vector"],
    ]


if __name__ == "__main__":
    main()
