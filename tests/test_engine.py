"""The search engine's query API: taxa, free text, combinations, paging, grouping, filters, errors.

Collections are written directly through the collection Writer (random unit vectors of the tiny
model's dimension, chosen metadata), so every expectation can be checked by brute force.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from indexer.ann import update_index
from indexer.errors import QueryError
from indexer.search.engine import SearchEngine
from indexer.search.filters import Filter
from indexer.search.query import Grouping, Query, Term, parse_term
from indexer.search.state import ROW_ORDER
from indexer.store import Collection

AVES = ("Animalia", "Chordata", "Aves")
TAXA = [
    (*AVES, "Passeriformes", "Corvidae", "Corvus", "corax", "common raven"),
    (*AVES, "Passeriformes", "Corvidae", "Corvus", "corone", "carrion crow"),
    (*AVES, "Passeriformes", "Corvidae", "Pica", "pica", "Eurasian magpie"),
    ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba", "white mulberry"),
    (*AVES, "Suliformes", "Sulidae", "Morus", "bassanus", "northern gannet"),
    ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Felis", "catus", "domestic cat"),
]
COUNTRIES = ["Kenya", "Tanzania", "Sweden", "Peru"]
N = 120


def rows_for(start: int, n: int) -> pa.Table:
    cols: dict[str, list] = {
        c: []
        for c in (
            "key",
            "location",
            "kingdom",
            "phylum",
            "class",
            "order",
            "family",
            "genus",
            "specificEpithet",
            "scientificName",
            "vernacularName",
            "country",
            "year",
            "recordID",
            "catalogNumber",
            "institutionCode",
            "decimalLatitude",
            "decimalLongitude",
        )
    }
    for i in range(start, start + n):
        # Morus bassanus (gannets) outnumber Morus alba: the ambiguous "Morus" means the gannets first
        t = TAXA[4] if i % 9 == 0 else TAXA[i % len(TAXA)]
        for col, v in zip(
            ("kingdom", "phylum", "class", "order", "family", "genus", "specificEpithet", "vernacularName"), t
        ):
            cols[col].append(v)
        cols["scientificName"].append(f"{t[5]} {t[6]}")
        cols["key"].append(f"img-{i}")
        cols["location"].append(f"/data/img-{i}.jpg")
        cols["country"].append(COUNTRIES[i % 4])
        cols["year"].append(str(1900 + i % 100))
        cols["recordID"].append(f"rec-{i // 2}" if i < 60 else None)  # the first 60 images: two per record
        cols["catalogNumber"].append(f"CAT-{i}")
        cols["institutionCode"].append("NHM" if i % 3 else "MNHN")
        cols["decimalLatitude"].append(-1.0 if i % 2 else None)
        cols["decimalLongitude"].append(36.0 if i % 2 else None)
    return pa.table(cols)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def model(tiny_model_source):
    from bioclip import load_model

    return load_model(tiny_model_source, device="cpu")


@pytest.fixture(scope="module")
def coll(tmp_path_factory, model):
    """N images in two commits, indexed; vectors kept for brute force."""
    path = tmp_path_factory.mktemp("engine") / "col"
    c = Collection.create(path, model.describe(), dimension=model.dimension)
    rng = np.random.default_rng(0)
    vecs = unit(rng.standard_normal((N, model.dimension)))
    vecs[100:104] = vecs[99]  # near-identical pictures without a shared record
    vecs[100:104] = unit(vecs[100:104] + 0.01 * rng.standard_normal((4, model.dimension)))
    with c.writer() as w:
        w.add(rows_for(0, N // 2), vecs[: N // 2])
        w.commit()
        w.add(rows_for(N // 2, N // 2), vecs[N // 2 :])
        w.commit()
        update_index(w)
    stored = Collection.open(path).snapshot().load_vectors()[1]  # float16 round trip
    return path, stored


@pytest.fixture(scope="module")
def engine(coll, model):
    return SearchEngine.open(coll[0], model=model, refresh_interval=None)


def brute(stored, q, allowed=None, exclude=()):
    sims = stored @ q.reshape(-1)
    order = [int(i) for i in np.argsort(-sims, kind="stable") if (allowed is None or i in allowed) and i not in exclude]
    return order, sims


# -- text and taxa ---------------------------------------------------------------------------


def test_a_taxon_name_is_expanded_to_bioclips_taxonomic_text(engine, model):
    r = engine.search("corvus CORAX", k=3)
    assert r.taxon.name == "Corvus corax"
    assert (
        r.prompt
        == "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven."
    )
    assert r.interpretation == f'species Corvus corax, as "{r.prompt}"'
    np.testing.assert_allclose(r.query_vector, model.encode_texts([r.prompt]), atol=1e-6)
    assert engine.search("Common Raven", k=1).prompt == r.prompt
    genus = engine.search("genus corvus", k=1)
    assert genus.prompt == "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus."
    assert engine.search("Aves", k=1).interpretation.startswith('class Aves, as "a photo of Animalia Chordata Aves."')


def test_an_ambiguous_name_says_so_and_lists_the_candidates(engine):
    r = engine.search("Morus", k=3)
    assert r.taxon.describe() == "genus Morus (Animalia, Sulidae)"  # more images
    assert [m.describe() for m in r.alternatives] == ["genus Morus (Plantae, Moraceae)"]
    assert any(
        "names several taxa" in n and "Plantae" in n and "Sulidae" in n and "'Moraceae Morus'" in n for n in r.notices
    )
    chosen = engine.search("Moraceae Morus", k=3)
    assert chosen.taxon.describe() == "genus Morus (Plantae, Moraceae)" and chosen.notices == []


def test_unknown_names_fall_back_to_free_text_with_a_notice(engine):
    r = engine.search("Nonexistus fictus", k=2)
    assert r.interpretation == 'free text "Nonexistus fictus"' and r.taxon is None
    assert any("no taxon named 'Nonexistus fictus'" in n for n in r.notices)
    r = engine.search("Corvus coraxx", k=2)
    assert any("did you mean Corvus corax?" in n for n in r.notices)
    r = engine.search(query=Term.taxon("snowy owl"), k=2)
    assert any("no taxon named 'snowy owl'" in n for n in r.notices)
    assert engine.search("a bird on a snowy branch", k=2).notices == []


def test_text_longer_than_the_context_is_cut_with_a_notice(engine, model):
    long = " ".join(["feather"] * (model.context_length + 20))
    r = engine.search(long, k=2)
    assert len(r.hits) == 2
    assert any("longer than the model reads" in n for n in r.notices)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text": ""}, "empty"),
        ({"text": "   "}, "empty"),
        ({"text": 42}, "must be a string"),
        ({}, "exactly one"),
        ({"text": "x", "image_id": 1}, "exactly one"),
        ({"text": "x", "k": 0}, "k must be at least 1"),
        ({"text": "x", "offset": -1}, "offset must not be negative"),
        ({"text": "x", "k": 2.5}, "whole number"),
        ({"text": "x", "min_score": "high"}, "minimum score must be a number"),
        ({"image_id": 10**9}, "no image with id"),
        ({"vector": np.ones(3)}, "dimensions"),
        ({"vector": np.zeros(64)}, "zero"),
        ({"query": Query()}, "query is empty"),
        ({"query": -Term.text("crow")}, "positive weight"),
        ({"query": Term.text("crow") - Term.text("crow")}, "cancel"),
        ({"text": "x", "group": "nearby"}, "unknown grouping"),
        ({"text": "x", "filters": {"colour": "red"}}, "no field named 'colour'"),
        ({"text": "x", "filters": ["year>=old"]}, "needs a number"),
        ({"text": "x", "filters": 42}, "filters must be"),
    ],
)
def test_bad_queries_raise_query_errors_with_a_message(engine, kwargs, message):
    with pytest.raises(QueryError, match=message):
        engine.search(**kwargs)


def test_bad_terms():
    with pytest.raises(QueryError, match="non-zero"):
        Term.text("x", 0)
    with pytest.raises(QueryError, match="finite"):
        Term.text("x", float("inf"))
    with pytest.raises(QueryError, match="unknown query term kind"):
        Term("sound", "x")
    with pytest.raises(QueryError, match="whole number"):
        Term.id("forty")
    with pytest.raises(QueryError, match="cannot read query term"):
        parse_term("colour=red")
    with pytest.raises(QueryError, match="weight"):
        parse_term("text:heavy=crow")


# -- combinations ----------------------------------------------------------------------------


def test_a_combination_is_the_normalised_weighted_sum_and_ranks_by_weighted_cosines(engine, coll, model):
    _, stored = coll
    q = Term.text("Corvus") + Term.id(7) - 0.5 * Term.text("juvenile")
    assert [t.weight for t in q.terms] == [1.0, 1.0, -0.5]
    r = engine.search(query=q, k=10)
    u = np.stack([model.encode_texts([r.prompts[0]])[0], stored[7], model.encode_texts(["juvenile"])[0]])
    s = u[0] + u[1] - 0.5 * u[2]
    np.testing.assert_allclose(r.query_vector[0], s / np.linalg.norm(s), atol=1e-5)
    order, sims = brute(stored, r.query_vector, exclude={7})
    assert [h.id for h in r.hits] == order[:10]  # the index of this small collection is exact
    weighted = stored @ u.T @ np.array([1.0, 1.0, -0.5])
    assert [h.id for h in r.hits] == [i for i in np.argsort(-weighted, kind="stable") if i != 7][:10]
    np.testing.assert_allclose([h.score for h in r.hits], sims[order[:10]], atol=1e-5)
    assert r.interpretation.startswith('combination: genus Corvus, as "a photo of')
    assert '+ image 7 - 0.5 x free text "juvenile"' in r.interpretation


def test_query_forms_are_equivalent(engine):
    a = engine.search(query=Query.of(Term.text("Corvus"), Term.text("juvenile", -0.5)), k=5)
    b = engine.search(Query.text("Corvus") - Term.text("juvenile") * 0.5, k=5)
    c = engine.search(query=parse_term("text=Corvus") + parse_term("text:-0.5=juvenile"), k=5)
    assert [h.id for h in a.hits] == [h.id for h in b.hits] == [h.id for h in c.hits]
    single = engine.search(query=Term.text("Corvus", 3.0), k=5)  # one term: the weight does not matter
    assert [h.id for h in single.hits] == [h.id for h in engine.search("Corvus", k=5).hits]


def test_more_like_this_leaves_the_image_out(engine, coll):
    _, stored = coll
    r = engine.similar(11, k=5)
    assert 11 not in [h.id for h in r.hits]
    assert [h.id for h in r.hits] == brute(stored, stored[11], exclude={11})[0][:5]
    assert r.interpretation == "images similar to image 11"
    both = engine.search(query=Term.id(11) + Term.id(12), k=5)
    assert {11, 12}.isdisjoint(h.id for h in both.hits)


def test_a_vector_query_is_normalised(engine, coll):
    _, stored = coll
    r = engine.search(vector=stored[3] * 7.0, k=1, label="my vector")
    assert r.hits[0].id == 3 and r.hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert r.interpretation == "my vector"


# -- paging, minimum score ---------------------------------------------------------------------


def test_pages_concatenate_to_the_full_ranking(engine):
    full = engine.search("Corvidae", k=30)
    pages = [engine.search("Corvidae", k=10, offset=o) for o in (0, 10, 20)]
    assert [h.id for p in pages for h in p.hits] == [h.id for h in full.hits]
    assert all(p.has_more for p in pages)
    last = engine.search("Corvidae", k=10, offset=N - 5)
    assert len(last.hits) == 5 and not last.has_more
    assert engine.search("Corvidae", k=10, offset=N + 10).hits == []
    # huge values are cut to the collection's size, not allocated
    far = engine.search("Corvidae", k=10, offset=10**12)
    assert far.hits == [] and not far.has_more and any("past the end" in n for n in far.notices)
    everything = engine.search("Corvidae", k=10**9)
    assert len(everything.hits) == N and not everything.has_more


def test_min_score(engine):
    full = engine.search("Corvidae", k=N)
    cut = sorted(h.score for h in full.hits)[N // 2]
    r = engine.search("Corvidae", k=N, min_score=cut)
    assert r.hits and all(h.score >= cut for h in r.hits)
    assert [h.id for h in r.hits] == [h.id for h in full.hits if h.score >= cut]
    none = engine.search("Corvidae", k=5, min_score=0.9999)
    assert none.hits == [] and any("scores 0.9999 or more" in n for n in none.notices)


# -- grouping --------------------------------------------------------------------------------


def test_grouping_by_record_shows_one_hit_per_record(engine, coll):
    _, stored = coll
    q = stored[20] + stored[21]  # images 20 and 21 are one record (rec-10)
    r = engine.search(vector=q, k=10, group=True)
    keys = [h.get("recordID") for h in r.hits if h.get("recordID")]
    assert len(keys) == len(set(keys))
    lead = r.hits[0]
    assert {lead.id, *(g.id for g in lead.group)} == {20, 21}
    assert "grouped by same record" in r.interpretation
    plain = engine.search(vector=q, k=10)
    assert {plain.hits[0].id, plain.hits[1].id} == {20, 21}
    # pages count groups and never repeat one
    p1 = engine.search(vector=q, k=5, group=True)
    p2 = engine.search(vector=q, k=5, offset=5, group=True)
    seen = [h.id for p in (p1, p2) for h in p.hits for h in (h, *h.group)]
    assert len(seen) == len(set(seen)) and [h.id for h in p1.hits + p2.hits] == [h.id for h in r.hits]


def test_grouping_by_similarity_folds_near_identical_pictures(engine, coll):
    _, stored = coll
    r = engine.search(vector=stored[99], k=5, group=Grouping(by_record=False, similarity=0.95))
    assert r.hits[0].id == 99 and {g.id for g in r.hits[0].group} == {100, 101, 102, 103}
    assert all(h.id not in range(100, 104) for h in r.hits[1:])
    assert r.hits[0].to_dict()["group"][0].keys() == {"id", "score", "location"}
    plain = engine.search(vector=stored[99], k=5)
    assert {h.id for h in plain.hits} == {99, 100, 101, 102, 103}


def test_grouping_coerce():
    assert Grouping.coerce(None) is None and Grouping.coerce(False) is None
    assert Grouping.coerce(True) == Grouping() == Grouping.coerce("record")
    assert Grouping.coerce("similar") == Grouping(by_record=False, similarity=0.95)
    assert Grouping.coerce(0.9) == Grouping(by_record=True, similarity=0.9)


# -- filters ---------------------------------------------------------------------------------


def test_filtered_search_equals_brute_force_over_the_allowed_images(engine, coll):
    _, stored = coll
    flt = Filter.from_mapping({"country": ["Kenya", "Peru"], "year": (1910, 1980)})
    allowed = {i for i in range(N) if i % 4 in (0, 3) and 10 <= i % 100 <= 80}
    r = engine.search(vector=stored[5], k=10, filters=flt)
    assert r.candidates == len(allowed)
    assert [h.id for h in r.hits] == brute(stored, stored[5], allowed)[0][:10]
    assert r.interpretation.endswith("where country in Kenya, Peru; year 1910..1980")
    assert engine.count(flt) == len(allowed)
    # the same filters as --where strings and as a mapping
    same = engine.search(vector=stored[5], k=10, filters=["country=Kenya", "country=Peru", "year=1910..1980"])
    assert [h.id for h in same.hits] == [h.id for h in r.hits]


def test_taxon_filter_and_taxon_query(engine):
    r = engine.search("Corvus corax", k=50, filters={"taxon": "Corvidae", "has_coordinates": True})
    assert r.hits and all(h.get("family") == "Corvidae" and h.get("decimalLatitude") is not None for h in r.hits)
    assert r.candidates == len(r.hits)
    none = engine.search("crow", k=5, filters={"taxon": "Nonexistus"})
    assert none.hits == [] and "no image matches the filters" in none.notices
    assert any("does not occur in this collection" in n for n in none.notices)


def test_selected_ids_are_cached_per_filter_and_generation(engine):
    flt = Filter.where("institutionCode", "=", "mnhn")
    first = engine.selected_ids(flt)
    again = engine.selected_ids(Filter.where("institutionCode", "=", "mnhn"))
    assert again is first and not first.flags.writeable
    assert list(first) == [i for i in range(N) if i % 3 == 0]


def test_new_generations_are_seen_and_filters_recomputed(tmp_path, model):
    path = tmp_path / "col"
    c = Collection.create(path, model.describe(), dimension=model.dimension)
    rng = np.random.default_rng(1)
    vecs = unit(rng.standard_normal((40, model.dimension)))
    with c.writer() as w:
        w.add(rows_for(0, 20), vecs[:20])
        w.commit()
        update_index(w)
    engine = SearchEngine.open(path, model=model, refresh_interval=None)
    kenya = {"country": "Kenya"}
    assert engine.count(kenya) == 5
    with c.writer() as w:  # not indexed: searched exactly as the engine's "delta"
        w.add(rows_for(20, 20), vecs[20:])
        w.retire([0, 4])
        w.commit()
    assert engine.refresh()
    assert engine.count(kenya) == 8
    stored = Collection.open(path).snapshot().load_vectors()
    ids, vs = stored
    allowed = {int(i) for i in ids if int(i) % 4 == 0}
    r = engine.search(vector=vecs[24], k=6, filters=kenya)
    sims = vs @ vecs[24]
    expected = [int(ids[j]) for j in np.argsort(-sims) if int(ids[j]) in allowed][:6]
    assert [h.id for h in r.hits] == expected and 24 in expected and 0 not in expected
    # knn ignores retired ids in an allowed set
    _, got = engine.knn(vecs[:1], 3, allowed_ids=np.array([4, 0, 8, 12]))
    assert set(got[0].tolist()) == {8, 12, -1}
    # the vector lookup (one gather per segment) equals the stored vectors, in the asked order
    want = np.array([33, 1, 25, 2, 39])
    by_row = {int(i): v for i, v in zip(ids, vs)}
    by_row.update({i: vecs[i] for i in (0, 4)})  # retired, still stored
    np.testing.assert_allclose(engine.vectors(want), np.stack([by_row[int(i)] for i in want]), atol=1e-3)
    with pytest.raises(KeyError):
        engine.vectors(np.array([1, 1000]))
    with pytest.raises(QueryError, match="no longer in this collection"):
        engine.similar(4)


def test_browse_lists_filtered_images_in_id_order(engine):
    r = engine.browse({"country": "Sweden"}, k=5, offset=2)
    assert [h.id for h in r.hits] == [10, 14, 18, 22, 26] and r.candidates == N // 4 and r.has_more
    assert engine.browse(k=3).candidates == N


def test_the_served_metadata_is_compressed_sorted_by_taxonomy_and_filtered_exactly(tmp_path, model):
    """The engine's table lives in a compressed in-memory database, rows in taxonomy order; a
    case-blind filter on a rank compares the stored spellings exactly, and a generation that adds
    a new spelling or a new genus is filtered with its own lists of values."""
    path = tmp_path / "col"
    c = Collection.create(path, model.describe(), dimension=model.dimension)
    vecs = unit(np.random.default_rng(2).standard_normal((60, model.dimension)))
    with c.writer() as w:
        w.add(rows_for(0, 30), vecs[:30])
        w.commit()
    engine = SearchEngine.open(path, model=model, refresh_interval=None)
    state = engine._served()
    cur = state.cursor()
    assert cur.execute("SELECT current_database()").fetchall() == [("meta",)]
    cols = ", ".join(f'"{c}"' for c in ROW_ORDER)
    got = cur.execute(f"SELECT {cols} FROM images").fetchall()
    key = [tuple("\uffff" if v is None else v for v in r) for r in got]  # nulls last
    assert key == sorted(key) and len(key) == 30
    sql, params, _ = state.filter_sql(Filter.where("genus", "=", "CORVUS"))
    assert "lower(" not in sql and params == ["Corvus"]
    corvus = [i for i in range(30) if (TAXA[4] if i % 9 == 0 else TAXA[i % len(TAXA)])[5] == "Corvus"]
    assert list(engine.selected_ids({"genus": "corvus"})) == corvus
    assert list(engine.selected_ids({"taxon": "Corvus corax"})) == [i for i in corvus if i % 6 == 0 and i % 9]
    extra = rows_for(30, 30)
    genus = extra.column("genus").to_pylist()
    genus[0], genus[1] = "CORVUS", "Nucifraga"  # another spelling of a listed value, and a new value
    extra = extra.set_column(extra.schema.get_field_index("genus"), "genus", pa.array(genus))
    with c.writer() as w:
        w.add(extra, vecs[30:])
        w.commit()
    assert engine.refresh()
    assert list(engine.selected_ids({"genus": "Corvus"})) == sorted(
        corvus + [30] + [i for i in range(32, 60) if genus[i - 30] == "Corvus"]
    )
    assert list(engine.selected_ids({"genus": "nucifraga"})) == [31]
