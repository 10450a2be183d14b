"""Recall per query kind: image, text and mixed queries on every index type the automatic choice can pick.

    python bench/query_kinds.py [--n 1000000] [--d 512] [--quick] [--queries 300] [--hnsw]

Data: the modality-gap testbed (:mod:`indexer.ann.testbed`): ``--n`` image vectors in species-like
clusters (families > genera > species, Pareto-skewed sizes, a shared cone, semantic noise on a
decaying spectrum, and "style" directions no text describes), stored as float16 in a memory-mapped
file like a collection's segments, with stable non-contiguous ids (3 * row + 1). Text vectors for a
taxon are a shared modality-offset direction + phrasing noise + the taxon's direction, so a text
sits at cosine ~0.2-0.35 from its best images while image neighbours sit at ~0.8, as in real CLIP
models. The run prints the testbed's statistics.

Queries, all held out from what the index was tuned on:

* image: ``--queries`` new images of the same distribution (stream 1);
* text: ``--queries`` texts naming species, genera and families as users do (stream 1; the index is
  tuned on 500 other texts, stream 0, standing in for a collection's own taxa and phrases);
* mixed: ``w * text + image``, normalised, w cycling over 1, 2, 3 (other texts and images, stream 2).

For every index type the automatic choice (``indexer.ann.choice.candidates``, default memory budget)
can pick, Flat, IVF with fast-scan PQ (4-bit residual codes, its first choice), IVF-Flat, IVF-SQ8 and
IVF-PQ (the compressed ones with exact re-ranking from the stored vectors, as the search engine runs
it; ``--type`` to build only some besides the automatic one and exact search): the parameters tuned
per kind, the recall@10 per kind at those parameters against exact search, unfiltered and filtered (0.1%, 1%, 10% of the ids, uniform and concentrated in
one family), and the single-query p50 per kind. ``--hnsw`` adds a forced HNSW32 (never chosen).

Ratios, all measured in this one run (the machine may be shared; absolute times are noisy):
text p50 / image p50 on the automatic index (goal <= 2), exact p50 / text p50 on the automatic index
(goal >= 40 at 1M), and the text recall at the image-tuned parameters (what the index gave before
query kinds). Latency is one query at a time on one FAISS thread; builds use every core.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
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

from _common import Timer, machine, print_table  # noqa: E402

from indexer import ann  # noqa: E402
from indexer.ann.choice import candidates, is_fast_scan  # noqa: E402
from indexer.ann.testbed import ModalityGapTestbed  # noqa: E402
from indexer.ann.tuning_set import MIXED_TEXT_WEIGHTS  # noqa: E402
from indexer.store.vectors import ArrayVectors  # noqa: E402

K = 10
SELECTIVITIES = (0.001, 0.01, 0.1)
KINDS = ann.QUERY_KINDS
TUNING_TEXTS = 500


@contextlib.contextmanager
def faiss_threads(n: int) -> Iterator[None]:
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class Data:
    """The testbed's collection (a float16 memmap), its held-out queries per kind and exact truth."""

    def __init__(self, n: int, d: int, nq: int, seed: int, workdir: Path):
        self.n, self.d = n, d
        self.tb = ModalityGapTestbed(d=d, n_species=max(100, n // 200), seed=seed)
        with Timer() as t:
            store = np.memmap(workdir / "vectors.f16", dtype=np.float16, mode="w+", shape=(n, d))
            _, self.species = self.tb.images(n, out=store)
            store.flush()
            del store
        self.xb = np.memmap(workdir / "vectors.f16", dtype=np.float16, mode="r", shape=(n, d))
        self.ids = np.arange(n, dtype=np.int64) * 3 + 1
        self.lookup = ArrayVectors(self.xb, self.ids)
        self.tuning_text = self.tb.text_queries(TUNING_TEXTS, stream=0)
        images, _ = self.tb.images(2 * nq, stream=1)
        weights = np.resize(np.asarray(MIXED_TEXT_WEIGHTS, dtype=np.float32), nq)
        self.queries = {
            "image": images[:nq],
            "text": self.tb.text_queries(nq, stream=1),
            "mixed": self.tb.mixed(self.tb.text_queries(nq, stream=2), images[nq:], weights),
        }
        print(
            f"data: {n:,} x {d} float16 testbed, {self.tb.n_species:,} species, {len(self.tb.taxa('genus')):,} "
            f"genera, {len(self.tb.taxa('family')):,} families, generated in {t.seconds:.1f} s; "
            f"{nq} held-out queries per kind; {TUNING_TEXTS} other texts to tune on"
        )
        stats = self.tb.statistics(self.xb, self.queries["text"])
        print_table(
            "testbed statistics (medians of cosine similarity)",
            ["text -> best image", "image -> nearest other image", "image -> random image", "text <-> text"],
            [
                [
                    stats[k]
                    for k in ("text_to_best_image", "image_to_nearest_image", "image_to_random_image", "text_to_text")
                ]
            ],
        )
        self.filters = self._filters(np.random.default_rng(seed))
        with Timer() as t:
            allq = np.concatenate([self.queries[k] for k in KINDS])
            self.truth = self._split(ann.exact_search(self.xb, self.ids, allq, K)[1])
            self.filtered_truth = {
                name: self._split(ann.exact_search(self.xb[np.sort(rows)], self.ids[np.sort(rows)], allq, K)[1])
                for name, rows in self.filters.items()
            }
        print(f"exact ground truth, unfiltered and under {len(self.filters)} filters: {t.seconds:.1f} s")

    def _split(self, found: np.ndarray) -> dict[str, np.ndarray]:
        nq = self.queries["image"].shape[0]
        return {k: found[i * nq : (i + 1) * nq] for i, k in enumerate(KINDS)}

    def _filters(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Row sets: uniform (random rows) and concentrated in one family (random rows of the family
        whose size is nearest above the wanted count; the largest family's when none is that big)."""
        out = {}
        family = self.tb.taxon_of(self.species, "family")
        counts = np.bincount(family)
        for sel in SELECTIVITIES:
            want = max(K, int(round(sel * self.n)))
            out[f"uniform {sel:.1%}"] = rng.choice(self.n, size=want, replace=False)
            big = np.flatnonzero(counts >= want)
            fam = int(big[np.argmin(counts[big])]) if big.size else int(np.argmax(counts))
            rows = np.flatnonzero(family == fam)
            out[f"one family {sel:.1%}"] = rng.choice(rows, size=min(want, rows.size), replace=False)
        return out


def measure(data: Data, index: ann.AnnIndex, name: str, nq_latency: int) -> dict:
    """Per kind: held-out recall at the kind's own and at the image parameters, filtered recall, p50."""
    out: dict = {"name": name, "factory": index.factory, "kinds": {}}
    lookup = data.lookup
    with faiss_threads(1):
        p50s = interleaved_p50(index, data, nq_latency)
    for kind in KINDS:
        q = data.queries[kind]
        with faiss_threads(1):
            found = index.search(q, K, kind=kind, vector_lookup=lookup)[1]
            as_image = index.search(q, K, kind="image", vector_lookup=lookup)[1]
            p50 = p50s[kind]
            filtered = {}
            for fname, rows in data.filters.items():
                got = index.search(q, K, kind=kind, allowed_ids=data.ids[rows], vector_lookup=lookup)[1]
                filtered[fname] = ann.recall_at_k(got, data.filtered_truth[fname][kind], K)
        tuned = index.info.kinds.get(kind) or {}
        out["kinds"][kind] = {
            "params": index.info.params_for(kind),
            "tuned_recall": tuned.get("recall"),
            "met": tuned.get("met"),
            "note": tuned.get("note", ""),
            "recall": ann.recall_at_k(found, data.truth[kind], K),
            "recall_image_params": ann.recall_at_k(as_image, data.truth[kind], K),
            "p50": p50,
            "filtered": filtered,
        }
    return out


def interleaved_p50(index: ann.AnnIndex, data: Data, nq: int) -> dict[str, float]:
    """Single-query p50 (ms) per kind, the kinds taken in turn query by query, so that load from
    other processes falls on every kind alike."""
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for i in range(-3, nq):  # three warm-up rounds
        for kind in KINDS:
            q = data.queries[kind][max(i, 0) : max(i, 0) + 1]
            t0 = time.perf_counter()
            index.search(q, K, kind=kind, vector_lookup=data.lookup)
            if i >= 0:
                times[kind].append((time.perf_counter() - t0) * 1000)
    return {kind: float(np.percentile(t, 50)) for kind, t in times.items()}


def build(data: Data, factory: str | None, seed: int) -> tuple[ann.AnnIndex, float]:
    with Timer() as t:
        index = ann.build_index(
            data.xb, data.ids, factory=factory, seed=seed, tuning_queries={"text": data.tuning_text}
        )
    return index, t.seconds


def run(args: argparse.Namespace, workdir: Path) -> None:
    print(f"machine: {machine()} (compare ratios, not times)")
    data = Data(args.n, args.d, args.queries, args.seed, workdir)
    types = candidates(args.n, args.d)
    print(f"the automatic choice's candidates at {args.n:,} x {args.d}: {', '.join(types)}")
    results = []
    auto, secs = build(data, None, args.seed)
    instead = auto.info.tuning.get("instead_of")
    print(
        f"automatic: {auto.factory} ({secs:.0f} s)"
        + (f", instead of {instead['factory']}, which missed: {instead['missed']}" if instead else "")
    )
    results.append(measure(data, auto, f"automatic ({auto.factory})", args.queries))
    report(results[-1:], data, final=False)
    wanted = [
        f for f in types if f != auto.factory and (f == "Flat" or "PQ" not in f or f == _pq(types) or is_fast_scan(f))
    ]
    if args.type:
        wanted = [f for f in args.type if f != auto.factory]
    if "Flat" not in wanted and auto.factory != "Flat":
        wanted.append("Flat")  # exact search: the baseline of every ratio
    if args.hnsw:
        wanted.append("HNSW32")
    for factory in wanted:
        index, secs = build(data, factory, args.seed)
        print(f"built {factory} in {secs:.0f} s")
        results.append(measure(data, index, factory, args.queries))
        report(results[-1:], data, final=False)
        del index
    report(results, data)


def _pq(types: list[str]) -> str | None:
    """The 8-bit PQ the bench covers: the largest code (the first PQ candidate that is not fast-scan)."""
    return next((f for f in types if "PQ" in f and not is_fast_scan(f)), None)


def report(results: list[dict], data: Data, *, final: bool = True) -> None:
    """The tables of ``results``; ``final``: all of them, with the cell count and the ratios
    (each index's tables are also printed as soon as it is measured, so a run cut short still
    shows what it measured)."""
    rows = []
    for r in results:
        for kind, m in r["kinds"].items():
            rows.append(
                [
                    r["name"],
                    kind,
                    ", ".join(f"{k} {v}" for k, v in m["params"].items()) or "-",
                    m["tuned_recall"] if m["tuned_recall"] is not None else "-",
                    "yes" if m["met"] else ("no: " + m["note"] if m["note"] else "no"),
                    m["recall"],
                    m["recall_image_params"],
                    m["p50"],
                ]
            )
    print_table(
        f"recall@{K} per query kind, held-out queries, {data.n:,} x {data.d} (tuned: on the tuning queries)",
        ["index", "kind", "tuned parameters", "tuned recall", "target met", "recall", "at image params", "p50 ms"],
        rows,
    )
    names = list(data.filters)
    rows = [[r["name"], kind, *(m["filtered"][f] for f in names)] for r in results for kind, m in r["kinds"].items()]
    print_table(f"filtered recall@{K} per query kind (held-out queries)", ["index", "kind", *names], rows)
    sys.stdout.flush()
    if not final:
        return
    cells = [
        (r["name"], kind, v)
        for r in results
        if r["factory"] != "HNSW32"
        for kind, m in r["kinds"].items()
        for v in [m["recall"], *m["filtered"].values()]
    ]
    low = [c for c in cells if c[2] < 0.95]
    print(
        f"\ncells (automatic-choice types, every kind, unfiltered and filtered) >= 0.95: "
        f"{len(cells) - len(low)} of {len(cells)}"
        + ("" if not low else "; below: " + "; ".join(f"{n} {k} {v:.3f}" for n, k, v in low[:12]))
    )
    auto = results[0]["kinds"]
    exact = next(r for r in results if r["factory"] == "Flat")["kinds"]
    print_table(
        f"ratios on the automatic index ({results[0]['factory']}), single queries, one thread",
        ["measure", "value", "goal"],
        [
            ["text p50 / image p50", auto["text"]["p50"] / auto["image"]["p50"], "<= 2"],
            ["exact p50 (text) / text p50", exact["text"]["p50"] / auto["text"]["p50"], ">= 40 at 1M"],
            [
                "text recall, own / image parameters",
                auto["text"]["recall"] / max(1e-9, auto["text"]["recall_image_params"]),
                "-",
            ],
        ],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="80K x 512, 100 queries: a fast check")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hnsw", action="store_true", help="also a forced HNSW32 (slow to build)")
    parser.add_argument(
        "--type", action="append", help="index types to build besides the automatic one (default: every candidate)"
    )
    parser.add_argument("--workdir", default=None, help="folder for the vectors (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.d, args.queries = 80_000, 512, 100
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-query-kinds-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(args, workdir)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
