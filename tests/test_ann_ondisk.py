"""The sharded on-disk index: built from shards in worker processes, merged on disk, served
memory-mapped; new vectors go to a delta searched with it and folded into it; a collection's index
becomes one from a given size (forced here) and the engine searches it.

Vectors with known structure (clusters); IVF-SQ8 keeps training fast on a busy 2-core machine while
still being a compressed index that re-ranks from the stored vectors.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from indexer.ann import AnnIndex, exact_search, recall_at_k, update_index
from indexer.ann.delta import extend_ondisk, fold_ondisk
from indexer.ann.io import delta_path, faiss_prints_to_stderr, ondisk_data_path
from indexer.ann.maintenance import ondisk_factory
from indexer.ann.ondisk import build_ondisk_index
from indexer.ann.sharded import ShardOptions, build_memory
from indexer.ann.workers import run_tasks
from indexer.cli import index as index_cli
from indexer.errors import AnnError, AnnUnsupportedError
from indexer.search.engine import SearchEngine
from indexer.store import Collection
from indexer.store.pieces import ArrayPiece, split_pieces
from indexer.store.vectors import ArrayVectors

N, D, FACTORY = 4000, 32, "IVF16,SQ8"


def clustered(n: int, seed: int, centres: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(len(centres), size=n)] + 0.5 * rng.standard_normal((n, centres.shape[1]))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    centres = np.random.default_rng(1).standard_normal((25, D)).astype(np.float32)
    vecs = clustered(N + 600, 2, centres)
    ids = np.arange(N + 600, dtype=np.int64) * 3 + 11  # sparse ids, as a collection with retired rows has
    queries = clustered(60, 3, centres)
    return vecs, ids, queries


@pytest.fixture(scope="module")
def built(tmp_path_factory, data):
    vecs, ids, _ = data
    path = tmp_path_factory.mktemp("ondisk") / "main.faiss"
    opts = ShardOptions(executor="local", workers=2, shard_rows=1000)
    ann = build_ondisk_index(
        [ArrayPiece(vecs[:N], ids[:N])], path, factory=FACTORY, dimension=D, options=opts,
        vector_lookup=ArrayVectors(vecs, ids),
    )  # fmt: skip
    return path, ann


def recall(ann: AnnIndex, data, n: int, **kw) -> float:
    vecs, ids, queries = data
    found = ann.search(queries, 10, vector_lookup=ArrayVectors(vecs, ids), **kw)[1]
    allowed = kw.get("allowed_ids")
    truth = exact_search(vecs[:n], ids[:n], queries, 10, allowed_ids=allowed)[1]
    return recall_at_k(found, truth, 10)


def test_sharded_build_merges_on_disk_and_serves_read_only(built, data):
    path, ann = built
    info = ann.info
    assert ann.ntotal == N and info.n == N
    assert info.build["storage"] == "ondisk" and info.build["shards"] == 4 and info.build["ntotal"] == N
    assert ondisk_data_path(path).stat().st_size == info.build["ivfdata_bytes"] > N * D  # codes + ids
    assert not any(p.name.startswith(".shards") for p in path.parent.iterdir())  # shard files removed
    assert info.measured_recall >= 0.95 and info.params["rerank"] >= 1
    assert recall(ann, data, N) >= 0.9
    assert not ann.supports_add and not ann.supports_remove
    with pytest.raises(AnnUnsupportedError):
        ann.add(data[0][:1], np.array([1], dtype=np.int64))


def test_filtered_search_on_disk_returns_only_allowed_ids(built, data):
    _, ann = built
    _, ids, _ = data
    allowed = ids[:N][::37]  # ~2.7%: the selector path
    found = ann.search(data[2], 10, allowed_ids=allowed, vector_lookup=ArrayVectors(data[0], ids))[1]
    assert np.isin(found[found >= 0], allowed).all()
    assert recall(ann, data, N, allowed_ids=allowed) >= 0.9


def test_moved_folder_still_loads_and_prints_nothing_on_stdout(built, data, tmp_path, capfd):
    path, _ = built
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for f in path.parent.iterdir():
        if f.name.startswith(path.name):
            shutil.copy(f, moved / f.name)
    capfd.readouterr()
    ann = AnnIndex.load(moved / path.name)
    assert capfd.readouterr().out == ""
    assert ann.ntotal == N and recall(ann, data, N) >= 0.9
    os.remove(ondisk_data_path(moved / path.name))
    with pytest.raises(AnnError, match="ivfdata"):
        AnnIndex.load(moved / path.name)


def test_delta_takes_new_vectors_without_retraining_then_folds(built, data, tmp_path):
    path, ann = built
    vecs, ids, _ = data
    before = {p.name: p.stat().st_size for p in path.parent.iterdir()}
    first = tmp_path / "a.faiss"
    info = extend_ondisk(path, first, [ArrayPiece(vecs[N : N + 100], ids[N : N + 100])])
    assert info.build["delta"]["n"] == 100 and info.n == N + 100 and delta_path(first).is_file()
    assert 0.8 < info.build["drift"] < 1.25  # the same distribution as the training data
    assert os.stat(ondisk_data_path(first)).st_ino == os.stat(ondisk_data_path(path)).st_ino  # linked, not copied
    a = AnnIndex.load(first)
    assert a.ntotal == N + 100
    assert a.search(vecs[N + 7], 1, vector_lookup=ArrayVectors(vecs, ids))[1][0, 0] == ids[N + 7]
    assert recall(a, data, N + 100) >= 0.9
    # more than DELTA_FOLD_FRACTION of the main lists: folded into a new .ivfdata, no delta left
    second = tmp_path / "b.faiss"
    info = extend_ondisk(first, second, [ArrayPiece(vecs[N + 100 :], ids[N + 100 :])])
    assert info.build["delta"] == {} and info.build["folds"] == 1 and not delta_path(second).exists()
    b = AnnIndex.load(second)
    assert b.ntotal == N + 600 and recall(b, data, N + 600) >= 0.9
    assert {p.name: p.stat().st_size for p in path.parent.iterdir()} == before  # the source untouched


def test_drift_is_measured_against_the_training_data(built, tmp_path, caplog):
    path, _ = built
    other = clustered(200, 9, np.random.default_rng(99).standard_normal((25, D)).astype(np.float32))
    info = extend_ondisk(path, tmp_path / "a.faiss", [ArrayPiece(other, np.arange(200, dtype=np.int64) + 10**6)])
    assert info.build["drift"] > 1.25
    assert "reindex --retrain" in caplog.text


def test_fold_without_new_vectors(built, data, tmp_path):
    path, _ = built
    vecs, ids, _ = data
    first = tmp_path / "a.faiss"
    extend_ondisk(path, first, [ArrayPiece(vecs[N : N + 50], ids[N : N + 50])])
    info = fold_ondisk(first, tmp_path / "b.faiss")
    assert info.n == N + 50 and info.build["ntotal"] == N + 50 and not delta_path(tmp_path / "b.faiss").exists()
    assert AnnIndex.load(tmp_path / "b.faiss").ntotal == N + 50


def fail_on_two(task, visitor):
    if task == 2:
        raise ValueError("bad shard data")
    return task


def test_shard_failure_names_the_shard():
    with pytest.raises(AnnError, match=r"shard 2 failed: ValueError: bad shard data"):
        list(run_tasks(fail_on_two, [0, 1, 2, 3], None, executor="local", workers=2))
    assert sorted(r for _, r in run_tasks(lambda t, v: t * v, [1, 2, 3], 10, executor="inline")) == [10, 20, 30]


def test_split_pieces_and_build_memory_bound():
    x = np.zeros((10, 4), dtype=np.float16)
    groups = split_pieces([ArrayPiece(x, np.arange(10)), ArrayPiece(x[:5], np.arange(10, 15))], 4)
    assert [sum(p.rows for p in g) for g in groups] == [4, 4, 4, 3]
    assert np.concatenate([i for g in groups for p in g for i, _ in p.read()]).tolist() == list(range(15))
    opts = ShardOptions(workers=4)
    small, big = (build_memory("IVF65536_HNSW32,PQ64", n, 768, opts) for n in (10**8, 10**9))
    # everything but the tuning filters' ids is the same at 100M and 1B
    assert small["peak"] - small["tuning_filters"] == big["peak"] - big["tuning_filters"]
    assert small["per_worker"] < 2**30 and big["peak"] < 16 * 2**30
    with pytest.raises(AnnError):
        ShardOptions(executor="mpi")


def test_a_pickled_piece_carries_only_its_rows(tmp_path):
    """A shard task sent to a worker process carries its piece: a cut of a memory-mapped matrix is
    reopened from the file there (a pickled np.memmap would be a copy of the whole matrix, 1 GB per
    task at 1M x 512), a cut of an in-memory one copies its own rows only; both read what they name."""
    import pickle

    rows, d = 20_000, 64
    mapped = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float16, shape=(rows, d))
    mapped[:] = np.random.default_rng(0).standard_normal((rows, d)).astype(np.float16)
    ids = np.arange(rows, dtype=np.int64) * 3 + 1
    whole = mapped.nbytes + ids.nbytes
    for source in (mapped, mapped[1000:], np.load(tmp_path / "x.npy", mmap_mode="r")[7:]):
        base = rows - source.shape[0]
        piece = ArrayPiece(source, ids[base:]).cut(333, 1333)
        blob = pickle.dumps(piece)
        assert len(blob) < 1000 * 8 + 4096  # its ids and a file name, no vectors
        back = pickle.loads(blob)
        assert back.rows == 1000
        got_ids, got = next(back.read(chunk_rows=5000))
        assert got_ids.tolist() == ids[base + 333 : base + 1333].tolist()
        assert np.array_equal(got, mapped[base + 333 : base + 1333])
        taken = back.take(np.array([0, 999]))
        assert np.array_equal(taken[1], mapped[[base + 333, base + 1332]])
    in_memory = ArrayPiece(np.asarray(mapped, dtype=np.float32), ids).cut(100, 600)
    blob = pickle.dumps(in_memory)
    assert 500 * d * 4 < len(blob) < whole // 10
    back = pickle.loads(blob)
    assert np.array_equal(next(back.read())[1], np.asarray(mapped[100:600], dtype=np.float32))
    assert pickle.loads(pickle.dumps(ArrayPiece(mapped, ids).cut(5, 5))).rows == 0


def test_the_tuning_sets_exact_pass_works_in_bounded_slices(monkeypatch):
    """The exact top-k of every tuning query is folded in while a shard worker adds its vectors; it
    scores the add chunk a slice at a time (the whole 64 MiB chunk against 1,500 queries is 200 MB of
    scores, and several times that with the selection's temporaries), and the result is exact search's."""
    import tracemalloc

    from indexer.ann import tuning_set

    monkeypatch.setattr(tuning_set, "EXACT_CHUNK_BYTES", 2**20)  # 1 MiB slices, so the test is small
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12_000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(x.shape[0], dtype=np.int64) * 3 + 1
    text = rng.standard_normal((400, 32)).astype(np.float32)
    ts = tuning_set.TuningSet.make(x, ids, np.random.default_rng(1), {"text": text}, True)
    tracemalloc.start()
    ts.push(x[:10_000], ids[:10_000])  # whole, its scores would be 1,400 x 10,000 floats: 56 MB
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    ts.push(x[10_000:], ids[10_000:])
    assert peak < 16 * 2**20  # a few 1 MiB score slices and their temporaries, not 56 MB and theirs
    scores = ts.queries @ x.T
    scores[ts.exclude[:, None] == ids[None, :]] = -np.inf  # a sampled stored vector does not find itself
    want = ids[np.argsort(-scores, axis=1, kind="stable")[:, :10]]
    assert ts.size > 1000 and (ts.truth() == want).all()


def test_automatic_on_disk_choice_from_10m():
    assert ondisk_factory(None, 20_000_000, 768, 16 * 2**30).startswith("IVF65536_HNSW32,")
    assert ondisk_factory(None, 10**9, 512, 32 * 2**30).startswith("IVF131072_HNSW32,PQ")
    assert (
        ondisk_factory(None, 3000, 32, None).startswith("IVF")
        and ondisk_factory("IVF64,PQ8", 10**8, 64, 1) == "IVF64,PQ8"
    )
    with pytest.raises(AnnError, match="IVF"):
        ondisk_factory("HNSW32", 10**7, 64, None)
    # the in-memory choice is fast-scan PQ; on disk the same collection gets 8-bit codes or floats
    assert ondisk_factory(None, 1_000_000, 512, None) == "IVF4096,Flat"
    assert ondisk_factory(None, 1_000_000, 512, 128 * 10**6).endswith(",PQ64")
    with pytest.raises(AnnError, match="fast-scan"):
        ondisk_factory("IVF64,PQ16x4fsr", 10**5, 32, None)


def _collection(tmp_path, vecs, n_first):
    model = {"name": "synthetic", "source": "synthetic", "dimension": D}
    col = Collection.create(tmp_path / "col", model, dimension=D)
    rows = pa.table({"key": [f"k{i}" for i in range(len(vecs))], "location": [f"/x/{i}.jpg" for i in range(len(vecs))]})
    with col.writer() as w:
        for a in range(0, n_first, 2000):
            b = min(n_first, a + 2000)
            w.add(rows.slice(a, b - a), vecs[a:b])
            w.commit()
    return col, rows


@pytest.mark.slow
def test_collection_index_on_disk_through_the_engine(tmp_path, data):
    vecs, _, queries = data
    col, rows = _collection(tmp_path, vecs, N)
    shards = ShardOptions(workers=2, shard_rows=1500)
    with col.writer() as w:
        entry = update_index(w, factory=FACTORY, ondisk=True, shards=shards)
    assert entry["info"]["build"]["storage"] == "ondisk" and not entry["removes_deleted"]
    assert any(f.endswith(".ivfdata") for f in entry["files"])

    def engine_recall() -> float:
        engine = SearchEngine.open(col.path, refresh_interval=None)
        ids, x = col.snapshot().load_vectors()
        truth = exact_search(x, ids, queries, 10)[1]
        found = np.array([[h.id for h in engine.search(vector=q, k=10).hits] for q in queries])
        return recall_at_k(found, truth, 10)

    assert engine_recall() >= 0.9
    # 1% more images: they go to the delta, nothing is trained again
    with col.writer() as w:
        w.add(rows.slice(N, 40), vecs[N : N + 40])
        w.commit()
        entry = update_index(w)
    build = entry["info"]["build"]
    assert build["delta"]["n"] == 40 and entry["info"]["n"] == N + 40 and build["training"]
    assert any(f.endswith(".delta") for f in entry["files"])
    new_id = int(col.snapshot().load_vectors()[0][-1])
    engine = SearchEngine.open(col.path, refresh_interval=None)
    assert engine.search(vector=vecs[N + 39], k=1).hits[0].id == new_id
    assert engine_recall() >= 0.9
    # reindex without --retrain folds the delta; with it, trains a new index
    cli = CliRunner()
    shown = cli.invoke(index_cli.main, ["info", str(col.path)])
    assert shown.exit_code == 0 and "on disk" in shown.output and "delta 40 images" in shown.output
    folded = cli.invoke(index_cli.main, ["reindex", str(col.path)])
    assert folded.exit_code == 0, folded.output
    assert "folding the delta" in folded.output and f"over {N + 40} vectors" in folded.output
    entry = Collection.open(col.path).snapshot().generation.index
    assert entry["info"]["build"]["delta"] == {} and entry["info"]["build"]["folds"] == 1
    retrained = cli.invoke(
        index_cli.main, ["reindex", str(col.path), "--retrain", "--ondisk", "--workers", "2", "--index-type", FACTORY]
    )
    assert retrained.exit_code == 0, retrained.output
    assert f"building {FACTORY} on disk over {N + 40:,} vectors" in retrained.output
    entry = Collection.open(col.path).snapshot().generation.index
    assert entry["info"]["build"].get("folds") is None and entry["info"]["build"]["workers"] == 2
    assert AnnIndex.load(os.path.join(col.path, entry["path"])).ntotal == N + 40
    assert engine_recall() >= 0.9


def test_faiss_prints_go_to_stderr(capfd):
    import ctypes

    libc = ctypes.CDLL(None)
    with faiss_prints_to_stderr():
        libc.printf(b"from C\n")
        libc.fflush(None)
    captured = capfd.readouterr()
    assert "from C" in captured.err and "from C" not in captured.out


@pytest.mark.slow
def test_shards_as_ray_tasks(tmp_path, data):
    pytest.importorskip("ray")
    vecs, ids, _ = data
    opts = ShardOptions(executor="ray", threads=1, shard_rows=1500)
    ann = build_ondisk_index(
        [ArrayPiece(vecs[:N], ids[:N])], tmp_path / "ray.faiss", factory=FACTORY, dimension=D, options=opts,
        vector_lookup=ArrayVectors(vecs, ids),
    )  # fmt: skip
    assert ann.info.build["executor"] == "ray" and ann.info.build["shards"] == 3 and ann.ntotal == N
    assert recall(ann, data, N) >= 0.9
