"""Filtered search through the engine is correct: recall@10 against exact filtered search >= 0.95
at selectivities of 0.1%, 1%, 10% and 50%, with forced IVF and HNSW indexes.

A synthetic collection of 20,000 clustered 64-d vectors with metadata: the taxon of each image
follows its cluster (a taxon filter is concentrated in one region of the space, as real ones are),
the year does not (a year range is spread uniformly). The ANN module's thresholds are scaled down
to this size, as fractions of the collection, to what they are at 1M x 512 (exact search over an
allowed set of up to 0.8% of an IVF index, 3.3% of an HNSW one; post-filtering from 25%), so each
selectivity takes the path it takes at 1M. Ground truth: brute force over the stored vectors, with
the allowed set computed in numpy from the same metadata (independently of the engine's SQL).

The indexes are tuned to recall@10 0.97 rather than the default 0.95: tuning measures recall on
stored vectors, and fresh queries from the same clusters come out ~0.01-0.02 lower unfiltered
(measured here at the default: IVF 0.955, HNSW 0.935), so a default-tuned index sits right at 0.95
before any filter. With 0.97, a result below 0.95 is what filtering lost.

Known limitation (ann layer): HNSW's filtered graph search misses filters concentrated in one
region of the space (a taxon) when the query lies elsewhere: recall 0.59 at 10% and 0.63 at 50%.
HNSW is never chosen automatically (see indexer/ann/choice.py); those cases are expected failures here.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from indexer.ann import search as ann_search
from indexer.ann import update_index
from indexer.search.engine import SearchEngine
from indexer.search.filters import Filter
from indexer.store import Collection

N, D, SPECIES, QUERIES = 20_000, 64, 200, 40
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)


def clustered(
    rng: np.random.Generator, n: int, centres: np.ndarray, probs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.choice(len(centres), size=n, p=probs)
    x = centres[labels] + 0.45 * rng.standard_normal((n, centres.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(7)
    genera = rng.standard_normal((SPECIES // 5, D)).astype(np.float32)
    centres = genera[np.arange(SPECIES) // 5] + 0.7 * rng.standard_normal((SPECIES, D)).astype(np.float32)
    sizes = rng.pareto(1.5, SPECIES) + 1.0
    probs = sizes / sizes.sum()
    vecs, labels = clustered(rng, N, centres, probs)
    queries, _ = clustered(rng, QUERIES, centres, probs)
    years = 1000 + rng.permutation(N) % 1000  # every year 1000..1999 twenty times
    rows = pa.table(
        {
            "key": [f"k{i}" for i in range(N)],
            "location": [f"/x/{i}.jpg" for i in range(N)],
            "kingdom": ["Animalia"] * N,
            "family": [f"Family{s // 5}" for s in labels],
            "genus": [f"Genus{s // 5}" for s in labels],
            "specificEpithet": [f"sp{s}" for s in labels],
            "year": years.astype(str).tolist(),
        }
    )
    return vecs, labels, years, queries, probs, rows


def build(tmp_path, data, factory, recall_target=0.97):
    vecs, _, _, _, _, rows = data
    model = {"name": "synthetic", "source": "synthetic", "dimension": D}
    c = Collection.create(tmp_path / factory.replace(",", "_"), model, dimension=D)
    with c.writer() as w:
        for start in range(0, N, 5000):
            w.add(rows.slice(start, 5000), vecs[start : start + 5000])
            w.commit()
        entry = update_index(w, factory=factory, recall_target=recall_target)
    assert entry["factory"] == factory
    return c.path


def filters_for(data) -> list[tuple[str, float, Filter, np.ndarray]]:
    """(name, selectivity, filter, allowed mask) per selectivity, concentrated (taxa) and uniform (years)."""
    _, labels, years, _, _, _ = data
    rng = np.random.default_rng(3)
    out = []
    counts = np.bincount(labels, minlength=SPECIES)
    for p in SELECTIVITIES:
        want = p * N
        # whole species, drawn in a random order, until they hold about p of the images
        chosen, total = [], 0
        for s in rng.permutation(SPECIES):
            if counts[s] == 0 or total + counts[s] > 1.6 * want:
                continue
            chosen.append(int(s))
            total += counts[s]
            if total >= 0.7 * want:
                break
        flt = Filter.taxon(*[f"Genus{s // 5} sp{s}" for s in chosen])
        out.append((f"taxon {p:.1%}", p, flt, np.isin(labels, chosen)))
        hi = 1000 + round(p * 1000) - 1
        out.append((f"year {p:.1%}", p, Filter.range("year", 1000, hi), (years >= 1000) & (years <= hi)))
    return out


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, data):
    return {f: build(tmp_path_factory.mktemp("filtered"), data, f) for f in ("IVF128,Flat", "HNSW32")}


HNSW_CONCENTRATED = pytest.mark.xfail(
    reason="ann: HNSW's filtered graph search misses region-concentrated filters (0.59 at 10%, 0.63 at 50%)",
    strict=False,
)


@pytest.mark.parametrize(
    "factory, kind",
    [
        ("IVF128,Flat", "taxon"),
        ("IVF128,Flat", "year"),
        ("HNSW32", "year"),
        pytest.param("HNSW32", "taxon", marks=HNSW_CONCENTRATED),
    ],
)
def test_filtered_recall_through_the_engine(indexed, data, factory, kind, monkeypatch):
    monkeypatch.setattr(ann_search, "FILTER_EXACT_MAX_FLOATS", int(0.008 * N * D))
    monkeypatch.setattr(ann_search, "HNSW_FILTER_EXACT_MAX_FLOATS", int(0.033 * N * D))
    path = indexed[factory]
    engine = SearchEngine.open(path, refresh_interval=None)
    stored_ids, stored = Collection.open(path).snapshot().load_vectors()
    assert np.array_equal(stored_ids, np.arange(N))
    queries = data[3]
    report = []
    for name, p, flt, mask in filters_for(data):
        if not name.startswith(kind):
            continue
        allowed = np.flatnonzero(mask)
        assert 0.5 * p * N <= allowed.size <= 1.6 * p * N, (name, allowed.size)
        sims = queries @ stored[allowed].T
        truth = allowed[np.argsort(-sims, axis=1, kind="stable")[:, :10]]
        recalls = []
        for qi, q in enumerate(queries):
            r = engine.search(vector=q, k=10, filters=flt)
            assert r.candidates == allowed.size
            got = [h.id for h in r.hits]
            assert set(got) <= set(allowed.tolist())
            assert all(a.score >= b.score for a, b in zip(r.hits, r.hits[1:]))
            recalls.append(len(set(got) & set(truth[qi].tolist())) / min(10, allowed.size))
        report.append((name, allowed.size, float(np.mean(recalls))))
    print(factory, report)
    bad = [(name, size, round(rec, 3)) for name, size, rec in report if rec < 0.95]
    assert not bad, f"{factory}: recall@10 below 0.95 for {bad}"
