"""search_ui's logic (URL state, searching, facets, export, taxa, the collection page), tested without Streamlit."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from test_app_fixtures import build_app_collection, picture, picture_bytes

from indexer.errors import QueryError
from indexer.search.engine import Hit
from search_ui import args, export, hit_fields, overview, searching, sidebar, taxa, upload
from search_ui.state import BrowseState
from search_ui.upload import UploadError


@pytest.fixture(scope="module")
def coll(tmp_path_factory, tiny_model_dir):
    return build_app_collection(tmp_path_factory.mktemp("browse"), tiny_model_dir)


@pytest.fixture(scope="module")
def engine(coll):
    from indexer.search.engine import SearchEngine

    return SearchEngine.open(coll.path, device="cpu")


def by_catalog(engine, number: str) -> Hit:
    (hit,) = [h for h in engine.get(range(engine.info()["images"])) if h.metadata["catalogNumber"] == number]
    return hit


# -- arguments ----------------------------------------------------------------------------


def test_app_args_from_argv_and_environment():
    assert args.parse_app_args(["/a", "/b", "--device", "cuda"], {}) == args.AppArgs(("/a", "/b"), "cuda")
    assert args.parse_app_args(["/a", "--device=mps"], {}).device == "mps"
    assert args.parse_app_args([], {}).collections == ()
    env = {"BIOCLIP_SEARCH_COLLECTIONS": os.pathsep.join(["/x", "", "/y"]), "BIOCLIP_SEARCH_DEVICE": "cpu"}
    # the environment wins over the arguments (a test runner's own arguments are no collections)
    assert args.parse_app_args(["tests/test_app.py", "-q"], env) == args.AppArgs(("/x", "/y"), "cpu")
    assert args.parse_app_args(["/a"], {"BIOCLIP_SEARCH_COLLECTIONS": ""}).collections == ()


def test_collection_labels_are_short_and_unique():
    assert args.collection_labels(["/d/birds.coll", "/e/fish.coll"]) == {
        "/d/birds.coll": "birds.coll",
        "/e/fish.coll": "fish.coll",
    }
    labels = args.collection_labels(["/d/x.coll", "/e/x.coll/"])
    assert len(set(labels.values())) == 2


def test_faiss_threads_are_capped():
    import faiss

    assert args.configure_threads(1) == 1
    assert faiss.omp_get_max_threads() == 1
    assert args.configure_threads() >= 1


# -- state and URL ------------------------------------------------------------------------

AWKWARD = [
    'Côte d\'Ivoire & "Co" = #1 + 50% ?',
    "a&b=c",
    "  spaced  out ",
    "日本語 / ελληνικά",
    "comma, separated",
    "plus+plus",
    "percent %20 %%",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_url_round_trip_keeps_every_value(text):
    state = BrowseState(q=text).with_values("country", [text, "Kenya"]).with_values("family", ["Corvidae"])
    state = replace(
        state, year=(1900, 1950), coords=True, k=500, page=3, view="table", detail=7, collection="birds & fish"
    )
    back, notices = BrowseState.from_query_string(state.query_string())
    assert notices == []
    assert back == state
    # the same through a mapping of lists, as st.query_params.get_all gives it
    back2, _ = BrowseState.from_params(state.to_params())
    assert back2 == state


def test_url_parameters_are_one_per_filter():
    state = BrowseState(q="corvus").with_values("country", ["Kenya", "Norway"]).with_values("license", ["CC0-1.0"])
    state = replace(state, year=(None, 1950), coords=False)
    assert state.to_params() == {
        "q": ["corvus"],
        "country": ["Kenya", "Norway"],
        "license": ["CC0-1.0"],
        "year": ["..1950"],
        "has_coordinates": ["false"],
    }
    assert (
        state.query_string()
        == "q=corvus&country=Kenya&country=Norway&license=CC0-1.0&year=..1950&has_coordinates=false"
    )


def test_more_like_this_and_uploads_in_the_url():
    assert BrowseState().more_like(42).to_params() == {"like": ["42"]}
    state, notices = BrowseState.from_query_string("like=42&q=ignored")
    assert state.mode == "like" and state.like == (42,) and state.q == ""
    assert notices == ["ignored q='ignored': a link searches by words or by an image, not both"]
    # an uploaded photo is in the URL by its key in the collection's cache, with its filters
    key = "0123456789abcdef0123456789abcdef"
    up = BrowseState(q="x").with_values("country", ["Kenya"]).with_photo(key)
    assert up.to_params() == {"photo": [key], "country": ["Kenya"]} and up.q == ""
    assert BrowseState.from_params(up.to_params())[0] == up
    assert BrowseState.from_query_string("photo=../../etc")[1] == ["ignored photo='../../etc': not the key of a photo"]


def test_bad_url_values_are_dropped_with_a_notice():
    state, notices = BrowseState.from_query_string(
        "like=abc&year=soon&has_coordinates=maybe&k=-3&page=0&view=3d&q=ok&tab=nope&unknown=1"
    )
    assert state == BrowseState(q="ok")
    assert len(notices) == 7
    assert any("like" in n for n in notices) and any("year" in n for n in notices)


@pytest.mark.parametrize("raw, k", [("5", 50), ("50", 50), ("51", 100), ("999", 1000), ("5000", 1000)])
def test_k_in_the_url_becomes_a_choice_the_page_offers(raw, k):
    state, notices = BrowseState.from_params({"k": raw})
    assert notices == [] and state.k == k


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("1900..1950", (1900, 1950)),
        ("1950..1900", (1900, 1950)),
        ("1900..", (1900, None)),
        ("..1950", (None, 1950)),
        ("1931", (1931, 1931)),
    ],
)
def test_year_forms(raw, expected):
    state, notices = BrowseState.from_params({"year": raw})
    assert notices == [] and state.year == expected


def test_a_filter_change_goes_back_to_page_one():
    state = replace(BrowseState(), page=4)
    assert state.with_values("country", ["Kenya"]).page == 1
    assert state.with_values("country", []).values == ()


def test_state_to_filter_selects_what_it_says(engine):
    state = BrowseState().with_values("country", ["Kenya"]).with_values("family", ["Corvidae", "Canidae"])
    state = replace(state, year=(1900, 2000), coords=True)
    result = searching.run_search(engine, state)
    assert result.hits
    for h in result.hits:
        m = h.metadata
        assert m["country"] == "Kenya" and m["family"] in ("Corvidae", "Canidae")
        assert 1900 <= m["year"] <= 2000 and m["decimalLatitude"] is not None
    everything = engine.get(range(12))
    expected = [
        h
        for h in everything
        if h.metadata["country"] == "Kenya"
        and h.metadata["family"] in ("Corvidae", "Canidae")
        and 1900 <= h.metadata["year"] <= 2000
        and h.metadata["decimalLatitude"] is not None
    ]
    assert sorted(h.id for h in result.hits) == sorted(h.id for h in expected)
    assert result.candidates == len(expected)


def test_species_filter_and_values_with_quotes(engine):
    state = BrowseState().with_values("species", ["Rosa canina"])
    hits = searching.run_search(engine, state).hits
    assert len(hits) == 3 and {h.metadata["genus"] for h in hits} == {"Rosa"}
    state = BrowseState().with_values("collectionCode", ['PLANTS & "SEEDS"'])
    assert len(searching.run_search(engine, state).hits) == 3
    state = BrowseState().with_values("country", ["Côte d'Ivoire"])
    assert len(searching.run_search(engine, state).hits) == 4


# -- searching ----------------------------------------------------------------------------


def test_search_modes(engine, coll):
    target = by_catalog(engine, "MUS-005")
    vec = engine.embed_image(coll.image_path(5))
    photo = BrowseState().with_photo("0" * 32)
    result = searching.run_search(engine, photo, image_vector=vec, image_name="me.png")
    assert result.hits[0].id == target.id
    assert result.interpretation == "images similar to the uploaded picture me.png"

    result = searching.run_search(engine, BrowseState().more_like(target.id))
    assert target.id not in [h.id for h in result.hits]
    assert str(target.id) in result.interpretation

    result = searching.run_search(engine, BrowseState(q="Corvidae"))
    assert result.interpretation.startswith("family Corvidae")

    listing = searching.run_search(engine, BrowseState())
    assert [h.id for h in listing.hits] == list(range(12)) and listing.candidates == 12

    with pytest.raises(QueryError):
        searching.run_search(engine, photo)
    with pytest.raises(QueryError, match="no image with id"):
        searching.run_search(engine, BrowseState().more_like(12345))


def test_empty_results_say_why(engine):
    state = BrowseState(q="Corvidae").with_values("country", ["Atlantis"])
    result = searching.run_search(engine, state)
    assert result.hits == [] and "no image matches the filters" in result.notices
    listing = searching.run_search(engine, BrowseState().with_values("species", ["Nonexistus fictus"]))
    assert listing.hits == [] and any("does not occur" in n for n in listing.notices)


def test_suggestions_come_from_the_collection(engine):
    names = [m.name for m in searching.suggest_taxa(engine, "co")]
    assert "Corvidae" in names and "Corvus" in names and "Corvus corax" in names
    assert searching.suggest_taxa(engine, "Corvidae") == []  # already a taxon
    assert searching.suggest_taxa(engine, "") == []
    (m,) = [m for m in searching.suggest_taxa(engine, "red") if m.rank == "species"]
    assert searching.describe_taxon(m) == "Vulpes vulpes (red fox) · species · 3 images"


# -- what results show ------------------------------------------------------------------


def test_cards_facets_chart_and_map(engine):
    hits = engine.get(range(12))
    card = hit_fields.card_fields(by_catalog(engine, "MUS-000"))
    assert card["name"] == "Corvus corax" and card["rank"] == "species" and card["catalogNumber"] == "MUS-000"
    assert card["institution"] == "NHM" and card["date"] == "1900-05-01" and card["file"] == "img_00.png"
    assert hit_fields.card_fields(hits[0], scored=False)["score"] is None

    facets = searching.result_facets(hits)
    assert facets["country"] == {"Kenya": 4, "Norway": 4, "Côte d'Ivoire": 4}
    assert facets["family"] == {"Corvidae": 6, "Canidae": 3, "Rosaceae": 3}
    assert facets["species"]["Pica pica"] == 3
    assert sum(facets["license"].values()) == 12

    assert searching.taxa_counts(hits, "family")[0] == ("Corvidae", 6)
    assert searching.taxa_counts(hits, "kingdom") == [("Animalia", 9), ("Plantae", 3)]
    points = searching.map_points(hits)
    assert len(points) == 8 and all({"lat", "lon", "id", "name"} <= set(p) for p in points)
    bad = Hit(1, 0.0, "/x", {"decimalLatitude": 95.0, "decimalLongitude": 10.0})
    assert searching.map_points([bad]) == []
    rows = hit_fields.result_rows(hits[:2])
    assert set(rows[0]) >= {
        "id",
        "score",
        "scientificName",
        "rank",
        "catalogNumber",
        "institutionCode",
        "date",
        "media",
    }


def test_facet_counts_of_a_filter_in_use_ignore_that_filter(engine):
    state = BrowseState().with_values("country", ["Kenya"])
    result = searching.run_search(engine, state)
    counts = searching.facet_counts(engine, state, result.hits)
    assert counts["country"] == {"Kenya": 4, "Norway": 4, "Côte d'Ivoire": 4}
    assert counts["license"] == {"CC0-1.0": 4}  # among the Kenya results
    assert searching.facet_counts(engine, BrowseState(), result.hits)["country"] == {"Kenya": 4}


def test_hit_rank_without_a_species():
    hit = Hit(1, 0.0, "/x", {"family": "Corvidae", "genus": None})
    assert hit_fields.hit_rank(hit) == "family"
    assert hit_fields.hit_rank(Hit(1, 0.0, "/x", {"taxonRank": "Genus"})) == "genus"
    assert hit_fields.hit_rank(Hit(1, 0.0, "/x", {"scientificName": "Corvus corax Linnaeus, 1758"})) == "species"


def test_detail_fields_and_source_link(engine):
    hit = by_catalog(engine, "MUS-000")
    fields = dict(hit_fields.detail_fields(hit))
    names = [k for k, _ in hit_fields.detail_fields(hit)]
    assert names[0] == "scientificName" and names.index("license") < names.index("location")
    assert fields["rightsHolder"] == "Test Museum" and fields["notes"] == "note for image 0"
    assert "meta_hash" not in fields and "extra" not in fields
    assert hit_fields.source_record_url(hit) == "https://example.org/record/0"
    assert hit_fields.source_record_url(by_catalog(engine, "MUS-002")) == "https://example.org/occurrence/2"
    assert hit_fields.source_record_url(by_catalog(engine, "MUS-001")) is None  # a urn is shown, not linked
    assert hit_fields.source_record_url(Hit(1, 0, "/x", {"references": "javascript:alert(1)"})) is None


def test_other_images_of_the_same_specimen(engine):
    first = by_catalog(engine, "MUS-000")
    others = engine.records_of(first)
    assert [h.metadata["catalogNumber"] for h in others] == ["MUS-004"]


@pytest.mark.parametrize(
    "n, page, expected",
    [
        (0, 1, (0, 0, 1, 1)),
        (50, 1, (0, 24, 1, 3)),
        (50, 3, (48, 50, 3, 3)),
        (50, 9, (48, 50, 3, 3)),
        (24, 0, (0, 24, 1, 1)),
    ],
)
def test_page_bounds(n, page, expected):
    assert searching.page_bounds(n, page) == expected


# -- export -------------------------------------------------------------------------------


def read_export(data: bytes) -> list[dict]:
    """The export as any CSV reader sees it (no comment lines to skip)."""
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def test_export_is_a_plain_csv_with_the_record_and_the_search_in_columns(engine):
    state = BrowseState(q="Corvidae").with_values("country", ["Kenya", "Côte d'Ivoire"])
    state = replace(state, year=(1900, None))
    result = searching.run_search(engine, state)
    data = export.export_csv(
        result.hits,
        state,
        collection="/c/app.coll",
        interpretation=result.interpretation,
        now=dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
    )
    text = data.decode("utf-8")
    assert text.splitlines()[0] == ",".join(export.EXPORT_COLUMNS) and "\n#" not in text
    rows = read_export(data)
    assert list(rows[0]) == list(export.EXPORT_COLUMNS)
    assert {"institutionCode", "country", "year", "rank", "vernacularName"} <= set(export.EXPORT_COLUMNS)
    assert [int(r["id"]) for r in rows] == [h.id for h in result.hits]
    first = result.hits[0]
    assert rows[0]["scientificName"] == first.scientific_name
    assert rows[0]["catalogNumber"] == first.metadata["catalogNumber"]
    assert rows[0]["institutionCode"] == (first.metadata.get("institutionCode") or "")
    assert rows[0]["country"] in ("Kenya", "Côte d'Ivoire")
    assert rows[0]["year"] == str(first.metadata["year"])
    assert rows[0]["rank"] == hit_fields.hit_rank(first)
    assert rows[0]["vernacularName"] == (first.metadata.get("vernacularName") or "")
    assert rows[0]["media"] == first.location
    assert float(rows[0]["score"]) == pytest.approx(first.score, abs=1e-6)
    for r in rows:  # the search, in every row
        assert r["collection"] == "/c/app.coll" and r["query"] == "text: Corvidae"
        assert r["filters"] == "country: Kenya or Côte d'Ivoire; year: 1900–…"
        assert r["understood_as"] == result.interpretation
        assert r["exported_at"] == "2024-01-02T03:04:05+00:00"
    # reopening the link gives the same state
    reopened, _ = BrowseState.from_query_string(rows[0]["search_link"][1:])
    assert reopened == state


def test_export_neutralises_spreadsheet_formulas_and_keeps_awkward_text():
    hits = [
        Hit(
            1,
            0.5,
            "/x/a.png",
            {
                "scientificName": '=HYPERLINK("http://evil")',
                "catalogNumber": "-1.5",
                "occurrenceID": 'a,"b"\nc',
                "license": "@x",
            },
        ),
    ]
    state = BrowseState(q='line\nbreak "quoted"')
    rows = read_export(export.export_csv(hits, state))
    assert rows[0]["query"] == 'text: line break "quoted"'
    assert rows[0]["scientificName"].startswith("'=")
    assert rows[0]["catalogNumber"] == "-1.5"
    assert rows[0]["occurrenceID"] == 'a,"b"\nc'
    assert rows[0]["license"] == "'@x"


def test_export_of_a_listing_has_no_scores(engine):
    state = BrowseState().with_values("family", ["Canidae"])
    result = searching.run_search(engine, state)
    rows = read_export(export.export_csv(result.hits, state))
    assert len(rows) == 3 and {r["score"] for r in rows} == {""}


# -- uploads ------------------------------------------------------------------------------


def encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    picture(1, (300, 240)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_uploads_of_accepted_kinds(fmt):
    data = encoded(fmt)
    assert upload.read_upload("p.any", data) == data


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, I am text pretending to be a picture", "not a picture"),
        (b"%PDF-1.4\n...", "not a picture"),
        (None, "is a GIF image"),
        ("truncated", "cannot be read"),
    ],
)
def test_bad_uploads_are_refused_with_a_message(data, message):
    if data is None:
        data = encoded("GIF")
    elif data == "truncated":
        data = encoded("PNG")[:200]
    with pytest.raises(UploadError, match=message):
        upload.read_upload("photo.jpg", data)


def test_too_large_uploads_are_refused(monkeypatch):
    data = encoded("PNG")
    with pytest.raises(UploadError, match="up to"):
        upload.read_upload("big.png", data, max_bytes=100)
    monkeypatch.setattr(upload, "MAX_UPLOAD_BYTES", 100)
    with pytest.raises(UploadError, match="big.png is 0.0 MB; pictures up to 0.0 MB"):
        upload.read_upload("big.png", data)
    assert issubclass(UploadError, QueryError)


def test_uploads_with_too_many_pixels_are_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(upload, "MAX_UPLOAD_PIXELS", 10_000)
    with pytest.raises(UploadError, match="300 x 240 pixels"):
        upload.read_upload("wide.png", encoded("PNG"))


# -- sidebar options ------------------------------------------------------------------


def test_facet_catalog(engine):
    cat = sidebar.FacetCatalog(engine)
    assert cat.options("country") == [("Côte d'Ivoire", 4), ("Kenya", 4), ("Norway", 4)]
    assert cat.options("family")[0] == ("Corvidae", 6)
    assert ("Corvus corax", 3) in cat.options("species")
    assert cat.ranks() == list(searching.RANKS)
    assert cat.year_range() == (1900, 2010)
    assert cat.has_coordinates() == 8


# -- most likely taxa ------------------------------------------------------------------


def test_most_likely_taxa_sum_species_scores_at_every_rank_from_one_set_of_labels(engine, coll, monkeypatch):
    from bioclip.zeroshot import ZeroShotClassifier

    calls = []
    original = ZeroShotClassifier._embed_labels
    monkeypatch.setattr(
        ZeroShotClassifier, "_embed_labels", lambda self: calls.append(len(self.labels)) or original(self)
    )
    predictor = taxa.TaxaPredictor(engine)
    vec = engine.embed_image(coll.image_path(0))
    species = predictor.predict(vec, "species", k=10)
    assert [t.rank for t in species] == ["species"] * 4
    assert {t.name for t in species} == {"Corvus corax", "Pica pica", "Vulpes vulpes", "Rosa canina"}
    assert sum(t.score for t in species) == pytest.approx(1.0)
    assert species == sorted(species, key=lambda t: -t.score)
    by_name = {t.name: t.score for t in species}
    families = predictor.predict(vec[0], "family", k=10)
    assert all(t.rank == "family" for t in families)
    # pybioclip's method: a family's score is the sum of its species' scores (no family-name labels)
    assert {t.name: t.score for t in families}["Corvidae"] == pytest.approx(
        by_name["Corvus corax"] + by_name["Pica pica"]
    )
    assert sum(t.score for t in families) == pytest.approx(1.0)
    kingdoms = predictor.predict(vec, "kingdom", k=1)
    assert kingdoms[0].score == pytest.approx(max(by_name["Rosa canina"], 1 - by_name["Rosa canina"]))
    assert calls == [4] and predictor.builds == 1  # the species' embeddings serve every rank
    predictor.predict(vec, "genus")
    assert calls == [4] and predictor.coverage() is None
    with pytest.raises(QueryError):
        predictor.predict(vec, "subspecies")


def test_most_likely_taxa_say_when_they_rank_only_part_of_the_species(engine, coll):
    predictor = taxa.TaxaPredictor(engine, max_labels=2)
    vec = engine.embed_image(coll.image_path(0))
    assert len(predictor.predict(vec, "species", k=10)) == 2
    assert predictor.coverage() == "Ranked among the 2 species with most images, of the collection's 4."


def test_most_likely_taxa_are_rebuilt_for_a_new_generation(tmp_path, tiny_model_dir):
    from indexer.build import BuildOptions, build
    from indexer.build.sources import FolderSource
    from indexer.search.engine import SearchEngine

    c = build_app_collection(tmp_path, tiny_model_dir, n=4)
    engine = SearchEngine.open(c.path, device="cpu", refresh_interval=None)
    predictor = taxa.TaxaPredictor(engine)
    vec = engine.embed_image(c.image_path(0))
    assert len(predictor.predict(vec, "species", k=10)) == 4
    Image.new("RGB", (64, 64), (1, 2, 3)).save(c.images / "other" / "new.png")
    build(
        c.path,
        [FolderSource(c.images, labels=c.labels)],
        model_name=c.model_source,
        device="cpu",
        options=BuildOptions(build_index=False, workers=0),
    )
    assert engine.refresh()
    predictor.predict(vec, "species")
    assert predictor.builds == 2


# -- collection page -------------------------------------------------------------------


def test_collection_overview(engine, coll):
    o = overview.collection_overview(engine)
    assert o["images"] == 12 and o["failures"] == 1
    assert o["failures_by_reason"] == [("not-an-image", 1)]
    assert o["model"] == coll.model_source and o["dimension"] == 64
    assert [r[0] for r in o["ranks"]] == list(searching.RANKS)
    assert {r: n for r, n, _ in o["ranks"]}["family"] == 12
    assert o["sources"] == [(str(coll.images), 12)]
    assert o["index"]
    assert "revision" in o and "preprocess" in o
    if o["index"] != "Flat (exact, no index file)":  # an ANN index was built: its recall is shown
        assert o["recall"] is not None and o["recall_target"] == 0.95


def test_the_collection_page_shows_recall_per_query_kind_with_its_queries(engine):
    o = overview.collection_overview(engine)
    assert [r["kind"] for r in o["kinds"]] == ["image", "text", "mixed"]
    for row in o["kinds"]:  # never a figure without the queries it was measured on
        assert row["recall"] == "not measured" or row["queries"] not in ("", "none", "not recorded")


def test_image_upload_of_the_model_itself(engine, coll):
    """An image searched by its own pixels comes back first (the property every app test uses)."""
    for i in (0, 3, 7, 11):
        hits = engine.search(image=picture_bytes(i), k=1).hits
        assert hits[0].metadata["catalogNumber"] == f"MUS-{i:03d}"
    assert np.isclose(engine.search(image=picture_bytes(2), k=1).hits[0].score, 1.0, atol=1e-3)
