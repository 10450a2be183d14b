"""Where text tuning queries come from: the collection's own taxa and the vocabulary (embedded once
and cached), a user's file (``reindex --tune-queries``, .npy or text), and the opt-in query log."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from imagegen import make_folder

from indexer.ann import text_queries, tuning_inputs
from indexer.ann.text_queries import CACHE_FILE, collection_phrases, vocabulary
from indexer.cli import index as index_cli
from indexer.cli import search as search_cli
from indexer.search.engine import SearchEngine
from indexer.store import Collection, querylog
from indexer.store.querylog import QueryLog, read_query_log

IVF = "IVF2,Flat"  # forced: at 12 images the automatic choice is exact search, which needs no tuning


@pytest.fixture
def col(tmp_path, tiny_model_source):
    folder = make_folder(tmp_path / "imgs", 12)
    out = tmp_path / "col"
    r = CliRunner().invoke(
        index_cli.main,
        ["build", str(folder), "--labels", str(folder / "labels.csv"), "--out", str(out)]
        + ["--model", tiny_model_source, "--device", "cpu", "--batch-size", "4", "--workers", "0"],
    )
    assert r.exit_code == 0, r.output
    return out


def reindex(col, *args):
    r = CliRunner().invoke(index_cli.main, ["reindex", str(col), "--index-type", IVF, "--device", "cpu", *args])
    assert r.exit_code == 0, r.output
    return r.output, json.loads(CliRunner().invoke(index_cli.main, ["info", str(col), "--json"]).output)


def test_the_vocabulary_is_packaged_with_its_provenance():
    from importlib import resources

    text = resources.files("indexer.ann").joinpath("data/tuning_phrases.txt").read_text(encoding="utf-8")
    assert "Provenance: written by the bioclip-search authors" in text
    words = vocabulary()
    assert len(words) >= 100 and len(set(words)) == len(words) and not any(w.startswith("#") for w in words)


def test_reindex_tunes_text_on_the_collections_taxa_embedded_once(col, caplog):
    con = Collection.open(col).snapshot().connect()
    phrases, n_taxa = collection_phrases(con)
    # the engine's taxonomic + common-name prompt, and the free-text forms
    assert (
        "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven."
        in phrases
    )
    assert {"Corvus corax", "common raven", "Corvidae"} <= set(phrases) and n_taxa > 5
    out, info = reindex(col)
    text = info["recall_detail"]["text"]
    assert text["source"] == "collection" and "of the collection's taxa" in text["queries"]
    assert text["n_queries"] == min(500, len(phrases))
    assert "text   recall" in out and "measured on:" in out
    cache = col / CACHE_FILE
    assert cache.is_file()
    before = cache.stat().st_mtime_ns
    caplog.set_level("INFO", logger="indexer.ann.text_queries")
    caplog.clear()
    reindex(col)  # nothing new to embed: the model is not even loaded
    assert cache.stat().st_mtime_ns == before
    assert not [r for r in caplog.records if "embedding" in r.getMessage()]


def test_tune_queries_from_a_text_file_and_from_a_npy(col, tmp_path):
    (tmp_path / "ours.txt").write_text("# what our visitors searched\nred fox\n\nbarn owl\nred fox\nbutterfly wings\n")
    _, info = reindex(col, "--tune-queries", str(tmp_path / "ours.txt"))
    text = info["recall_detail"]["text"]
    assert text["source"] == "file" and text["n_queries"] == 3 and text["queries"] == "3 queries from ours.txt"

    d = info["dimension"]
    rng = np.random.default_rng(0)
    np.save(tmp_path / "images.npy", rng.standard_normal((40, d)).astype(np.float32))
    _, info = reindex(col, "--tune-queries", str(tmp_path / "images.npy"), "--tune-kind", "image")
    image = info["recall_detail"]["image"]
    assert image["source"] == "file" and image["n_queries"] == 40
    assert info["recall_detail"]["text"]["source"] == "collection"  # text still from the collection


def test_a_bad_or_empty_tune_queries_file_is_a_message_naming_it(col, tmp_path):
    (tmp_path / "empty.txt").write_text("\n# nothing\n")
    np.save(tmp_path / "wrong.npy", np.ones((3, 5), dtype=np.float32))
    for name, words in (("empty.txt", "holds no queries"), ("wrong.npy", "shape")):
        r = CliRunner().invoke(index_cli.main, ["reindex", str(col), "--tune-queries", str(tmp_path / name)])
        assert r.exit_code == 1 and name in r.output and words in r.output, r.output
        assert "Traceback" not in r.output


def test_the_query_log_is_opt_in_vectors_only_and_reindex_tunes_on_it(col, monkeypatch):
    r = CliRunner().invoke(search_cli.main, [str(col), "Corvidae", "--json"])
    assert r.exit_code == 0 and not (col / querylog.LOG_DIR).exists()  # off by default

    for words in ("Corvidae", "Corvus corax", "a black bird", "Pica pica"):
        r = CliRunner().invoke(search_cli.main, [str(col), words, "--log-queries", "--json"])
        assert r.exit_code == 0, r.output
    engine = SearchEngine.open(col, refresh_interval=None, log_queries=True)
    hit = engine.search(text="Corvidae", k=1).hits[0]
    engine.search(image_id=hit.id, k=3)
    engine.search(text="Corvidae", k=3, offset=3)  # the same query again (its next page): logged once
    logged = read_query_log(col, engine.collection.dimension)
    assert len(logged["text"]) == 5 and len(logged["image"]) == 1
    assert np.allclose(np.linalg.norm(logged["text"], axis=1), 1.0, atol=1e-2)
    assert not list((col / querylog.LOG_DIR).glob("*.jsonl"))  # no text unless asked

    monkeypatch.setattr(tuning_inputs, "LOG_MIN_QUERIES", 5)
    _, info = reindex(col)
    text = info["recall_detail"]["text"]
    assert text["source"] == "log" and text["n_queries"] == 5 and "logged text queries" in text["queries"]
    assert info["recall_detail"]["image"]["source"] == "sampled"  # 1 logged image query: not enough


def test_the_query_log_keeps_text_only_when_asked_and_stays_bounded(tmp_path, monkeypatch):
    d = 8
    rng = np.random.default_rng(1)
    qlog = QueryLog(tmp_path, d, text=True)
    assert qlog.append(np.eye(d)[0], "text", [("text", 1.0, "red fox")])
    qlog.close()
    (line,) = (tmp_path / querylog.LOG_DIR).glob("*.jsonl")
    assert json.loads(line.read_text())["terms"] == [["text", 1.0, "red fox"]]

    monkeypatch.setattr(querylog, "RECORDS_PER_FILE", 5)
    monkeypatch.setattr(querylog, "MAX_RECORDS", 12)
    for _ in range(6):  # six processes' worth of files
        qlog = QueryLog(tmp_path, d)
        for v in rng.standard_normal((5, d)):
            qlog.append(v / np.linalg.norm(v), "image")
        qlog.close()
    logged = read_query_log(tmp_path, d)
    assert sum(len(v) for v in logged.values()) <= 12


def test_a_cache_of_another_model_is_not_used(tmp_path):
    cache = text_queries.PhraseCache(tmp_path, {"source": "a", "dimension": 4})
    cache.save({"a bird": np.ones(4, dtype=np.float16)})
    assert text_queries.PhraseCache(tmp_path, {"source": "a", "dimension": 4}).load().keys() == {"a bird"}
    assert text_queries.PhraseCache(tmp_path, {"source": "b", "dimension": 4}).load() == {}
