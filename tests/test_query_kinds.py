"""Recall per query kind (image, text, mixed) on the modality-gap testbed (indexer.ann.testbed).

Random-weight models give text no meaning, so the index tests run on vectors with known
structure: species-like clusters of images and text vectors at cosine ~0.3 from their best images.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from indexer.ann import EmptyTuningSetError, TuningSetError, build_index, exact_search, recall_at_k, update_index
from indexer.ann import choice as ann_choice
from indexer.ann import params as ann_params
from indexer.ann.info import IndexInfo, kind_summary
from indexer.ann.testbed import ModalityGapTestbed
from indexer.ann.tuning_inputs import read_query_file
from indexer.search.engine import SearchEngine
from indexer.search.query import Query, Term
from indexer.store import Collection
from indexer.store.vectors import ArrayVectors

N, D, FACTORY = 20_000, 128, "IVF128,Flat"
TB = ModalityGapTestbed(d=D, n_species=200, seed=3)


@pytest.fixture(scope="module")
def data():
    x, species = TB.images(N)
    ids = np.arange(N, dtype=np.int64) * 3 + 1
    return x, ids, species


@pytest.fixture(scope="module")
def tuned(data):
    """An IVF index tuned on 400 text queries (stream 0) and on given image and mixed queries."""
    x, ids, _ = data
    given = {
        "text": TB.text_queries(400, stream=0),
        "image": TB.images(300, stream=5)[0],
        "mixed": TB.mixed(TB.text_queries(300, stream=6), TB.images(300, stream=6)[0], 2.0),
    }
    return build_index(x, ids, factory=FACTORY, tuning_queries=given), given


def test_the_testbed_has_a_modality_gap(data):
    x, _, _ = data
    stats = TB.statistics(x, TB.text_queries(200, stream=1), sample=300)
    assert 0.15 <= stats["text_to_best_image"] <= 0.4  # CLIP: ~0.2-0.35
    assert stats["image_to_nearest_image"] >= 0.75  # CLIP: ~0.8-0.95
    assert stats["text_to_text"] >= 0.5  # texts share the modality offset
    assert stats["text_to_best_image"] < stats["image_to_nearest_image"] - 0.3


def test_held_out_text_queries_reach_the_target_after_tuning_on_other_text_queries(data, tuned):
    x, ids, _ = data
    ann, _ = tuned
    held_out = TB.text_queries(300, stream=1)
    truth = exact_search(x, ids, held_out, 10)[1]
    own = recall_at_k(ann.search(held_out, 10, kind="text")[1], truth, 10)
    as_image = recall_at_k(ann.search(held_out, 10, kind="image")[1], truth, 10)
    assert own >= 0.945, own  # the target, within the sampling error of 300 held-out queries
    assert as_image < own - 0.05  # what tuning on image queries alone gave text queries
    text, image = ann.info.kinds["text"]["params"], ann.info.kinds["image"]["params"]
    assert text["nprobe"] > image["nprobe"]


def test_the_stored_recall_per_kind_matches_a_fresh_measurement(data, tuned):
    x, ids, _ = data
    ann, given = tuned
    for kind, queries in given.items():
        entry = ann.info.kinds[kind]
        truth = exact_search(x, ids, queries, 10)[1]
        fresh = recall_at_k(ann.search(queries, 10, params=entry["params"])[1], truth, 10)
        assert entry["recall"] == pytest.approx(fresh, abs=1e-4), kind
        assert entry["recall"] == pytest.approx(recall_at_k(ann.search(queries, 10, kind=kind)[1], truth, 10), abs=1e-4)
        assert entry["met"] and entry["n_queries"] == len(queries) and entry["queries"]


@pytest.mark.slow
def test_compressed_indexes_tune_their_rerank_depth_per_kind(data):
    x, ids, _ = data
    x, ids = x[:5000], ids[:5000]
    lookup = ArrayVectors(x, ids)
    ann = build_index(x, ids, factory="IVF32,PQ16", tuning_queries={"text": TB.text_queries(300, stream=0)})
    text, image = ann.info.kinds["text"]["params"], ann.info.kinds["image"]["params"]
    assert text["rerank"] > image["rerank"] and ann.needs_vector_lookup
    held_out = TB.text_queries(300, stream=1)
    truth = exact_search(x, ids, held_out, 10)[1]
    own = recall_at_k(ann.search(held_out, 10, kind="text", vector_lookup=lookup)[1], truth, 10)
    as_image = recall_at_k(ann.search(held_out, 10, kind="image", vector_lookup=lookup)[1], truth, 10)
    assert own >= 0.93 and own > as_image + 0.03, (own, as_image)


def test_the_automatic_fast_scan_index_reaches_the_target_per_kind_with_exact_re_ranking(data, monkeypatch):
    """Scaled down so that the automatic choice is approximate (exact search up to 2**18 floats, no
    exact fallback): it picks fast-scan PQ over the inverted lists, and held-out image and text
    queries reach the target through the exact re-rank from the stored vectors, unfiltered and in
    one family."""
    x, ids, species = data
    monkeypatch.setattr(ann_choice, "EXACT_MAX_SCAN_FLOATS", 2**18)
    monkeypatch.setattr(ann_choice, "EXACT_FALLBACK_MAX_FLOATS", 2**18)
    ann = build_index(x, ids, tuning_queries={"text": TB.text_queries(400, stream=0)})
    assert ann.factory == f"IVF{ann_choice.ivf_nlist(N)},PQ{D // 2}x4fsr" and ann.needs_vector_lookup
    assert all(entry["met"] for entry in ann.info.kinds.values()), ann.info.kinds
    lookup = ArrayVectors(x, ids)
    family = TB.taxon_of(species, "family")
    rows = np.flatnonzero(family == np.bincount(family).argmax())
    for kind, q in {"text": TB.text_queries(300, stream=1), "image": TB.images(300, stream=1)[0]}.items():
        truth = exact_search(x, ids, q, 10)[1]
        got = recall_at_k(ann.search(q, 10, kind=kind, vector_lookup=lookup)[1], truth, 10)
        assert got >= 0.94, (kind, got)  # the target, within the sampling error of 300 queries
        truth = exact_search(x[rows], ids[rows], q, 10)[1]
        got = recall_at_k(ann.search(q, 10, kind=kind, allowed_ids=ids[rows], vector_lookup=lookup)[1], truth, 10)
        assert got >= 0.94, (kind, "one family", got)
    text, image = ann.info.kinds["text"]["params"], ann.info.kinds["image"]["params"]
    assert text["nprobe"] > image["nprobe"]


def test_the_rerank_depths_tuned_from_one_search_are_what_a_search_at_each_depth_returns(data):
    """Tuning scores the candidates of the deepest re-rank once and reads every shallower depth off
    them; each must be what a search at that depth returns (the index's top v x k is a prefix of its
    top 256 x k)."""
    from indexer.ann.tuning import _RerankDepths

    x, ids, _ = data
    x, ids = x[:4000], ids[:4000]
    lookup = ArrayVectors(x, ids)
    ann = build_index(x, ids, factory="IVF32,PQ16")
    q = TB.text_queries(60, stream=2)
    depths = _RerankDepths(ann, q, {"nprobe": 4}, 256, 10, lookup)
    for v in (1, 2, 7, 40, 256):
        direct = ann.search(q, 10, params={"nprobe": 4, "rerank": v}, vector_lookup=lookup)[1]
        assert np.array_equal(depths.found(v), direct), v


def test_region_filters_are_tuned_on_stored_vectors_whatever_the_tuning_queries(tuned):
    ann, _ = tuned
    for kind in ("image", "text", "mixed"):
        filtered = ann.info.kinds[kind]["filtered_recall"]
        regions = [name for name in filtered if name.startswith("region")]
        assert len(regions) == 3, (kind, filtered)  # not silently dropped for text queries
        assert min(filtered.values()) >= 0.9


def test_an_empty_tuning_set_is_an_error(data, tmp_path):
    x, ids, _ = data
    with pytest.raises(EmptyTuningSetError):
        build_index(x[:2000], ids[:2000], factory="IVF16,Flat", tuning_queries={"text": np.zeros((0, D))})
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    with pytest.raises(EmptyTuningSetError, match="empty.txt"):
        read_query_file(tmp_path / "empty.txt", D, lambda texts: np.ones((len(texts), D)))
    np.save(tmp_path / "empty.npy", np.zeros((0, D), dtype=np.float32))
    with pytest.raises(EmptyTuningSetError, match="empty.npy"):
        read_query_file(tmp_path / "empty.npy", D, None)
    np.save(tmp_path / "wrong.npy", np.ones((5, D + 1), dtype=np.float32))
    with pytest.raises(TuningSetError, match="shape"):
        read_query_file(tmp_path / "wrong.npy", D, None)


def test_a_kind_that_misses_within_the_latency_budget_is_said_and_the_automatic_choice_avoids_it(data, monkeypatch):
    """At this size, scaled down: exact search is the last resort while n * d <= 2**22, and the
    latency budget is a tenth of an exact search; without fast-scan codes (as at an odd dimension)
    the automatic IVF index (float32 lists) cannot reach the text target under it."""
    x, ids, _ = data
    monkeypatch.setattr(ann_choice, "EXACT_MAX_SCAN_FLOATS", 2**18)
    monkeypatch.setattr(ann_choice, "EXACT_FALLBACK_MAX_FLOATS", 2**22)
    monkeypatch.setattr(ann_choice, "fast_scan_code", lambda d: None)
    monkeypatch.setattr(ann_params, "LATENCY_BUDGET_FLOATS", N * D / 10)
    assert ann_choice.candidates(N, D)[0].endswith(",Flat")
    assert ann_choice.candidates(N, D)[-1] == "Flat"
    ann = build_index(x, ids, tuning_queries={"text": TB.text_queries(300, stream=0)})
    assert ann.factory == "Flat"
    instead = ann.info.tuning["instead_of"]
    assert instead["factory"].startswith("IVF") and "text" in instead["missed"]
    assert "latency budget" in instead["missed"]["text"]


# -- query kinds through the engine ----------------------------------------------------------


def test_a_query_knows_its_kind():
    v = np.ones(4, dtype=np.float32)
    assert Query((Term.text("fox"),)).kind == "text"
    assert Query((Term.taxon("Vulpes vulpes"),)).kind == "text"
    assert Query((Term.vector(v),)).kind == "image"
    assert Query((Term("id", 3),)).kind == "image"
    assert Query((Term.text("fox"), Term.vector(v))).kind == "mixed"


def make_collection(path, data, n=N):
    x, _, species = data
    genus, family = TB.taxon_of(species, "genus"), TB.taxon_of(species, "family")
    rows = pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "location": [f"/x/{i}.jpg" for i in range(n)],
            "kingdom": ["Animalia"] * n,
            "family": [f"Family{f}" for f in family[:n]],
            "genus": [f"Genus{g}" for g in genus[:n]],
            "specificEpithet": [f"sp{s}" for s in species[:n]],
        }
    )
    model = {"name": "synthetic", "source": "synthetic", "dimension": D}
    c = Collection.create(path, model, dimension=D)
    with c.writer() as w:
        w.add(rows, x[:n])
        w.commit()
    return c


def test_the_engine_searches_with_the_parameters_of_its_query_kind(tmp_path, data):
    c = make_collection(tmp_path / "c", data)
    texts = TB.text_queries(300, stream=0)
    np.save(tmp_path / "texts.npy", texts)
    from indexer.ann.tuning_inputs import TuningInputs

    with c.writer() as w:
        entry = update_index(w, factory=FACTORY, tuning=TuningInputs(queries_file=tmp_path / "texts.npy"))
    assert entry["info"]["kinds"]["text"]["source"] == "file"
    engine = SearchEngine.open(c.path, refresh_interval=None)
    info = engine.info()
    assert set(info["recall"]) == {"image", "text", "mixed"} and all(info["recall"].values())
    assert info["recall_detail"]["text"]["queries"].endswith("texts.npy")
    q = TB.text_queries(100, stream=1)
    ids, vecs = c.snapshot().load_vectors(dtype=np.float16)
    truth = exact_search(vecs, ids, q, 10)[1]
    own = recall_at_k(engine.knn(q, 10, kind="text")[1], truth, 10)
    assert own >= 0.93 and own > recall_at_k(engine.knn(q, 10, kind="image")[1], truth, 10) + 0.05
    assert engine.search(vector=q[0], kind="text", k=3).kind == "text"

    # every answer says which kind it was searched as and what recall and parameters applied
    stored = entry["info"]["kinds"]
    text = engine.search(vector=q[0], kind="text", k=3).to_dict()
    image = engine.search(vector=q[0], k=3).to_dict()
    assert (text["query_kind"], image["query_kind"]) == ("text", "image")
    assert text["recall"]["kind"] == "text" and text["recall"]["index"] == FACTORY
    assert text["recall"]["recall_at_10"] == stored["text"]["recall"] >= 0.95
    assert text["recall"]["measured_on"] == stored["text"]["queries"] and "texts.npy" in text["recall"]["measured_on"]
    assert text["recall"]["params"] == stored["text"]["params"] and text["recall"]["target"] == 0.95
    assert image["recall"]["params"]["nprobe"] == stored["image"]["params"]["nprobe"]
    assert text["recall"]["params"]["nprobe"] > image["recall"]["params"]["nprobe"]
    nprobe = text["recall"]["params"]["nprobe"]
    assert text["searched_as"].startswith(f"searched as a text query (recall@10 {stored['text']['recall']:.3f}")
    assert f"nprobe {nprobe}" in text["searched_as"] and "on text queries" in text["searched_as"]

    # and so does bioclip-search --json, and its table on stderr
    from click.testing import CliRunner

    from indexer.cli import search as search_cli

    np.save(tmp_path / "q.npy", TB.images(1, stream=9)[0][0])
    args = [str(c.path), "--term", f"vector={tmp_path / 'q.npy'}", "--k", "3"]
    r = CliRunner().invoke(search_cli.main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["query_kind"] == "image" and out["recall"]["params"] == image["recall"]["params"]
    assert out["recall"]["recall_at_10"] == stored["image"]["recall"] and out["searched_as"] == image["searched_as"]
    table = CliRunner().invoke(search_cli.main, args)
    assert table.exit_code == 0 and image["searched_as"] in table.stderr and "searched as" not in table.stdout


def test_exact_search_and_browsing_say_so(tmp_path, data):
    c = make_collection(tmp_path / "small", data, n=300)  # no ANN index: searched exactly
    engine = SearchEngine.open(c.path, refresh_interval=None)
    x, _, _ = data
    got = engine.search(vector=x[0], kind="mixed", k=3).to_dict()
    assert got["query_kind"] == "mixed" and got["recall"]["index"] is None
    assert got["recall"]["recall_at_10"] == 1.0 and got["recall"]["params"] == {}
    assert got["searched_as"] == "searched as a mixed query (exact search: every image compared)"
    listing = engine.browse({"family": "Family1"}, k=3).to_dict()
    assert listing["query_kind"] is None and listing["recall"] is None
    assert listing["searched_as"].startswith("no query: ") and "not ranked" in listing["searched_as"]


def test_a_collection_indexed_before_query_kinds_opens_and_reindex_retunes_it(tmp_path, data):
    from click.testing import CliRunner

    from indexer.cli import index as index_cli

    c = make_collection(tmp_path / "old", data)
    x, _, _ = data
    with c.writer() as w:
        snap = w.snapshot()
        ids, vecs = snap.load_vectors(dtype=np.float16)
        ann = build_index(vecs, ids, factory=FACTORY)
        # what an index built before query kinds wrote: format 1, one figure, no kinds
        old = {k: v for k, v in ann.info.to_dict().items() if k != "kinds"}
        old.update(format_version=1, tuning={"queries": 500, "k": 10, "seed": 0, "method": "sampled stored vectors"})
        rel = w.new_file_name("ann", ".faiss")
        ann.save(c.path / rel)
        (c.path / f"{rel}.json").write_text(json.dumps(old))
        w.publish_index({"path": rel, "files": [rel, f"{rel}.json"], "factory": FACTORY, "covers": [0], "info": old})
    assert IndexInfo.from_json(json.dumps(old)).kinds["image"]["recall"] == old["measured_recall"]

    engine = SearchEngine.open(c.path, refresh_interval=None)
    info = engine.info()
    assert info["recall"] == {"image": old["measured_recall"], "text": None, "mixed": None}
    assert "before query kinds" in info["recall_detail"]["image"]["queries"]
    old_text = engine.search(vector=TB.text_queries(1, stream=1)[0], kind="text", k=5)
    assert old_text.hits  # image parameters
    said = old_text.to_dict()
    assert said["query_kind"] == "text" and said["recall"]["recall_at_10"] is None  # not measured: no figure
    assert said["recall"]["measured_on"] is None and said["recall"]["params"] == old["params"]
    assert "not measured" in said["recall"]["note"] and "recall not measured on text queries" in said["searched_as"]
    old_image = engine.search(vector=x[0], k=5).to_dict()["recall"]
    assert old_image["recall_at_10"] == old["measured_recall"] and "before query kinds" in old_image["measured_on"]
    plain = CliRunner().invoke(index_cli.main, ["info", str(c.path)])
    assert plain.exit_code == 0 and "text   recall not measured" in plain.output, plain.output

    np.save(tmp_path / "texts.npy", TB.text_queries(300, stream=0))
    r = CliRunner().invoke(
        index_cli.main, ["reindex", str(c.path), "--index-type", FACTORY, "--tune-queries", str(tmp_path / "texts.npy")]
    )
    assert r.exit_code == 0, r.output
    assert "text   recall 0.9" in r.output and "measured on: 300 queries from texts.npy" in r.output
    j = json.loads(CliRunner().invoke(index_cli.main, ["info", str(c.path), "--json"]).output)
    assert all(isinstance(j["recall"][k], float) and j["recall"][k] >= 0.95 for k in ("image", "text", "mixed"))
    assert j["recall_detail"]["text"]["params"]["nprobe"] > j["recall_detail"]["image"]["params"]["nprobe"]
    assert kind_summary(j["index_info"]) == j["recall_detail"]


def test_the_knob_search_stops_doubling_a_knob_that_no_longer_helps():
    """The filter budget is doubled until the target is met; when recall stays flat (the codes, not
    the budget, limit it) two flat doublings end the search with the best value seen, instead of
    searching every budget up to the cap. Without patience, and where recall rises, nothing changes."""
    from indexer.ann.tuning import smallest

    calls: list[int] = []

    def flat(v: int) -> tuple[float, float]:
        calls.append(v)
        return 0.90 + (0.0005 if v >= 2 else 0.0), 0.89

    assert smallest(flat, 1, 64, 0.95, patience=2) == (2, 0.9005) and calls == [1, 2, 4]
    calls.clear()
    assert smallest(flat, 1, 64, 0.95)[0] == 2 and calls == [1, 2, 4, 8, 16, 32, 64]

    def rising(v: int) -> tuple[float, float]:
        return min(1.0, 0.5 + 0.01 * v), min(1.0, 0.5 + 0.01 * v) - 0.005

    assert smallest(rising, 1, 64, 0.95, patience=2) == smallest(rising, 1, 64, 0.95) == (46, 0.96)


def test_a_deeper_re_rank_with_fewer_lists_is_kept_when_it_costs_less():
    """The depth is tuned first and nprobe at it; a deeper re-rank reaching the target with fewer
    lists replaces that pair only when its cost is lower."""
    from indexer.ann.tuning import _trade_lists_for_depth

    def recall(p: dict[str, int]) -> tuple[float, float]:  # lists and depth both help, with no noise
        value = min(1.0, 0.5 + p["nprobe"] / 400 + p["rerank"] / 100)
        return value, value

    tuned = {"rerank": 10, "nprobe": 140}  # 0.5 + 0.35 + 0.1 = 0.95
    cheap_depth = _trade_lists_for_depth(recall, tuned, 0.95, lambda p: p["nprobe"] * 100 + p["rerank"])
    assert cheap_depth == {"rerank": 40, "nprobe": 20}  # 0.5 + 0.05 + 0.4: the cheapest of depth 10, 20, 40
    costly_depth = _trade_lists_for_depth(recall, tuned, 0.95, lambda p: p["nprobe"] + p["rerank"] * 100)
    assert costly_depth == tuned
