"""End to end: a Darwin Core Archive whose multimedia rows point at a local HTTP server.

The server (127.0.0.1, started and stopped by the test) serves real photos from the built-in sample
collection. The archive is indexed with the tiny model through ``bioclip-index build``, then
searched by a taxon that occurs in it: the right specimens come first, with their catalogNumber
and license in the hits. A failing download is recorded with its URL and HTTP status.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import shutil
import threading
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from indexer.cli import index as index_cli
from indexer.cli import search as search_cli
from indexer.search.engine import SearchEngine
from indexer.search.filters import Condition, Filter

SAMPLE = Path(__file__).resolve().parents[1] / "indexer" / "sample"
DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"

# (occurrence id, catalogNumber, sample image, license of the image)
SPECIMENS = [
    ("occ-1", "NHMUK 1001", "cats/pybioclip_mycat.jpg", "CC-BY-4.0"),
    ("occ-2", "NHMUK 1002", "cats/skimage_chelsea.png", "CC0-1.0"),
    ("occ-3", "NHMUK 2001", "cameratrap/ocelot.jpg", "CC-BY-NC-4.0"),
    ("occ-4", "NHMUK 3001", "cameratrap/american_black_bear.jpg", "CC-BY-4.0"),
    ("occ-5", "NHMUK 4001", "cameratrap/domestic_dog.jpg", "CC-BY-4.0"),
]
LINEAGE = {
    "occ-1": ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Felis", "catus", "Felis catus"),
    "occ-2": ("Animalia", "Chordata", "Mammalia", "Carnivora", "Felidae", "Felis", "catus", "Felis catus"),
    "occ-3": (
        "Animalia",
        "Chordata",
        "Mammalia",
        "Carnivora",
        "Felidae",
        "Leopardus",
        "pardalis",
        "Leopardus pardalis",
    ),
    "occ-4": ("Animalia", "Chordata", "Mammalia", "Carnivora", "Ursidae", "Ursus", "americanus", "Ursus americanus"),
    "occ-5": ("Animalia", "Chordata", "Mammalia", "Carnivora", "Canidae", "Canis", "familiaris", "Canis familiaris"),
}


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def media_server(tmp_path):
    root = tmp_path / "media"
    for _, _, rel, _ in SPECIMENS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / "images" / rel, root / rel)
    handler = lambda *a, **k: _Handler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _archive(path: Path, base_url: str) -> Path:
    occ_terms = [
        "catalogNumber",
        "institutionCode",
        "basisOfRecord",
        "kingdom",
        "phylum",
        "class",
        "order",
        "family",
        "genus",
        "specificEpithet",
        "scientificName",
        "country",
        "year",
    ]
    occ = io.StringIO()
    w = csv.writer(occ, delimiter="\t", lineterminator="\n")
    w.writerow(["id", *occ_terms])
    for oid, cat, _, _ in SPECIMENS:
        k, p, c, o, f, g, s, name = LINEAGE[oid]
        w.writerow([oid, cat, "NHMUK", "PreservedSpecimen", k, p, c, o, f, g, s, name, "Kenya", "1950"])
    mm = io.StringIO()
    w = csv.writer(mm, delimiter="\t", lineterminator="\n")
    w.writerow(["coreid", "identifier", "format", "license", "rightsHolder"])
    for oid, _, rel, lic in SPECIMENS:
        fmt = "image/png" if rel.endswith(".png") else "image/jpeg"
        w.writerow([oid, f"{base_url}/{rel}", fmt, lic, "Natural History Museum"])
    # one media row whose image is missing on the server: a recorded failure, not a crash
    w.writerow(["occ-5", f"{base_url}/missing/nothing.jpg", "image/jpeg", "CC-BY-4.0", "NHM"])
    core_fields = "".join(f'<field index="{i + 1}" term="{DWC}{t}"/>' for i, t in enumerate(occ_terms))
    meta = (
        '<?xml version="1.0" encoding="UTF-8"?><archive xmlns="http://rs.tdwg.org/dwc/text/">'
        f'<core encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1" '
        f'rowType="{DWC}Occurrence"><files><location>occurrence.txt</location></files><id index="0"/>{core_fields}</core>'
        f'<extension encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1" '
        f'rowType="http://rs.gbif.org/terms/1.0/Multimedia"><files><location>multimedia.txt</location></files><coreid index="0"/>'
        f'<field index="1" term="{DC}identifier"/><field index="2" term="{DC}format"/>'
        f'<field index="3" term="{DC}license"/><field index="4" term="{DC}rightsHolder"/></extension></archive>'
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("meta.xml", meta)
        z.writestr("occurrence.txt", occ.getvalue())
        z.writestr("multimedia.txt", mm.getvalue())
    return path


def test_dwca_with_remote_media_indexes_and_finds_the_right_specimens(tmp_path, media_server, tiny_model_source):
    archive = _archive(tmp_path / "export.zip", media_server)
    col = tmp_path / "museum.collection"
    run = CliRunner().invoke(
        index_cli.main,
        ["build", str(archive), "--out", str(col), "--model", tiny_model_source, "--device", "cpu", "--workers", "0"],
    )
    assert run.exit_code == 0, run.output
    assert "encoded" in run.output

    engine = SearchEngine.open(col)
    info = engine.info()
    assert info["images"] == 5 and info["failures"] == 1
    assert info["failures_by_reason"] == {"http-404": 1}
    failure = engine.failures()[0]
    assert failure["location"].endswith("/missing/nothing.jpg") and failure["reason"] == "http-404"

    # A taxon query (family Felidae) restricted to that taxon: exactly the three cat specimens.
    result = engine.search("Felidae", k=5, filters=Filter.of(Condition("taxon", "=", "Felidae")))
    assert "family Felidae" in result.interpretation
    assert {h.get("catalogNumber") for h in result.hits} == {"NHMUK 1001", "NHMUK 1002", "NHMUK 2001"}
    for h in result.hits:
        assert h.get("license") and h.get("mediaURL", "").startswith(media_server)
    # By the species' common rank name, case-insensitive: the Felis catus specimens.
    result = engine.search("felis catus", k=5, filters=Filter.of(Condition("taxon", "=", "felis catus")))
    assert sorted(h.get("catalogNumber") for h in result.hits) == ["NHMUK 1001", "NHMUK 1002"]
    # The image of each specimen, searched by its pixels, finds that specimen first.
    for _oid, cat, rel, lic in SPECIMENS:
        hit = engine.search(image=SAMPLE / "images" / rel, k=1).hits[0]
        assert (hit.get("catalogNumber"), hit.get("license")) == (cat, lic)

    # Through the CLI too, as JSON.
    out = CliRunner().invoke(search_cli.main, [str(col), "Ursidae", "--taxon", "Ursidae", "--json"])
    assert out.exit_code == 0, out.output
    hits = json.loads(out.stdout)["hits"]
    assert [h["catalogNumber"] for h in hits] == ["NHMUK 3001"] and hits[0]["license"] == "CC-BY-4.0"

    # A second run downloads nothing again (cache) and encodes nothing.
    again = CliRunner().invoke(index_cli.main, ["build", str(archive), "--out", str(col), "--workers", "0", "--json"])
    assert again.exit_code == 0, again.output
    report = json.loads(again.stdout)
    assert report["encoded"] == 0 and report["unchanged"] == 5
