"""The ANN index layer against exact search, on seeded clustered vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer import ann
from indexer.ann import AnnError, AnnIndex, AnnUnsupportedError, IndexInfo
from indexer.ann import choice as ann_choice
from indexer.ann import layout as ann_layout
from indexer.ann import search as ann_search
from indexer.errors import IndexerError

N, D, NQ = 20_000, 64, 300
K = 10
TARGET = 0.95
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)


def clustered_vectors(n: int, d: int, *, n_clusters: int = 20, noise: float = 0.6, seed: int = 0) -> np.ndarray:
    """n L2-normalised float32 vectors in ``n_clusters`` overlapping clusters (skewed sizes).

    Cluster centres and noise share one decaying spectrum (a low intrinsic dimension, like real
    embeddings), so neighbours straddle cluster borders and an ANN index has real work to do.
    """
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((d, d)))[0]
    spectrum = np.arange(1, d + 1) ** -0.5
    basis = (spectrum / np.linalg.norm(spectrum))[:, None] * rotation.T  # z @ basis: total variance 1
    centres = 0.8 * _unit(rng.standard_normal(d)) + 0.6 * rng.standard_normal((n_clusters, d)) @ basis
    sizes = rng.pareto(1.2, n_clusters) + 1
    labels = rng.choice(n_clusters, size=n, p=sizes / sizes.sum())
    x = centres[labels] + noise * rng.standard_normal((n, d)) @ basis
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """One OpenMP thread: on a shared 2-core machine, FAISS's many small parallel regions (PQ
    training) slow down 10x when other processes take the cores; results do not depend on it."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, stable non-contiguous ids in shuffled order, held-out queries)."""
    x = clustered_vectors(N + NQ, D)
    ids = np.random.default_rng(1).permutation(np.arange(N, dtype=np.int64) * 7 + 3)
    return x[:N], ids, x[N:]


@pytest.fixture(scope="module")
def truth(data) -> np.ndarray:
    xb, ids, xq = data
    return ann.exact_search(xb, ids, xq, K)[1]


def lookup_for(xb: np.ndarray, ids: np.ndarray):
    """vector_lookup over the test collection, counting calls."""
    row_of = {int(i): r for r, i in enumerate(ids)}

    def lookup(wanted: np.ndarray) -> np.ndarray:
        lookup.calls += 1
        return xb[[row_of[int(i)] for i in wanted]]

    lookup.calls = 0
    return lookup


_BUILT: dict[str, AnnIndex] = {}


def built(data, factory: str) -> AnnIndex:
    """One shared (never mutated) index per factory."""
    if factory not in _BUILT:
        xb, ids, _ = data
        _BUILT[factory] = ann.build_index(xb, ids, factory=factory, recall_target=TARGET, seed=0)
    return _BUILT[factory]


ANN_FACTORIES = ["HNSW32", "IVF128,Flat", "IVF128,SQ8", "IVF128,PQ32x4fs"]


# ------------------------------------------------------------------------------------------ exact search


def test_exact_search_is_brute_force_with_filters_and_padding(tmp_path):
    x = clustered_vectors(1000, 16, seed=3)
    ids = np.arange(1000, dtype=np.int64) * 2 + 1
    q = x[:5]
    scores = q @ x.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    s, i = ann.exact_search(x, ids, q, 7)
    np.testing.assert_array_equal(i, ids[order])
    np.testing.assert_allclose(s, np.take_along_axis(scores, order, axis=1), rtol=1e-5, atol=1e-6)

    path = tmp_path / "v.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=x.shape)
    mm[:] = x
    allowed = ids[::3]
    s16, i16 = ann.exact_search(mm, ids, q, 7, allowed_ids=allowed, excluded_ids=allowed[:10])
    assert np.isin(i16, allowed[10:]).all()

    s3, i3 = ann.exact_search(x, ids, q, 10, allowed_ids=ids[:4])
    assert (i3[:, 4:] == -1).all() and np.isneginf(s3[:, 4:]).all()
    assert set(i3[0, :4]) == set(ids[:4])


def test_recall_at_k_ignores_padding():
    true = np.array([[1, 2, 3, -1], [5, 6, 7, 8]])
    found = np.array([[3, 1, -1, -1], [5, 9, 9, 9]])
    assert ann.recall_at_k(found, true, 4) == pytest.approx((2 / 3 + 1 / 4) / 2)


# ------------------------------------------------------------------------------------------ index choice


def test_choose_index_by_size_and_budget():
    assert ann.choose_index(N, D) == "Flat"
    assert ann.choose_index(50_000, 512) == "Flat"
    # in memory: fast-scan PQ (4-bit residual codes, two dimensions each) re-ranked exactly
    assert ann.choose_index(1_000_000, 512) == "IVF4096,PQ256x4fsr"
    assert ann.choose_index(1_000_000, 768) == "IVF4096,PQ384x4fsr"
    per, total = ann_choice.estimate("IVF4096,PQ256x4fsr", 1_000_000, 512)
    assert per == 128 + 8 and 136e6 < total < 160e6
    # on disk (no fast-scan lists there): float32 lists while they fit, then SQ8
    assert ann.choose_index(1_000_000, 512, ondisk=True) == "IVF4096,Flat"
    assert ann.choose_index(1_000_000, 512, memory_budget=600 * 2**20, ondisk=True) == "IVF4096,SQ8"
    assert ann.choose_index(1_000_000, 512, memory_budget=100 * 2**20).endswith(",PQ64")
    big = ann.choose_index(100_000_000, 512, memory_budget=8 * 2**30)
    assert big.startswith("IVF32768_HNSW32,PQ"), big
    assert ann_choice.estimate(big, 100_000_000, 512)[1] <= 8 * 2**30
    assert ann.choose_index(100_000_000, 768, memory_budget=16 * 2**30).endswith(",PQ96")
    with pytest.raises(AnnError, match="cannot hold"):
        ann.choose_index(100_000_000, 512, memory_budget=2**20)


def test_fits_incremental(data):
    flat = built(data, "Flat")
    assert ann.fits_incremental(flat, 2 * N)
    assert not ann.fits_incremental(flat, 5_000_000)
    ivf = built(data, "IVF128,Flat")
    assert ann.fits_incremental(ivf, int(N * 1.5))
    assert not ann.fits_incremental(ivf, 100 * N)  # lists would be far too long for nlist=128
    assert not ann.fits_incremental(ivf, int(N * 1.5), memory_budget=1_000_000)  # float32 no longer fits


# ------------------------------------------------------------------------------------------ Flat


def test_flat_is_chosen_and_identical_to_exact_search(data, truth):
    xb, ids, xq = data
    index = ann.build_index(xb, ids)
    assert index.factory == "Flat" and index.info.measured_recall == 1.0
    s, i = index.search(xq, K)
    es, ei = ann.exact_search(xb, ids, xq, K)
    np.testing.assert_array_equal(i, ei)
    np.testing.assert_allclose(s, es, rtol=1e-5, atol=1e-5)
    assert s.dtype == np.float32 and i.dtype == np.int64


# ------------------------------------------------------------------------------------------ ANN types


@pytest.mark.parametrize("factory", ANN_FACTORIES)
def test_tuned_recall_on_held_out_queries(data, truth, factory):
    xb, ids, xq = data
    index = built(data, factory)
    info = index.info
    assert info.factory == factory and info.n == N and info.dimension == D
    assert info.measured_recall >= TARGET and info.params and info.build_seconds > 0
    assert info.bytes_per_vector > 0 and info.memory_bytes > 0
    lookup = lookup_for(xb, ids) if index.needs_vector_lookup else None
    s, i = index.search(xq, K, vector_lookup=lookup)
    assert ann.recall_at_k(i, truth, K) >= TARGET
    assert np.isin(i, ids).all()  # the stable ids passed in, never row numbers
    assert (np.diff(s, axis=1) <= 1e-6).all()


def test_compressed_index_reranks_with_stored_vectors(data, truth):
    xb, ids, xq = data
    index = built(data, "IVF128,PQ32x4fs")
    assert index.needs_vector_lookup and index.info.params["rerank"] > 1
    _, approx = index.search(xq, K)
    lookup = lookup_for(xb, ids)
    s, exact = index.search(xq, K, vector_lookup=lookup)
    assert lookup.calls > 0
    assert ann.recall_at_k(exact, truth, K) > ann.recall_at_k(approx, truth, K)
    np.testing.assert_allclose(s[:, 0], np.einsum("ij,ij->i", xq, lookup(exact[:, 0])), rtol=1e-5)


def test_explicit_params_override_tuned_ones(data, truth):
    xb, ids, xq = data
    index = built(data, "IVF128,Flat")
    _, low = index.search(xq, K, params={"nprobe": 1})
    _, full = index.search(xq, K, params={"nprobe": 128})
    assert ann.recall_at_k(low, truth, K) < ann.recall_at_k(full, truth, K) == 1.0
    with pytest.raises(AnnError, match="unknown search parameter"):
        index.search(xq, K, params={"nprobes": 4})


# ------------------------------------------------------------------------------------------ filters


PATHS = {
    # name: (FILTER_EXACT_MAX_FLOATS and HNSW_FILTER_EXACT_MAX_FLOATS, POSTFILTER_MIN_SELECTIVITY)
    "policy": (None, None),
    "exact-subset": (float("inf"), 2.0),
    "selector": (0, 2.0),
    "postfilter": (0, 0.0),
}


@pytest.mark.parametrize("factory", ["HNSW32", "IVF128,Flat", "IVF128,SQ8", "IVF128,PQ32x4fs"])
@pytest.mark.parametrize("path", list(PATHS))
def test_filtered_search_recall_and_only_allowed_ids(data, factory, path, monkeypatch):
    xb, ids, xq = data
    index = built(data, factory)
    lookup = lookup_for(xb, ids)
    exact_cap, postfilter = PATHS[path]
    postfilter_from = ann_search.POSTFILTER_MIN_SELECTIVITY
    if exact_cap is not None:
        monkeypatch.setattr(ann_search, "FILTER_EXACT_MAX_FLOATS", exact_cap)
        monkeypatch.setattr(ann_search, "HNSW_FILTER_EXACT_MAX_FLOATS", exact_cap)
    if postfilter is not None:
        monkeypatch.setattr(ann_search, "POSTFILTER_MIN_SELECTIVITY", postfilter)
    rng = np.random.default_rng(7)
    for selectivity in SELECTIVITIES:
        if path == "postfilter" and selectivity < postfilter_from:
            continue  # the policy post-filters large sets only; small ones would need huge fetches
        allowed = rng.choice(ids, size=int(N * selectivity), replace=False)
        _, true = ann.exact_search(xb, ids, xq, K, allowed_ids=allowed)
        _, found = index.search(xq, K, allowed_ids=allowed, vector_lookup=lookup)
        assert np.isin(found[found >= 0], allowed).all()
        recall = ann.recall_at_k(found, true, K)
        assert recall >= 0.95, (factory, path, selectivity, recall)


def test_filter_correlated_with_clusters(data):
    """A filter that selects one region (like a taxon), queried from elsewhere, still finds its best."""
    xb, ids, xq = data
    index = built(data, "IVF128,Flat")
    region = xb @ xb[0] > np.quantile(xb @ xb[0], 0.9)
    allowed = ids[region]
    far = xq[np.argsort(xq @ xb[0])[:20]]  # the queries least like the region
    _, true = ann.exact_search(xb, ids, far, K, allowed_ids=allowed)
    _, found = index.search(far, K, allowed_ids=allowed)
    assert np.isin(found, allowed).all()
    assert ann.recall_at_k(found, true, K) >= 0.95


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF128,Flat"])
def test_padding_when_fewer_than_k_allowed(data, factory):
    xb, ids, xq = data
    index = built(data, factory)
    allowed = np.concatenate([ids[:3], [10**9 + 1]])  # three indexed ids and one unknown
    s, i = index.search(xq[:4], K, allowed_ids=allowed)
    assert (np.sort(i[:, :3], axis=1) == np.sort(ids[:3])).all()
    assert (i[:, 3:] == -1).all() and np.isneginf(s[:, 3:]).all()
    s, i = index.search(xq[:2], K, allowed_ids=np.array([], dtype=np.int64))
    assert (i == -1).all()


# ------------------------------------------------------------------------------------------ mutation


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF128,Flat"])
def test_add_then_search_finds_new_vectors(data, factory):
    xb, ids, _ = data
    index = ann.build_index(xb[:5000], ids[:5000], factory=factory)
    new = clustered_vectors(200, D, seed=11)
    new_ids = np.arange(200, dtype=np.int64) + 10**6
    index.add(new, new_ids)
    assert index.ntotal == 5200 and index.info.n == 5200
    _, i = index.search(new, 1)
    assert (i[:, 0] == new_ids).mean() >= 0.95


@pytest.mark.parametrize("factory", ["Flat", "IVF128,Flat", "IVF128,PQ32x4fs"])
def test_remove_never_returns_retired_ids(data, factory):
    xb, ids, xq = data
    index = ann.build_index(xb, ids, factory=factory)
    assert index.supports_remove
    retired = ids[:3000]
    assert index.remove(np.concatenate([retired, [10**9]])) == 3000
    assert index.ntotal == N - 3000
    _, i = index.search(np.concatenate([xq, xb[:50]]), K, vector_lookup=lookup_for(xb, ids))
    assert not np.isin(i, retired).any()


def test_hnsw_cannot_remove_but_excludes(data):
    xb, ids, xq = data
    index = built(data, "HNSW32")
    assert not index.supports_remove
    with pytest.raises(AnnUnsupportedError):
        index.remove(ids[:10])
    retired = ids[:3000]
    queries = np.concatenate([xq, xb[:50]])
    _, i = index.search(queries, K, excluded_ids=retired)
    assert not np.isin(i, retired).any()
    _, true = ann.exact_search(xb, ids, queries, K, excluded_ids=retired)
    assert ann.recall_at_k(i, true, K) >= 0.9
    _, i = index.search(queries, K, excluded_ids=retired, allowed_ids=ids[:4000])
    assert np.isin(i[i >= 0], ids[3000:4000]).all()


# ------------------------------------------------------------------------------------------ persistence


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF128,Flat", "IVF128,PQ32x4fs"])
def test_save_load_round_trip(data, tmp_path, factory):
    xb, ids, xq = data
    index = built(data, factory)
    lookup = lookup_for(xb, ids)
    path = tmp_path / "sub" / "ann.faiss"
    index.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ann.faiss", "ann.faiss.json"]  # no temp files
    sidecar = json.loads((tmp_path / "sub" / "ann.faiss.json").read_text())
    assert sidecar["factory"] == factory and sidecar["params"] == index.info.params
    s0, i0 = index.search(xq, K, vector_lookup=lookup)
    for mmap in (False, True):
        loaded = AnnIndex.load(path, mmap=mmap)
        assert loaded.info == index.info and loaded.ntotal == N
        s1, i1 = loaded.search(xq, K, vector_lookup=lookup)
        np.testing.assert_array_equal(i1, i0)
        np.testing.assert_allclose(s1, s0, rtol=1e-6)
    # a memory-mapped index is read-only, and can be saved again (copied)
    with pytest.raises(AnnUnsupportedError):
        loaded.add(xq[:1], np.array([10**9]))
    with pytest.raises(AnnUnsupportedError):
        loaded.remove(ids[:1])
    loaded.save(tmp_path / "copy.faiss")
    again = AnnIndex.load(tmp_path / "copy.faiss")
    np.testing.assert_array_equal(again.search(xq, K, vector_lookup=lookup)[1], i0)


def test_mmap_ivf_does_not_read_lists_into_memory(data, tmp_path):
    import faiss

    index = built(data, "IVF128,Flat")
    index.save(tmp_path / "ivf.faiss")
    loaded = AnnIndex.load(tmp_path / "ivf.faiss", mmap=True)
    lists = faiss.extract_index_ivf(loaded.faiss_index).invlists
    assert type(faiss.downcast_InvertedLists(lists)).__name__ == "OnDiskInvertedLists"


def test_load_rejects_missing_or_mismatched_sidecar(data, tmp_path):
    index = built(data, "Flat")
    path = tmp_path / "a.faiss"
    index.save(path)
    sidecar = tmp_path / "a.faiss.json"
    raw = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**raw, "file_bytes": raw["file_bytes"] + 1}))
    with pytest.raises(AnnError, match="sidecar describes"):
        AnnIndex.load(path)
    sidecar.write_text(json.dumps({**raw, "surprise": 1}))
    with pytest.raises(AnnError, match="unknown keys"):
        AnnIndex.load(path)
    sidecar.write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(AnnError, match="newer"):
        AnnIndex.load(path)
    sidecar.unlink()
    with pytest.raises(AnnError, match="no sidecar"):
        AnnIndex.load(path)
    with pytest.raises(AnnError, match="no index file"):
        AnnIndex.load(tmp_path / "missing.faiss")


def test_index_info_json_round_trip():
    info = IndexInfo(factory="IVF8,Flat", n=10, dimension=4, params={"nprobe": 2}, measured_recall=0.97)
    assert IndexInfo.from_json(info.to_json()) == info


# ------------------------------------------------------------------------------------------ inputs


def test_float16_memmap_input(data, truth, tmp_path):
    xb, ids, xq = data
    path = tmp_path / "vectors.f16"
    mm = np.memmap(path, dtype=np.float16, mode="w+", shape=xb.shape)
    mm[:] = xb
    mm.flush()
    vectors = np.memmap(path, dtype=np.float16, mode="r", shape=xb.shape)
    index = ann.build_index(vectors, ids, factory="IVF128,Flat")
    _, i = index.search(xq, K)
    assert ann.recall_at_k(i, truth, K) >= TARGET
    flat = ann.build_index(vectors, ids)
    _, i = flat.search(xq, K)
    assert ann.recall_at_k(i, truth, K) >= 0.99  # float16 rounding may swap near ties


def test_progress_is_reported(data, monkeypatch):
    xb, ids, _ = data
    # 4,096 rows a chunk: a float32 vector and its residual each
    monkeypatch.setattr(ann_layout, "ADD_CHUNK_BYTES", 4096 * 8 * D)
    seen = []
    ann.build_index(xb, ids, factory="Flat", progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (N, N) and len(seen) == 5


def test_rerank_scores_each_rows_candidates_exactly():
    """The re-rank's best k per row from the stored vectors (float16, sparse ids) equals numpy's, for
    rows with missing candidates (-1) at the end, in the middle and everywhere, and blocks of rows."""
    from indexer.store.vectors import ArrayVectors

    rng = np.random.default_rng(3)
    base = rng.standard_normal((3000, 48)).astype(np.float16)
    ids = np.arange(3000, dtype=np.int64) * 7 + 5
    q = rng.standard_normal((40, 48)).astype(np.float32)
    cand = np.stack([ids[rng.choice(3000, size=300, replace=False)] for _ in range(40)])  # as an index returns them
    cand[3, 50:] = -1
    cand[4, ::3] = -1
    cand[5] = -1
    cand[6, 2:] = -1  # fewer candidates than k
    scores, found = ann_search._rerank(q, cand, 10, ArrayVectors(base, ids))
    for r in range(40):
        live = np.unique(cand[r][cand[r] >= 0])
        best = live[np.argsort(-(base.astype(np.float32)[(live - 5) // 7] @ q[r]))][:10]
        assert set(found[r][found[r] >= 0].tolist()) == set(best.tolist()), r
        assert (found[r] >= 0).sum() == min(10, live.size)
    assert (found[5] == -1).all() and np.isneginf(scores[5]).all() and (found[6][2:] == -1).all()
    assert np.all(np.diff(scores[0]) <= 0)


def test_adds_to_a_pq_index_keep_their_encoding_tables_within_the_chunk_budget(monkeypatch):
    """A product quantizer encodes a batch through M x ksub floats per vector (32 KiB for PQ32): adding
    a 64 MiB chunk of 32,768 vectors at 512-d took 1 GiB more memory. Add calls are sized so that the
    vectors, their residuals and these tables stay within ADD_CHUNK_BYTES."""
    import faiss

    for factory, tables in (("IVF64,PQ32", 32 * 256 * 4), ("OPQ16,IVF64,PQ16", 16 * 256 * 4), ("IVF64,SQ8", 0)):
        index = faiss.index_factory(512, factory, faiss.METRIC_INNER_PRODUCT)
        rows = ann_layout.add_chunk_rows(index)
        assert rows * (8 * 512 + tables) <= ann_layout.ADD_CHUNK_BYTES < (rows + 1) * (8 * 512 + tables)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    index = faiss.index_factory(64, "IVF8,PQ16x4", faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    monkeypatch.setattr(ann_layout, "ADD_CHUNK_BYTES", 1000 * (8 * 64 + 16 * 16 * 4))
    step = ann_layout.add_chunk_rows(index)
    assert step == 1000
    done = [d for d, _ in ann_layout.add_chunks(index, x, np.arange(5000))]
    assert done == [min(5000, s) for s in range(step, 5000 + step, step)] and index.ntotal == 5000


def test_bad_inputs_raise_named_errors(data):
    xb, ids, xq = data
    assert issubclass(AnnError, IndexerError)
    with pytest.raises(AnnError, match="unique"):
        ann.build_index(xb[:100], np.zeros(100, dtype=np.int64))
    with pytest.raises(AnnError, match="normalised"):
        ann.build_index(xb[:100] * 2, ids[:100])
    with pytest.raises(AnnError, match="IDMap"):
        ann.build_index(xb[:100], ids[:100], factory="IDMap2,Flat")
    with pytest.raises(AnnError, match="invalid index factory"):
        ann.build_index(xb[:100], ids[:100], factory="Nonsense42")
    with pytest.raises(AnnError, match="entries"):
        ann.build_index(xb[:100], ids[:99])
    with pytest.raises(AnnError, match="cannot train"):
        ann.build_index(xb[:50], ids[:50], factory="IVF128,Flat")
    index = built(data, "Flat")
    with pytest.raises(AnnError, match="shape"):
        index.search(xq[:, :10], K)
    with pytest.raises(AnnError, match="float32"):
        index.search(xq.astype(np.float64), K)


def test_an_hnsw_coarse_quantizer_searches_deep_enough_for_the_lists_probed(monkeypatch):
    """An HNSW coarse quantizer searches with efSearch scaled to nprobe, not the graph's own (here
    16): probing 256 of 1,024 lists finds what the 256 lists nearest by exact search hold."""
    import faiss

    rng = np.random.default_rng(3)
    xb = rng.standard_normal((40_000, 32)).astype(np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    q = rng.standard_normal((40, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = np.arange(xb.shape[0], dtype=np.int64)
    index = ann.build_index(xb, ids, factory="IVF1024_HNSW32,Flat")
    ivf = faiss.extract_index_ivf(index.faiss_index)
    quantizer = faiss.downcast_index(ivf.quantizer)
    quantizer.hnsw.efSearch = 16
    truth = ann.exact_search(xb, ids, q, 10)[1]
    centroids = faiss.downcast_index(quantizer.storage).reconstruct_n(0, ivf.nlist)
    dis, lists = faiss.knn(q, centroids, 256, metric=faiss.METRIC_INNER_PRODUCT)
    ivf.nprobe = 256
    reference = ann.recall_at_k(ivf.search_preassigned(q, 10, lists, dis)[1], truth, 10)
    deep = ann.recall_at_k(index.search(q, 10, params={"nprobe": 256})[1], truth, 10)
    assert deep >= reference - 0.01
    monkeypatch.setattr(ann_search, "QUANTIZER_EF_MIN", 16)
    monkeypatch.setattr(ann_search, "QUANTIZER_EF_PER_PROBE", 0)  # the graph's own efSearch, as before
    shallow = ann.recall_at_k(index.search(q, 10, params={"nprobe": 256})[1], truth, 10)
    assert shallow < deep - 0.05


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_one_query_is_reranked_from_its_rows_as_stored_with_the_same_result(dtype):
    """A lookup with ``stored`` (float16 rows, unconverted) re-ranks one query's candidates with
    FAISS's float16 kernel: the same ids and scores as converting them first; missing (-1) and
    repeated candidates and fewer candidates than k are handled alike."""
    from indexer.ann.rerank import rerank as _rerank
    from indexer.store.vectors import ArrayVectors

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64) * 5 + 2
    lookup = ArrayVectors(x.astype(dtype), ids)
    q = rng.standard_normal((1, 64)).astype(np.float32)
    for size in (200, 4):
        cand = ids[rng.choice(3000, size=(1, size), replace=False)]  # as FAISS gives them: unique
        cand[0, 1] = -1
        fast = _rerank(q, cand, 10, lookup)
        plain = _rerank(q, cand, 10, lambda want: lookup(want))  # no stored: converted first
        assert np.array_equal(fast[1], plain[1])
        np.testing.assert_allclose(fast[0], plain[0], rtol=0, atol=1e-6)
        cand[0, -1] = cand[0, 0]  # a repeated candidate comes back once
        fast = _rerank(q, cand, 10, lookup)
        valid = np.unique(cand[cand >= 0])
        best = valid[np.argsort(-(lookup(valid) @ q[0]))[:10]]
        assert fast[1][0][: best.size].tolist() == best.tolist()
        assert (fast[1][0][best.size :] == -1).all()
