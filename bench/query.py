"""Query benchmark: whole text queries and filtered queries through the search engine.

    python bench/query.py                      # 1,000,000 images (collection creation takes minutes)
    python bench/query.py --n 100000           # a quick run
    python bench/query.py --keep /tmp/q1m      # keep (and on later runs reuse) the collection there

The collection is synthetic and written directly through the collection Writer (nothing is encoded):
``--n`` clustered, L2-normalised 512-d vectors (a shared cone, genera, species within genera with
Pareto-skewed sizes, per-image noise on a decaying spectrum, as bench/_common.py describes) and
realistic metadata that follows them: a seven-rank lineage per species with Latin-looking names and
vernacular names for a third of the species, a home country per species (70% of its images),
years skewed towards recent decades, ten institutions, basis of record, type status, licences,
coordinates for 60%, and pairs of images sharing a record. The ANN index is built by
``indexer.ann.update_index`` (the automatic choice: IVF4096,PQ256x4fsr at 1M, re-ranked exactly).

Reported, all measured in this one run (the machine may be shared: compare ratios):

  (a) the whole text query, ``SearchEngine.search(text, k=10)`` with a fresh text every time (no
      text-cache hit): text encoding with a ViT-B-16 text tower (``random:ViT-B-16``, the
      architecture of BioCLIP's text tower), search, metadata join. p50/p99, the engine's own
      breakdown, and the baseline of encoding alone (``model.encode_texts``); with 1 torch thread
      (what a server answering concurrent users runs) and with torch's default threads. The text
      results are judged too: recall@10 against exact search with the vector the engine searched,
      at the text parameters (the index is tuned on the collection's phrases embedded with the same
      tower) and at the image ones. The random tower's vectors carry no meaning but sit far from
      every image, as text queries do; bench/query_kinds.py measures the kinds on a testbed with
      CLIP's distances.
  (b) filtered queries at selectivities 0.1%, 1%, 10%, 50% through the engine (vector queries:
      held-out vectors from the same distribution, so that recall is meaningful): a filter
      concentrated in one region of the space (taxa: everything below a family/genus, chosen for
      the selectivity) and one spread over it (a year range). Recall@10 against exact filtered
      search (brute force over the stored vectors, allowed ids from SQL written here), latency p50
      with the filter's ids cached (the engine caches them per generation: paging, facet counts,
      further queries), the first query with a new filter (SQL included), and ratios to the
      unfiltered vector query measured in the same run.

Targets on this 2-core machine at 1M: whole text query p50 <= 150 ms; filtered recall@10 >= 0.95 at
every selectivity; filtering not orders of magnitude slower than the unfiltered query.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine, print_table  # noqa: E402
from _query_recall import stored_vectors, text_recall  # noqa: E402

K = 10
D = 512
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
MODEL = "random:ViT-B-16"
CHUNK = 50_000

_SYL = [
    "ca",
    "lo",
    "mi",
    "ra",
    "te",
    "xu",
    "ph",
    "dr",
    "li",
    "se",
    "bu",
    "ne",
    "go",
    "ty",
    "ve",
    "mo",
]  # fixed width: unique names
_ADJ = [
    "common",
    "lesser",
    "greater",
    "spotted",
    "red",
    "black",
    "mountain",
    "river",
    "desert",
    "striped",
    "pale",
    "giant",
]
_NOUN = ["crow", "warbler", "beetle", "moth", "orchid", "frog", "shrew", "fern", "lizard", "finch", "sedge", "snail"]
COUNTRIES = [
    "Kenya",
    "Tanzania",
    "Brazil",
    "Peru",
    "Indonesia",
    "India",
    "Australia",
    "Canada",
    "Norway",
    "Sweden",
    "United Kingdom",
    "France",
    "Madagascar",
    "Mexico",
    "Colombia",
    "South Africa",
    "China",
    "Japan",
    "Chile",
    "Spain",
]
INSTITUTIONS = ["NHM", "MNHN", "AMNH", "NRM", "MZB", "USNM", "RBGK", "MCZ", "ZSM", "BMNH"]


def latin(i: int, suffix: str) -> np.ndarray:
    """Deterministic Latin-looking names: Caloraidae, Mixuformes ..."""
    i = np.asarray(i)
    base = np.char.add(
        np.char.add(np.take(_SYL, i % 16), np.take(_SYL, (i // 16) % 16)), np.take(_SYL, (i // 256) % 16)
    )
    base = np.char.add(base, np.where(i >= 4096, (i // 4096).astype(str), ""))
    return np.char.add(np.char.capitalize(base), suffix)


class Synthetic:
    """Vectors with their species, and a lineage per species (all deterministic for a seed)."""

    def __init__(self, n: int, seed: int = 0, per_species: int = 300):
        rng = np.random.default_rng(seed)
        self.n = n
        self.n_species = max(16, n // per_species)
        n_genera = max(4, self.n_species // 6)
        rotation = np.linalg.qr(rng.standard_normal((D, D)))[0]
        spectrum = np.arange(1, D + 1) ** -0.5
        self.basis = ((spectrum / np.linalg.norm(spectrum))[:, None] * rotation.T).astype(np.float32)
        cone = rng.standard_normal(D)
        cone /= np.linalg.norm(cone)
        genera = rng.standard_normal((n_genera, D)) @ self.basis
        self.genus_of = rng.integers(0, n_genera, self.n_species)
        self.centres = (
            0.8 * cone + genera[self.genus_of] + 0.6 * (rng.standard_normal((self.n_species, D)) @ self.basis)
        ).astype(np.float32)
        sizes = rng.pareto(1.2, self.n_species) + 1.0
        self.probs = sizes / sizes.sum()
        # lineage above the genus: family = genus // 6, order = family // 5, class = order // 4 ...
        g = self.genus_of
        self.family_of = g // 6
        self.home = rng.integers(0, len(COUNTRIES), self.n_species)
        self.has_common = rng.random(self.n_species) < 0.35
        self.rng = rng

    def vectors(self, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.choice(self.n_species, size=m, p=self.probs)
        x = self.centres[labels] + 0.6 * (rng.standard_normal((m, D), dtype=np.float32) @ self.basis)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x.astype(np.float32), labels

    def rows(self, start: int, labels: np.ndarray, rng: np.random.Generator):
        import pyarrow as pa

        m = labels.size
        i = np.arange(start, start + m)
        g = self.genus_of[labels]
        fam = self.family_of[labels]
        order, cls = fam // 5, fam // 20
        phylum, kingdom = cls // 3, (cls // 3) % 2
        genus = latin(g + 7, "")
        epithet = np.char.lower(latin(labels * 7 + 3, "a"))
        common = np.where(
            self.has_common[labels],
            np.char.add(np.char.add(np.take(_ADJ, labels % 12), " "), np.take(_NOUN, (labels // 12) % 12)),
            "",
        )
        common = np.char.add(
            common, np.where(self.has_common[labels], np.char.add(" ", (labels // 144).astype(str)), "")
        )
        country = np.where(rng.random(m) < 0.7, self.home[labels], rng.integers(0, len(COUNTRIES), m))
        year = np.clip(2023 - np.floor(rng.exponential(45, m)).astype(int), 1850, 2023)
        inst = np.minimum(rng.zipf(1.6, m) - 1, len(INSTITUTIONS) - 1)
        basis = rng.choice(["PreservedSpecimen", "HumanObservation", "MachineObservation"], m, p=[0.6, 0.3, 0.1])
        type_status = np.where(rng.random(m) < 0.01, rng.choice(["holotype", "paratype", "syntype"], m), None)
        has = rng.random(m) < 0.6
        lat = np.where(has, rng.uniform(-60, 70, m), np.nan)
        lon = np.where(has, rng.uniform(-170, 170, m), np.nan)
        record = np.where(i % 10 < 2, np.char.add("rec-", (i // 2).astype(str)), None)  # 10% in pairs
        return pa.table(
            {
                "key": np.char.add("synthetic/", i.astype(str)).tolist(),
                "source": ["synthetic"] * m,
                "location": np.char.add(np.char.add("/data/images/", i.astype(str)), ".jpg").tolist(),
                "kingdom": np.take(["Animalia", "Plantae"], kingdom).tolist(),
                "phylum": latin(phylum + 11, "phyta").tolist(),
                "class": latin(cls + 13, "ia").tolist(),
                "order": latin(order + 17, "formes").tolist(),
                "family": latin(fam + 19, "idae").tolist(),
                "genus": genus.tolist(),
                "specificEpithet": epithet.tolist(),
                "scientificName": np.char.add(np.char.add(genus, " "), epithet).tolist(),
                "vernacularName": [c or None for c in common.tolist()],
                "catalogNumber": np.char.add("CAT-", i.astype(str)).tolist(),
                "recordID": record.tolist(),
                "institutionCode": np.take(INSTITUTIONS, inst).tolist(),
                "basisOfRecord": basis.tolist(),
                "typeStatus": type_status.tolist(),
                "country": np.take(COUNTRIES, country).tolist(),
                "year": year.astype(str).tolist(),
                "license": rng.choice(["CC0-1.0", "CC-BY-4.0", "CC-BY-NC-4.0"], m).tolist(),
                "decimalLatitude": pa.array(lat, pa.float64(), from_pandas=True),
                "decimalLongitude": pa.array(lon, pa.float64(), from_pandas=True),
            }
        )


def make_collection(path: Path, n: int, model, syn: Synthetic) -> None:
    from indexer.ann import TuningInputs, update_index
    from indexer.store import Collection

    t0 = time.perf_counter()
    coll = Collection.create(path, model.describe(), dimension=D)
    rng = np.random.default_rng(1)
    with coll.writer() as w:
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            vecs, labels = syn.vectors(m, rng)
            w.add(syn.rows(start, labels, rng), vecs)
            w.commit()
            print(f"  wrote {start + m:,} images ({time.perf_counter() - t0:.0f}s)", flush=True)
        t1 = time.perf_counter()
        # text tuned on the collection's own taxa and the vocabulary, embedded with the model the
        # queries are encoded with (as bioclip-index build does)
        entry = update_index(w, tuning=TuningInputs(model=model))
        kinds = entry["info"].get("kinds") or {}
        print(
            f"  index {entry['factory']} built in {time.perf_counter() - t1:.0f}s; tuned recall@10 "
            + "; ".join(f"{k} {v.get('recall')} at {v.get('params')} on {v.get('queries')}" for k, v in kinds.items()),
            flush=True,
        )


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def run(args) -> None:
    import faiss
    import torch

    from bioclip import load_model
    from indexer import ann
    from indexer.search.engine import SearchEngine
    from indexer.search.filters import Filter
    from indexer.store import Collection, is_collection

    print(f"machine: {machine()}, torch {torch.__version__}")
    model = load_model(MODEL, device="cpu")
    syn = Synthetic(args.n)
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-query-"))
    path = workdir / f"synthetic-{args.n}.collection"
    try:
        if is_collection(path) and Collection.open(path).latest_generation().images == args.n:
            print(f"reusing {path}")
        else:
            if path.exists():
                shutil.rmtree(path)
            workdir.mkdir(parents=True, exist_ok=True)
            print(f"creating {args.n:,} images in {path}")
            make_collection(path, args.n, model, syn)
        faiss.omp_set_num_threads(1)  # one query at a time on one thread, as a server answering users
        t0 = time.perf_counter()
        engine = SearchEngine.open(path, model=model, refresh_interval=None)
        open_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        taxonomy = engine.taxonomy
        tax_s = time.perf_counter() - t0
        info = engine.info()
        print(
            f"opened in {open_s:.1f}s; taxonomy of {len(taxonomy):,} taxa built in {tax_s:.1f}s; index {info['index']}, "
            f"recall@10 per kind {info.get('recall')}"
        )
        stored = stored_vectors(path)
        text_part(args, engine, model, taxonomy, stored)
        filter_part(args, engine, syn, path, Filter, ann, stored)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def text_part(args, engine, model, taxonomy, stored) -> None:
    import torch

    taxa = [m for r in ("species", "genus", "family") for m in taxonomy.taxa(r)[: args.queries]]
    vern = [m.common_name for m in taxonomy.taxa("species") if m.common_name][: args.queries]
    texts = []
    for j in range(args.queries * 3):
        kind = j % 3
        if kind == 0 and taxa:
            m = taxa[(j // 3) % len(taxa)]
            texts.append(m.name if j % 2 else m.name.lower())
        elif kind == 1 and vern:
            texts.append(vern[(j // 3) % len(vern)])
        else:
            texts.append(f"a specimen photographed on a white background, number {j}")
    texts = list(dict.fromkeys(texts))
    rows = []
    default_threads = torch.get_num_threads()
    for threads in (1, default_threads) if default_threads != 1 else (1,):
        torch.set_num_threads(threads)
        for t in texts[:3]:
            engine.search(t, k=K)  # warm-up: first allocations, the taxonomy
        engine.clear_caches()  # every query below encodes its text
        whole, enc, cached, parts = [], [], [], {"embed": [], "search": [], "metadata": []}
        # interleaved, so that load from other processes hits all three measurements alike
        for t in texts:
            t0 = time.perf_counter()
            r = engine.search(t, k=K)
            whole.append((time.perf_counter() - t0) * 1000)
            for key in parts:
                parts[key].append(r.timings.get(key, 0.0))
            t0 = time.perf_counter()
            model.encode_texts([r.prompt + " "])  # the same text, a different string: no cache anywhere
            enc.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            engine.search(t, k=K)
            cached.append((time.perf_counter() - t0) * 1000)
        p50 = pct(whole, 50)
        rows.append(
            [
                threads,
                len(texts),
                p50,
                pct(whole, 99),
                pct(parts["embed"], 50),
                pct(parts["search"], 50),
                pct(parts["metadata"], 50),
                pct(enc, 50),
                p50 / pct(enc, 50),
                pct(cached, 50),
                "yes" if p50 <= 150 else "NO",
            ]
        )
    torch.set_num_threads(default_threads)
    judged = text_recall(engine, texts, stored)
    for row in rows:
        row[-1:-1] = judged
    print_table(
        f"(a) whole text query, k={K}: fresh text each time (taxon names, vernacular names, free text); ms",
        [
            "torch threads",
            "queries",
            "p50",
            "p99",
            "embed p50",
            "search p50",
            "metadata p50",
            "encode-only p50",
            "whole/encode",
            "same text again p50",
            "text recall@10",
            "at image params",
            "p50 <= 150",
        ],
        rows,
    )


def filter_part(args, engine, syn: Synthetic, path: Path, Filter, ann, stored) -> None:
    from indexer.store import Collection

    rng = np.random.default_rng(99)
    queries, _ = syn.vectors(args.queries, rng)
    ids, vecs = stored  # float16 (n, d): the stored vectors
    con = Collection.open(path).snapshot().connect(materialize=False)

    unfiltered = []
    for q in queries:
        t0 = time.perf_counter()
        engine.search(vector=q, k=K)
        unfiltered.append((time.perf_counter() - t0) * 1000)
    _, truth_all = ann.exact_search(vecs, ids, queries, K)
    found = np.array([[h.id for h in engine.search(vector=q, k=K).hits] for q in queries])
    base_p50 = pct(unfiltered, 50)
    print(
        f"\nunfiltered vector query through the engine: p50 {base_p50:.2f} ms, p99 {pct(unfiltered, 99):.2f} ms, "
        f"recall@10 {ann.recall_at_k(found, truth_all, K):.3f}"
    )

    years = dict(con.execute("SELECT year, count(*) FROM images GROUP BY 1").fetchall())
    fam = con.execute('SELECT family, genus, "scientificName", count(*) FROM images GROUP BY ALL').fetchall()
    rows = []
    for p in SELECTIVITIES:
        want = p * syn.n
        for kind in ("concentrated", "spread"):
            if kind == "concentrated":
                names, sql, params = concentrated(fam, want, np.random.default_rng(int(p * 1e4)))
                flt = Filter.taxon(*names)
                label = f"taxon in {len(names)} taxa"
            else:
                lo, hi = year_range(years, want)
                flt = Filter.range("year", lo, hi)
                sql, params = "year BETWEEN ? AND ?", [lo, hi]
                label = f"year {lo}..{hi}"
            allowed = np.sort(
                np.asarray(con.execute(f"SELECT id FROM images WHERE {sql}", params).fetchnumpy()["id"], dtype=np.int64)
            )
            _, truth = ann.exact_search(vecs, ids, queries, K, allowed_ids=allowed)
            t0 = time.perf_counter()
            first = engine.search(vector=queries[0], k=K, filters=flt)
            cold = (time.perf_counter() - t0) * 1000
            assert first.candidates == allowed.size, (label, first.candidates, allowed.size)
            lat, got = [], []
            for q in queries:
                t0 = time.perf_counter()
                r = engine.search(vector=q, k=K, filters=flt)
                lat.append((time.perf_counter() - t0) * 1000)
                got.append([h.id for h in r.hits] + [-1] * (K - len(r.hits)))
            recall = ann.recall_at_k(np.array(got), truth, K)
            p50 = pct(lat, 50)
            rows.append(
                [
                    f"{p:.1%}",
                    kind,
                    label,
                    f"{allowed.size / syn.n:.2%}",
                    round(recall, 3),
                    p50,
                    pct(lat, 99),
                    cold,
                    p50 / base_p50,
                    "yes" if recall >= 0.95 else "NO",
                ]
            )
    print_table(
        f"(b) filtered vector queries through the engine, k={K}, {len(queries)} queries each; ms; "
        f"ratio = filtered p50 / unfiltered p50 ({base_p50:.2f} ms)",
        [
            "target",
            "filter",
            "what",
            "selected",
            "recall@10",
            "p50",
            "p99",
            "first query (SQL)",
            "ratio",
            "recall >= 0.95",
        ],
        rows,
    )


def concentrated(fam_rows, want: float, rng) -> tuple[list[str], str, list]:
    """Whole species (small targets), genera or families, in a random order, until about ``want``
    images: a filter concentrated in a few regions of the space, as a taxon filter is."""
    levels = {"scientificName": {}, "genus": {}, "family": {}}
    for family, genus, sci, c in fam_rows:
        for col, name in (("family", family), ("genus", genus), ("scientificName", sci)):
            levels[col][name] = levels[col].get(name, 0) + c
    col = "scientificName" if want < 3000 else "genus" if want < 30000 else "family"
    pool = levels[col]
    names, total = [], 0
    for name in rng.permutation(sorted(pool)):
        c = pool[name]
        if total + c > 1.3 * want:
            continue
        names.append(str(name))
        total += c
        if total >= 0.8 * want:
            break
    if not names:  # every taxon is larger than the target: the smallest one
        names = [min(pool, key=lambda k: (pool[k], k))]
    marks = ", ".join("?" for _ in names)
    return names, f'"{col}" IN ({marks})', names


def year_range(counts: dict, want: float) -> tuple[int, int]:
    """The contiguous range of years whose image count is closest to ``want``."""
    ys = sorted(counts)
    cum = np.concatenate([[0], np.cumsum([counts[y] for y in ys])])
    best = None
    for a in range(len(ys)):
        for b in range(a, len(ys)):
            err = abs(cum[b + 1] - cum[a] - want)
            if best is None or err < best[0]:
                best = (err, ys[a], ys[b])
    return int(best[1]), int(best[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="images in the synthetic collection")
    ap.add_argument("--queries", type=int, default=100, help="queries per measurement")
    ap.add_argument("--keep", default=None, help="folder to keep (and reuse) the collection in")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    run(args)


if __name__ == "__main__":
    main()
