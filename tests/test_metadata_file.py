"""The persisted served metadata (indexer.search.metadata_file): a large generation's sorted,
compressed metadata is written once and the next process starts from it, or from an older
generation's file plus what was added since, and serves exactly what a full load serves."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_engine import rows_for, unit

from indexer.search import metadata_file
from indexer.search.engine import SearchEngine
from indexer.search.filters import Filter
from indexer.search.state import StateOptions, load_state
from indexer.store import Collection

FULL = StateOptions(metadata_file=False)


@pytest.fixture(scope="module")
def model(tiny_model_source):
    from bioclip import load_model

    return load_model(tiny_model_source, device="cpu")


@pytest.fixture(autouse=True)
def every_generation_is_large(monkeypatch):
    monkeypatch.setattr(metadata_file, "METADATA_FILE_MIN_ROWS", 1)


def _collection(tmp_path: Path, model, n: int = 60) -> Collection:
    c = Collection.create(tmp_path / "col", model.describe(), dimension=model.dimension)
    vecs = unit(np.random.default_rng(0).standard_normal((n, model.dimension)))
    with c.writer() as w:
        w.add(rows_for(0, n), vecs)
        w.commit()
    return c


def _rows(state) -> list[tuple]:
    """Every row in the table's own order (by taxonomy), then in id order."""
    cur = state.cursor()
    return cur.execute("SELECT * FROM images").fetchall() + cur.execute("SELECT * FROM images ORDER BY id").fetchall()


def _files(c: Collection) -> list[str]:
    return sorted(p.name for p in (c.path / "metadata").glob("served-*.duckdb"))


def _private_copy(state) -> Path:
    (path,) = state.cursor().execute("SELECT path FROM duckdb_databases() WHERE database_name = 'meta'").fetchone()
    return Path(path)


def test_the_next_process_starts_from_the_persisted_file(tmp_path, model, caplog):
    c = _collection(tmp_path, model)
    gen = c.latest_generation_number()
    first = load_state(c, gen, None, StateOptions())
    assert _files(c) == [metadata_file.served_file(c, c.read_generation(gen)).name]
    with caplog.at_level(logging.INFO, logger="indexer.search.state"):
        second = load_state(c, gen, None, StateOptions())
    assert any("from served-" in r.getMessage() for r in caplog.records)
    full = load_state(c, gen, None, FULL)
    assert _rows(second) == _rows(first) == _rows(full)
    kenya = Filter.where("country", "=", "kenya")
    assert np.array_equal(second.allowed(kenya)[0], full.allowed(kenya)[0])
    assert second.metadata([3, 7]) == full.metadata([3, 7])
    assert second.cursor().execute("SELECT count(*) FROM failures").fetchone() == (0,)
    # Served from a private copy (file-backed), removed with the state's connection.
    copy = _private_copy(second)
    assert copy.is_file() and copy.parent != c.path / "metadata"
    del second
    gc.collect()
    assert not copy.parent.exists()


def test_a_later_generation_starts_from_an_older_file_plus_what_was_added(tmp_path, model, caplog):
    c = _collection(tmp_path, model)
    load_state(c, c.latest_generation_number(), None, StateOptions())  # persists generation 1
    old = _files(c)
    vecs = unit(np.random.default_rng(1).standard_normal((20, model.dimension)))
    with c.writer() as w:
        w.add(rows_for(60, 20), vecs)
        w.retire([0, 5])
        w.update(pa.table({"key": ["img-7", "img-8"], "country": ["Chile", "Chile"]}), [7, 8])
        w.commit()
    gen = c.latest_generation_number()
    with caplog.at_level(logging.INFO, logger="indexer.search.state"):
        grown = load_state(c, gen, None, StateOptions())
    assert any("(24 rows added, updated or retired since)" in r.getMessage() for r in caplog.records)  # 20 + 2 + 2
    full = load_state(c, gen, None, FULL)
    assert sorted(_rows(grown)[-78:]) == sorted(_rows(full)[-78:])  # the same rows (80 - 2 retired)
    assert grown.cursor().execute("SELECT count(*) FROM images").fetchone() == (78,)
    chile = Filter.where("country", "=", "Chile")
    assert grown.allowed(chile)[0].tolist() == full.allowed(chile)[0].tolist() == [7, 8]
    # 20 rows on 60 is more than REPERSIST_FRACTION: this generation's file replaces the old one.
    assert _files(c) == [metadata_file.served_file(c, c.read_generation(gen)).name] != old
    again = load_state(c, gen, None, StateOptions())
    assert _rows(again) == _rows(grown)


def test_a_damaged_file_is_ignored_and_replaced(tmp_path, model, caplog):
    c = _collection(tmp_path, model)
    gen = c.latest_generation_number()
    load_state(c, gen, None, StateOptions())
    path = c.path / "metadata" / _files(c)[0]
    path.write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.WARNING, logger="indexer.search.metadata_file"):
        state = load_state(c, gen, None, StateOptions())
    assert any("not using the persisted metadata" in r.getMessage() for r in caplog.records)
    assert _rows(state) == _rows(load_state(c, gen, None, FULL))
    assert _rows(load_state(c, gen, None, StateOptions())) == _rows(state)  # rewritten, usable again


def test_a_collection_that_cannot_be_written_to_is_served_the_usual_way(tmp_path, model, caplog):
    c = _collection(tmp_path, model)
    (c.path / "metadata").write_text("a file where the folder would go\n")  # mkdir fails
    with caplog.at_level(logging.INFO, logger="indexer.search.metadata_file"):
        engine = SearchEngine.open(c.path, model=model, refresh_interval=None)
    assert any("cannot persist the served metadata" in r.getMessage() for r in caplog.records)
    assert engine.count({"country": "Kenya"}) == 15


def test_small_generations_are_not_persisted(tmp_path, model, monkeypatch):
    monkeypatch.setattr(metadata_file, "METADATA_FILE_MIN_ROWS", 61)
    c = _collection(tmp_path, model)
    SearchEngine.open(c.path, model=model, refresh_interval=None)
    assert not (c.path / "metadata").exists()


def test_engines_agree_whichever_way_they_loaded(tmp_path, model):
    c = _collection(tmp_path, model, n=120)
    first = SearchEngine.open(c.path, model=model, refresh_interval=None)
    second = SearchEngine.open(c.path, model=model, refresh_interval=None)  # from the file
    flt = {"country": "Peru", "institutionCode": "NHM"}
    q = unit(np.random.default_rng(3).standard_normal(model.dimension))
    a, b = first.search(vector=q, k=10, filters=flt), second.search(vector=q, k=10, filters=flt)
    assert [h.id for h in a.hits] == [h.id for h in b.hits] and len(a.hits) == 10
    assert [h.get("scientificName") for h in a.hits] == [h.get("scientificName") for h in b.hits]
    assert first.count(flt) == second.count(flt) == 20


def test_a_file_outlives_the_generations_the_writer_keeps(tmp_path, model, caplog):
    """Many small commits later (more than the writer keeps generations of), the file still
    starts a process: its lineage is recorded in it; the writer keeps only the newest file."""
    from indexer.store.generations import KEEP_GENERATIONS

    c = _collection(tmp_path, model)
    load_state(c, c.latest_generation_number(), None, StateOptions())
    first = c.path / "metadata" / _files(c)[0]
    rng = np.random.default_rng(2)
    for k in range(KEEP_GENERATIONS + 2):
        with c.writer() as w:  # a writer cleans up when it opens
            w.add(rows_for(60 + k, 1), unit(rng.standard_normal((1, model.dimension))))
            w.commit()
    assert first.exists() and 1 not in c.generation_numbers()
    gen = c.latest_generation_number()
    with caplog.at_level(logging.INFO, logger="indexer.search.state"):
        state = load_state(c, gen, None, StateOptions())  # 7 rows on 60: not persisted again
    assert any(f"from {first.name} (7 rows added" in r.getMessage() for r in caplog.records)
    assert sorted(_rows(state)) == sorted(_rows(load_state(c, gen, None, FULL)))
    # A newer file (of a larger change) replaces it, and the writer keeps only the newest.
    with c.writer() as w:
        w.add(rows_for(100, 30), unit(rng.standard_normal((30, model.dimension))))
        w.commit()
    state = load_state(c, c.latest_generation_number(), None, StateOptions())
    newest = _files(c)
    assert len(newest) == 1 and newest[0] != first.name
    # re-persisted sorted again: the table's own order is a full load's
    assert _rows(state) == _rows(load_state(c, c.latest_generation_number(), None, FULL))
    (c.path / "metadata" / "served-00000002-old.duckdb").write_bytes(b"")
    stale = c.path / "metadata" / ".served-00000003-x.duckdb.123.tmp"
    stale.write_bytes(b"")
    os.utime(stale, (0, 0))  # an interrupted write, long ago
    with c.writer():
        pass
    assert _files(c) == newest and not stale.exists()


def test_private_copies_of_dead_processes_are_swept(tmp_path, model):
    import tempfile

    pid = 4_000_000
    while pid > 1000:  # a pid no process has
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        except OSError:
            pass
        pid -= 1
    left = Path(tempfile.gettempdir()) / f"bioclip-served-{pid}-killed"
    left.mkdir()
    (left / "served.duckdb").write_bytes(b"x")
    c = _collection(tmp_path, model)
    gen = c.latest_generation_number()
    load_state(c, gen, None, StateOptions())
    state = load_state(c, gen, None, StateOptions())  # opens a copy, sweeping first
    assert not left.exists() and _private_copy(state).exists()
