"""The on-disk collection: commits, generations, retirement, failures, locking, damage handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from indexer.errors import CollectionError, CollectionLockedError, CollectionNotFoundError, FormatVersionError
from indexer.store import FORMAT_VERSION, Collection


def _unit(n: int, d: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def col(tmp_path):
    return Collection.create(tmp_path / "c", {"name": "test", "source": "local-dir:/x"}, dimension=8)


def test_commit_assigns_contiguous_ids_and_stores_vectors(col):
    v1, v2 = _unit(3, 8, 1), _unit(2, 8, 2)
    with col.writer() as w:
        ids1 = w.add(pa.table({"key": ["a", "b", "c"]}), v1)
        assert w.commit() == 1
        ids2 = w.add(pa.table({"key": ["d", "e"]}), v2)
        w.commit()
    assert ids1.tolist() == [0, 1, 2] and ids2.tolist() == [3, 4]
    snap = col.snapshot()
    ids, vecs = snap.load_vectors()
    assert ids.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(vecs, np.concatenate([v1, v2]), atol=1e-3)  # float16 on disk
    np.testing.assert_allclose(snap.get_vectors([4, 0]), np.stack([v2[1], v1[0]]), atol=1e-3)
    with pytest.raises(KeyError):
        snap.get_vectors([5])
    con = snap.connect()
    assert con.execute("SELECT key FROM images ORDER BY id").fetchall() == [("a",), ("b",), ("c",), ("d",), ("e",)]


def test_retired_ids_disappear_and_are_never_reused(col):
    with col.writer() as w:
        w.add(pa.table({"key": ["a", "b"]}), _unit(2, 8, 0))
        w.commit()
        w.retire([0])
        ids = w.add(pa.table({"key": ["a"]}), _unit(1, 8, 3))
        w.commit()
    assert ids.tolist() == [2]
    snap = col.snapshot()
    assert snap.load_vectors()[0].tolist() == [1, 2]
    assert snap.generation.images == 2 and snap.generation.deleted == 1
    con = snap.connect()
    assert sorted(con.execute("SELECT id, key FROM images").fetchall()) == [(1, "b"), (2, "a")]


def test_failures_latest_per_key_and_cleared_by_success(col):
    with col.writer() as w:
        w.record_failures(
            pa.table({"key": ["x", "y"], "reason": ["truncated", "http-500"], "stage": ["decode", "fetch"]})
        )
        w.commit()
        w.record_failures(pa.table({"key": ["y"], "reason": ["http-404"], "stage": ["fetch"]}))
        w.commit()
        w.add(pa.table({"key": ["x"]}), _unit(1, 8, 0))
        w.commit()
        assert w.generation.failed == 1
    con = col.snapshot().connect()
    assert con.execute("SELECT key, reason FROM failures").fetchall() == [("y", "http-404")]


def test_metadata_values_that_do_not_parse_become_null_without_losing_the_row(col):
    with col.writer() as w:
        w.add(
            pa.table(
                {
                    "key": ["a", "b", "c"],
                    "year": ["1950", "circa 1900", " 2001 "],
                    "decimalLatitude": ["-1.5", "N/A", None],
                }
            ),
            _unit(3, 8, 0),
        )
        w.commit()
    rows = col.snapshot().connect().execute('SELECT key, year, "decimalLatitude" FROM images ORDER BY key').fetchall()
    assert rows == [("a", 1950, -1.5), ("b", None, None), ("c", 2001, None)]


def test_second_writer_refused_at_once_even_from_another_process(col):
    with col.writer():
        code = textwrap.dedent(
            f"""
            from indexer.store import Collection
            from indexer.errors import CollectionLockedError
            try:
                Collection.open({str(col.path)!r}).writer()
            except CollectionLockedError as e:
                print("LOCKED", e)
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.stdout.startswith("LOCKED") and "another indexer" in out.stdout
        with pytest.raises(CollectionLockedError):
            col.writer()
    col.writer().close()  # released


def test_a_forked_child_outliving_a_killed_writer_does_not_keep_the_lock(col, tmp_path):
    """Decode workers are forked from the indexer; one that outlives a kill -9 must not hold the lock."""
    import signal
    import time

    pidfile = tmp_path / "child.pid"
    code = textwrap.dedent(
        f"""
        import os, time
        from indexer.store import Collection
        w = Collection.open({str(col.path)!r}).writer()
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        open({str(pidfile)!r}, "w").write(str(child))
        print("READY", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        assert proc.stdout.readline().strip() == "READY"
        child = int(pidfile.read_text())
        with pytest.raises(CollectionLockedError):
            col.writer()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        os.kill(child, 0)  # the child is still alive...
        deadline = time.monotonic() + 10
        while True:  # ...and the lock is free (at once; the loop only absorbs the kernel's reaping)
            try:
                col.writer().close()
                break
            except CollectionLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        proc.kill()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_orphans_of_a_killed_commit_are_removed_and_state_is_intact(col):
    with col.writer() as w:
        w.add(pa.table({"key": ["a"]}), _unit(1, 8, 0))
        w.commit()
    # What a writer killed between writing its segment and publishing leaves behind:
    seg = col.path / "segments"
    (seg / "seg-00000009.parquet").write_bytes(b"partial")
    (seg / ".seg-00000009.f16.npy.tmp-1-1").write_bytes(b"partial")
    (col.path / "generations" / ".gen-00000002.json.tmp-1-1").write_text("{")
    assert col.snapshot().generation.images == 1
    with col.writer() as w:
        assert w.generation.number == 1
    names = set(os.listdir(seg))
    assert names == {"seg-00000001.parquet", "seg-00000001.f16.npy"}


def test_open_errors_are_named(tmp_path, col):
    with pytest.raises(CollectionNotFoundError):
        Collection.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(CollectionNotFoundError, match="not a bioclip-search collection"):
        Collection.open(tmp_path / "plain")
    manifest = json.loads((col.path / "collection.json").read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (col.path / "collection.json").write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match="upgrade"):
        Collection.open(col.path)


def test_create_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file.txt").write_text("mine")
    with pytest.raises(CollectionError, match="not empty"):
        Collection.create(tmp_path / "x", {"name": "m"}, dimension=4)


def test_damaged_vector_file_is_a_clear_error(col):
    with col.writer() as w:
        w.add(pa.table({"key": ["a", "b"]}), _unit(2, 8, 0))
        w.commit()
    np.save(col.path / "segments" / "seg-00000001.f16.npy", np.zeros((1, 8), np.float16))
    with pytest.raises(CollectionError, match="damaged"):
        col.snapshot().load_vectors()
