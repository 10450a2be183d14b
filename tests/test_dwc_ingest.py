"""Darwin Core values normalised at ingest, originals kept: built end to end through
``bioclip-index build`` from exports shaped like the real ones (tests/dwc_exports.py), media served
by a local HTTP server, then searched through the engine and ``bioclip-search``.

One spelling per value whoever published it: basisOfRecord (GBIF enumerations and Darwin Core
class names), licences (GBIF codes, Creative Commons URLs, names), countries (codes and names,
filled from each other), ranks and names (taxonRank honoured, epithets from scientificName); text
filters blind to case and accents; links (GBIF occurrence pages, Audubon Core's alternative URLs).
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from dwc_exports import gbif_dwca_download, gbif_simple_csv, symbiota_export

from indexer.build.sources.dwca import DwcaSource
from indexer.cli import index as index_cli
from indexer.cli import search as search_cli
from indexer.search.engine import SearchEngine
from search_ui.hit_fields import detail_fields, license_link, source_record_url

SAMPLE = Path(__file__).resolve().parents[1] / "indexer" / "sample" / "images"
IMAGES = [
    "cats/pybioclip_mycat.jpg",
    "cats/pybioclip_mycat.png",
    "cats/skimage_chelsea.png",
    "cameratrap/ocelot.jpg",
    "cameratrap/american_black_bear.jpg",
    "cameratrap/domestic_dog.jpg",
    "cameratrap/human.jpg",
    "cameratrap/domestic_cattle.jpg",
]

pytestmark = pytest.mark.slow


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    for rel in IMAGES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / rel, root / rel)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a, **k: _Quiet(*a, directory=str(root), **k))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _build(source, out, model, *extra):
    args = ["build", str(source), "--out", str(out), "--model", model, "--device", "cpu", "--workers", "0", *extra]
    return CliRunner().invoke(index_cli.main, args)


def _list(engine, where):
    result = engine.browse(list(where), k=50)
    return [h.get("catalogNumber") for h in result.hits]


# -- a GBIF Darwin Core Archive download ---------------------------------------------------------------

OCCURRENCES = [
    dict(
        gbifID="1001",
        datasetKey="7c2f5b8e",
        occurrenceID="urn:catalog:TEST:MAM:1",
        catalogNumber="T-1",
        institutionCode="TEST",
        basisOfRecord="PRESERVED_SPECIMEN",
        license="CC_BY_4_0",
        countryCode="US",
        locality="Río Grande valley",
        recordedBy="Tomás Gómez",
        scientificName="Felis catus Linnaeus, 1758",
        taxonRank="SPECIES",
        kingdom="Animalia",
        phylum="Chordata",
        **{"class": "Mammalia", "order": "Carnivora"},
        family="Felidae",
        genus="Felis",
        specificEpithet="catus",
        year="1950",
    ),
    dict(
        gbifID="1002",
        catalogNumber="T-2",
        basisOfRecord="HUMAN_OBSERVATION",
        license="CC_BY_NC_4_0",
        countryCode="KE",
        recordedBy="J. Smith",
        references="https://observations.example.org/2",
        scientificName="Leopardus pardalis (Linnaeus, 1758)",
        taxonRank="SPECIES",
        kingdom="Animalia",
        family="Felidae",
        genus="Leopardus",
        specificEpithet="pardalis",
    ),
    dict(
        gbifID="1003",
        catalogNumber="T-3",
        basisOfRecord="PRESERVED_SPECIMEN",
        license="CC0_1_0",
        countryCode="DE",
        recordedBy="Jürgen Ølsen",
        scientificName="Ursus americanus Pallas, 1780",
        taxonRank="SPECIES",
        kingdom="Animalia",
        family="Ursidae",
        genus="Ursus",
        specificEpithet="americanus",
    ),
    dict(
        gbifID="1004",
        catalogNumber="T-4",
        basisOfRecord="HUMAN_OBSERVATION",
        license="CC0_1_0",
        countryCode="US",
        scientificName="Canis familiaris Linnaeus, 1758",
        taxonRank="SPECIES",
        kingdom="Animalia",
        family="Canidae",
        genus="Canis",
        specificEpithet="familiaris",
    ),
]
VERBATIM = [
    dict(gbifID="1001", basisOfRecord="S", country="U.S.A.", scientificName="Felis catus L.", recordedBy="Tomás Gómez"),
    dict(gbifID="1002", basisOfRecord="HumanObservation", country="Kenya"),
    dict(gbifID="1003", basisOfRecord="Specimen", country="Deutschland"),
    dict(gbifID="1004", basisOfRecord="HumanObservation", country="USA"),
]


def _multimedia(base):
    # GBIF leaves media licences as the publisher wrote them
    return [
        dict(gbifID="1001", type="StillImage", format="image/jpeg", identifier=f"{base}/cats/pybioclip_mycat.jpg",
             license="http://creativecommons.org/licenses/by/4.0/"),
        dict(gbifID="1002", type="StillImage", format="image/jpeg", identifier=f"{base}/cameratrap/ocelot.jpg",
             license="CC BY-NC 4.0"),
        dict(gbifID="1003", type="StillImage", format="image/jpeg",
             identifier=f"{base}/cameratrap/american_black_bear.jpg",
             license="https://creativecommons.org/licenses/by/4.0/legalcode"),
        dict(gbifID="1004", type="StillImage", format="image/jpeg", identifier=f"{base}/cameratrap/domestic_dog.jpg"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def gbif(tmp_path_factory, server, tiny_model_source):
    tmp = tmp_path_factory.mktemp("gbif")
    archive = gbif_dwca_download(tmp / "0001234-260101120000000.zip", OCCURRENCES, VERBATIM, _multimedia(server))
    run = _build(archive, tmp / "gbif.collection", tiny_model_source)
    assert run.exit_code == 0, run.output
    return archive, tmp / "gbif.collection", run.output


def _by_catalog(engine):
    hits = engine.browse(k=50).hits
    return {h.get("catalogNumber"): h for h in hits}


def test_basis_of_record_is_one_value_whichever_spelling_the_filter_uses(gbif):
    _, col, output = gbif
    engine = SearchEngine.open(col)
    hits = _by_catalog(engine)
    assert {c: h.get("basisOfRecord") for c, h in hits.items()} == {
        "T-1": "PreservedSpecimen",
        "T-2": "HumanObservation",
        "T-3": "PreservedSpecimen",
        "T-4": "HumanObservation",
    }
    for spelling in ("HUMAN_OBSERVATION", "HumanObservation", "human observation"):
        assert sorted(_list(engine, [f"basisOfRecord={spelling}"])) == ["T-2", "T-4"], spelling
    assert engine.facet("basisOfRecord") == [("HumanObservation", 2), ("PreservedSpecimen", 2)]
    # what the publisher wrote is kept: GBIF's verbatim.txt says "S" for the first specimen
    assert json.loads(hits["T-1"].get("verbatim"))["basisOfRecord"] == "S"
    assert ("basisOfRecord", "PreservedSpecimen (as published: S)") in detail_fields(hits["T-1"])
    assert "values      basisOfRecord:" in output


def test_licences_are_one_canonical_short_form_with_their_page(gbif):
    _, col, _ = gbif
    engine = SearchEngine.open(col)
    # the License filter lists each licence once (a URL, a name and a legalcode URL of CC BY 4.0 are one)
    assert engine.facet("license") == [("CC-BY-4.0", 2), ("CC-BY-NC-4.0", 1)]
    hits = _by_catalog(engine)
    assert license_link(hits["T-2"]) == ("CC-BY-NC-4.0", "https://creativecommons.org/licenses/by-nc/4.0/")
    assert sorted(_list(engine, ["license=CC_BY_4_0"])) == ["T-1", "T-3"]  # GBIF's code finds it too
    # an image's licence is its own: the dog's media row has none, its record's CC0 stays the record's
    dog = hits["T-4"]
    assert dog.get("license") is None and json.loads(dog.get("extra"))["record:license"] == "CC0_1_0"


def test_the_app_lists_each_licence_once_links_it_and_has_a_country_filter(gbif, monkeypatch):
    """The Streamlit page on a GBIF download (which carries only countryCode, and licences in three
    spellings): one License choice per licence, a Country filter, the licence linked in the detail view."""
    from apptest_help import settle
    from streamlit.testing.v1 import AppTest

    _, col, _ = gbif
    monkeypatch.setenv("BIOCLIP_SEARCH_COLLECTIONS", str(col))
    monkeypatch.setenv("BIOCLIP_SEARCH_DEVICE", "cpu")
    app = str(Path(__file__).resolve().parents[1] / "search_ui" / "app.py")
    at = settle(AppTest.from_file(app, default_timeout=60).run())  # the collection opens in the background
    assert at.multiselect(key="w_f_license").options == ["CC-BY-4.0 · 2", "CC-BY-NC-4.0 · 1"]
    assert at.multiselect(key="w_f_country").options == ["United States · 2", "Germany · 1", "Kenya · 1"]
    ids = {h.get("catalogNumber"): h.id for h in SearchEngine.open(col).browse(k=9).hits}
    at = AppTest.from_file(app, default_timeout=60)
    at.query_params["detail"] = str(ids["T-3"])
    settle(at.run())
    assert any("[CC-BY-4.0](<https://creativecommons.org/licenses/by/4.0/>)" in m.value for m in at.markdown)
    assert [b.proto.url for b in at.get("link_button")][:1] == ["https://www.gbif.org/occurrence/1003"]


def test_a_record_licence_fills_in_for_an_image_only_when_asked(gbif):
    archive, _, _ = gbif
    rows = {r["recordID"]: r for b in DwcaSource(archive, record_license=True).scan() for r in b.to_pylist()}
    assert rows["1004"]["license"] == "CC0_1_0" and json.loads(rows["1004"]["extra"])["licenseFrom"] == "record"
    assert rows["1001"]["license"] == "http://creativecommons.org/licenses/by/4.0/"  # its own wins
    plain = {r["recordID"]: r for b in DwcaSource(archive).scan() for r in b.to_pylist()}
    assert plain["1004"]["license"] is None


def test_countries_are_filled_from_codes_and_filters_take_a_name_or_a_code(gbif):
    _, col, _ = gbif
    engine = SearchEngine.open(col)
    hits = _by_catalog(engine)
    assert {c: (h.get("country"), h.get("countryCode")) for c, h in hits.items()} == {
        "T-1": ("United States", "US"),
        "T-2": ("Kenya", "KE"),
        "T-3": ("Germany", "DE"),
        "T-4": ("United States", "US"),
    }
    for value in ("USA", "US", "United States", "united states of america", "U.S.A."):
        assert sorted(_list(engine, [f"country={value}"])) == ["T-1", "T-4"], value
    assert _list(engine, ["countryCode=Kenya"]) == ["T-2"]
    assert sorted(_list(engine, ["country!=US"])) == ["T-2", "T-3"]
    # the app's Country filter has values for a GBIF download (which carries only countryCode)
    assert dict(engine.facet("country")) == {"United States": 2, "Kenya": 1, "Germany": 1}
    assert json.loads(hits["T-3"].get("verbatim"))["country"] == "Deutschland"
    out = CliRunner().invoke(search_cli.main, [str(col), "a photo", "--where", "country=US", "--json"])
    assert out.exit_code == 0, out.output
    assert sorted(h["catalogNumber"] for h in json.loads(out.stdout)["hits"]) == ["T-1", "T-4"]


def test_text_filters_ignore_case_and_accents(gbif):
    _, col, _ = gbif
    engine = SearchEngine.open(col)
    assert _list(engine, ["recordedBy~tomas"]) == ["T-1"]
    assert _list(engine, ["recordedBy~TOMÁS GÓMEZ"]) == ["T-1"]
    assert _list(engine, ["recordedBy=tomas gomez"]) == ["T-1"]
    assert _list(engine, ["recordedBy~olsen"]) == ["T-3"]  # Ø is no combining accent, and folds too
    assert _list(engine, ["locality~rio grande"]) == ["T-1"]


def test_a_gbif_record_without_references_links_to_its_occurrence_page(gbif):
    _, col, _ = gbif
    hits = _by_catalog(SearchEngine.open(col))
    assert source_record_url(hits["T-1"]) == "https://www.gbif.org/occurrence/1001"
    assert json.loads(hits["T-1"].get("verbatim"))["references"] is None  # filled in, not published
    assert source_record_url(hits["T-2"]) == "https://observations.example.org/2"  # its own wins


def test_a_gbif_simple_csv_download_says_it_has_no_media_and_an_empty_build_fails(tmp_path, tiny_model_source):
    rows = [dict(gbifID="1", datasetKey="x", basisOfRecord="PRESERVED_SPECIMEN", countryCode="JP",
                 scientificName="Lactoria cornuta (Linnaeus, 1758)", mediaType="StillImage")]  # fmt: skip
    archive = gbif_simple_csv(tmp_path / "0004321-260101120000000.zip", rows)
    run = _build(archive, tmp_path / "c", tiny_model_source)
    assert run.exit_code == 1, run.output
    errors = [line for line in run.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "GBIF SIMPLE_CSV download" in errors[0] and "no media links" in errors[0]
    assert "--allow-empty" in errors[0] and "Traceback" not in run.output
    again = _build(archive, tmp_path / "c", tiny_model_source, "--allow-empty")
    assert again.exit_code == 0, again.output
    assert "SIMPLE_CSV" in again.output


# -- a Symbiota portal export -------------------------------------------------------------------------

SYMBIOTA = [
    dict(id="1", institutionCode="ASU", basisOfRecord="PreservedSpecimen", catalogNumber="ASU-1",
         scientificName="Felis catus", taxonRank="Species", kingdom="Animalia", family="Felidae", country="USA",
         recordedBy="María José Ñúñez"),
    dict(id="2", institutionCode="ASU", basisOfRecord="PreservedSpecimen", catalogNumber="ASU-2",
         scientificName="Felis catus", scientificNameAuthorship="Linnaeus, 1758", kingdom="Animalia",
         family="Felidae", country="United States"),
    dict(id="3", institutionCode="ASU", basisOfRecord="Specimen", catalogNumber="ASU-3",
         scientificName="Felis catus", kingdom="Animalia", family="Felidae", country="United States of America"),
    dict(id="4", institutionCode="ASU", basisOfRecord="PreservedSpecimen", catalogNumber="ASU-4",
         scientificName="Coleoptera", taxonRank="order", kingdom="Animalia", phylum="Arthropoda",
         **{"class": "Insecta"}, country="Mexico"),
    dict(id="5", institutionCode="ASU", basisOfRecord="PreservedSpecimen", catalogNumber="ASU-5",
         scientificName="Abies alba var. acutifolia", taxonRank="var.", kingdom="Plantae", family="Pinaceae",
         country="Canada"),
]  # fmt: skip


def _symbiota_media(base):
    # Symbiota's image export: identifier = accessURI = the original; the web and thumbnail versions beside it
    return [
        dict(coreid="1", identifier=f"{base}/missing/original-1.jpg", accessURI=f"{base}/missing/original-1.jpg",
             goodQualityAccessURI=f"{base}/cats/pybioclip_mycat.jpg", thumbnailAccessURI=f"{base}/cats/pybioclip_mycat.png",
             format="image/jpeg", type="StillImage", UsageTerms="CC BY-NC-SA 4.0",
             WebStatement="https://creativecommons.org/licenses/by-nc-sa/4.0/us/", Owner="ASU"),
        dict(coreid="2", accessURI=f"{base}/cats/skimage_chelsea.png", type="StillImage",
             UsageTerms="Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International"),
        dict(coreid="3", accessURI=f"{base}/cameratrap/ocelot.jpg", type="StillImage", rights="CC BY-NC-SA"),
        dict(coreid="4", accessURI=f"{base}/cameratrap/human.jpg", type="StillImage"),
        dict(coreid="5", accessURI=f"{base}/cameratrap/domestic_cattle.jpg", type="StillImage"),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def symbiota(tmp_path_factory, server, tiny_model_source):
    tmp = tmp_path_factory.mktemp("symbiota")
    archive = symbiota_export(tmp / "SEINet-ASU_DwC-A.zip", SYMBIOTA, _symbiota_media(server))
    run = _build(archive, tmp / "asu.collection", tiny_model_source)
    assert run.exit_code == 0, run.output
    return tmp / "asu.collection", run.output, server


def test_audubon_core_alternatives_are_used_when_access_uri_fails(symbiota):
    col, output, server = symbiota
    engine = SearchEngine.open(col)
    assert engine.info()["failures"] == 0
    hit = _by_catalog(engine)["ASU-1"]
    assert hit.location == f"{server}/cats/pybioclip_mycat.jpg"  # the good-quality version, recorded as such
    assert hit.get("mediaURL") == f"{server}/missing/original-1.jpg"  # the published URL
    assert "alternative 1 images read from their alternative URL" in output


def test_audubon_core_alternatives_under_a_media_root(tmp_path, tiny_model_source):
    """With --media-root the published URLs are read from a local copy: a missing original is
    replaced by the good-quality version's file there, recorded as such and counted."""
    media = tmp_path / "media"
    for rel in IMAGES:
        (media / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / rel, media / rel)
    base = "https://media.example.org"
    archive = symbiota_export(tmp_path / "SEINet-ASU_DwC-A.zip", SYMBIOTA, _symbiota_media(base))
    run = _build(archive, tmp_path / "c", tiny_model_source, "--media-root", f"{base}/={media}")
    assert run.exit_code == 0, run.output
    assert "failed      0" in run.output and "alternative 1 images read from their alternative URL" in run.output
    hit = _by_catalog(SearchEngine.open(tmp_path / "c"))["ASU-1"]
    assert hit.location == str(media / "cats" / "pybioclip_mycat.jpg")
    assert hit.get("mediaURL") == f"{base}/missing/original-1.jpg"


def test_symbiota_countries_are_one_value(symbiota):
    col, _, _ = symbiota
    engine = SearchEngine.open(col)
    assert dict(engine.facet("country")) == {"United States": 3, "Mexico": 1, "Canada": 1}
    assert sorted(_list(engine, ["countryCode=US"])) == ["ASU-1", "ASU-2", "ASU-3"]
    assert dict(engine.facet("license")) == {"CC-BY-NC-SA-4.0": 3}
    assert sorted(_list(engine, ["recordedBy~nunez"])) == ["ASU-1"]


def test_genus_and_epithet_come_from_a_binomial_and_ranks_are_counted(symbiota):
    col, output, _ = symbiota
    engine = SearchEngine.open(col)
    assert sorted(_list(engine, ["genus=Felis"])) == ["ASU-1", "ASU-2", "ASU-3"]
    assert sorted(_list(engine, ["taxon=Felis"])) == ["ASU-1", "ASU-2", "ASU-3"]
    ranks = engine.info()["ranks"]
    assert ranks["genus"]["images"] == 4 and ranks["species"]["images"] == 4  # Felis x3, Abies alba x1
    assert "values      names: " in output and "rows made consistent with scientificName and taxonRank (" in output


def test_a_uninomial_with_its_rank_is_that_rank_not_a_genus(symbiota):
    col, _, _ = symbiota
    engine = SearchEngine.open(col)
    beetle = _by_catalog(engine)["ASU-4"]
    assert (beetle.get("order"), beetle.get("genus")) == ("Coleoptera", None)
    assert [m.describe() for m in engine.resolve_taxon("Coleoptera")] == ["order Coleoptera"]
    assert [m.describe() for m in engine.resolve_taxon("Insecta Coleoptera")] == ["order Coleoptera"]
    assert _list(engine, ["taxon=Coleoptera"]) == ["ASU-4"]
    assert _list(engine, ["genus=Coleoptera"]) == []


def test_names_below_species_are_findable(symbiota):
    col, _, _ = symbiota
    engine = SearchEngine.open(col)
    (variety,) = engine.resolve_taxon("Abies alba var. acutifolia")
    assert (variety.rank, variety.name) == ("variety", "Abies alba var. acutifolia")
    assert [m.rank for m in engine.resolve_taxon("Abies alba acutifolia")] == ["variety"]
    assert _list(engine, ["taxon=Abies alba var. acutifolia"]) == ["ASU-5"]
    assert _list(engine, ["taxon=Abies alba"]) == ["ASU-5"]  # and its species holds it
    result = engine.search("Abies alba var. acutifolia", k=3)
    assert result.interpretation.startswith("variety Abies alba var. acutifolia")
    assert _by_catalog(engine)["ASU-5"].get("taxonRank") == "variety"
