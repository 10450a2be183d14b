"""Darwin Core Archives: descriptor handling, media extensions, and the quirks of real exports."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from indexer.build.sources.dwca import DwcaSource, parse_meta_xml
from indexer.errors import SourceError

DWC = "http://rs.tdwg.org/dwc/terms/"
DC = "http://purl.org/dc/terms/"
AC = "http://rs.tdwg.org/ac/terms/"
XMP = "http://ns.adobe.com/xap/1.0/rights/"
GBIF_MM = "http://rs.gbif.org/terms/1.0/Multimedia"
OCC = DWC + "Occurrence"


# -- building archives -------------------------------------------------------------------------


def entity(
    tag, row_type, files, fields, *, id_index=0, sep="\\t", quote="", header=1, encoding="UTF-8", extra_attrs=""
):
    """XML for a <core>/<extension>; ``fields`` is [(index or None, term, default or None)]."""
    locs = "".join(f"<location>{f}</location>" for f in files)
    id_tag = "id" if tag == "core" else "coreid"
    idx = f'<{id_tag} index="{id_index}"/>' if id_index is not None else ""
    fl = ""
    for index, term, default in fields:
        attrs = f' index="{index}"' if index is not None else ""
        attrs += f' default="{default}"' if default is not None else ""
        fl += f'<field{attrs} term="{term}"/>'
    q = quote.replace('"', "&quot;")
    return (
        f'<{tag} encoding="{encoding}" fieldsTerminatedBy="{sep}" linesTerminatedBy="\\n" fieldsEnclosedBy="{q}" '
        f'ignoreHeaderLines="{header}" rowType="{row_type}" {extra_attrs}><files>{locs}</files>{idx}{fl}</{tag}>'
    )


def meta(*entities, metadata=None) -> str:
    md = f' metadata="{metadata}"' if metadata else ""
    return f'<?xml version="1.0" encoding="UTF-8"?><archive xmlns="http://rs.tdwg.org/dwc/text/"{md}>{"".join(entities)}</archive>'


def tsv(rows) -> str:
    return "".join("\t".join(r) + "\n" for r in rows)


def write_archive(tmp_path: Path, files: dict[str, str | bytes], kind: str = "folder", name: str = "archive") -> Path:
    data = {k: v.encode("utf-8") if isinstance(v, str) else v for k, v in files.items()}
    if kind == "folder":
        root = tmp_path / name
        for k, v in data.items():
            (root / k).parent.mkdir(parents=True, exist_ok=True)
            (root / k).write_bytes(v)
        return root
    if kind == "zip":
        path = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for k, v in data.items():
                zf.writestr(k, v)
        return path
    path = tmp_path / f"{name}.tgz"
    with tarfile.open(path, "w:gz") as tf:
        for k, v in data.items():
            info = tarfile.TarInfo(k)
            info.size = len(v)
            tf.addfile(info, io.BytesIO(v))
    return path


def rows_of(source) -> list[dict]:
    batches = list(source.scan())
    for b in batches:
        assert isinstance(b, pa.RecordBatch)
        for c in ("key", "location", "size", "mtime"):
            assert c in b.schema.names
    out = [r for b in batches for r in b.to_pylist()]
    keys = [r["key"] for r in out]
    assert len(keys) == len(set(keys)), "keys must be unique"
    return sorted(out, key=lambda r: r["key"])


def extra(row) -> dict:
    return json.loads(row["extra"]) if row.get("extra") else {}


OCC_FIELDS = [
    (1, DWC + "occurrenceID", None),
    (2, DWC + "catalogNumber", None),
    (3, DWC + "scientificName", None),
    (4, DC + "license", None),
    (5, DWC + "habitat", None),
]


def occurrence_with_multimedia(kind="folder", **kw) -> dict[str, str]:
    core = tsv(
        [
            ["id", "occurrenceID", "catalogNumber", "scientificName", "license", "habitat"],
            ["1", "urn:occ:1", "CAT-1", "Corvus corax", "CC0", "cliff"],
            ["2", "urn:occ:2", "CAT-2", "Pica pica", "CC0", ""],
            ["3", "urn:occ:3", "CAT-3", "Turdus merula", "CC0", "garden"],
        ]
    )
    media = tsv(
        [
            ["coreid", "identifier", "type", "format", "license", "rightsHolder", "title"],
            ["1", "https://img.example.org/1a.jpg", "StillImage", "image/jpeg", "CC BY 4.0", "Museum", "dorsal"],
            ["1", "https://img.example.org/1b.jpg", "http://purl.org/dc/dcmitype/StillImage", "", "", "", "ventral"],
            ["2", "https://img.example.org/2.mp3", "Sound", "audio/mpeg", "", "", ""],
            ["2", "https://img.example.org/2.jpg", "StillImage", "image/jpeg", "", "", ""],
        ]
    )
    mm_fields = [
        (1, DC + "identifier", None),
        (2, DC + "type", None),
        (3, DC + "format", None),
        (4, DC + "license", None),
        (5, DC + "rightsHolder", None),
        (6, DC + "title", None),
    ]
    return {
        "meta.xml": meta(
            entity("core", OCC, ["occurrence.txt"], OCC_FIELDS),
            entity("extension", GBIF_MM, ["multimedia.txt"], mm_fields),
            metadata="eml.xml",
        ),
        "occurrence.txt": core,
        "multimedia.txt": media,
        "eml.xml": "<eml/>",
    }


# -- the basics --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["folder", "zip", "tgz"])
def test_occurrence_core_with_gbif_multimedia(tmp_path, kind):
    path = write_archive(tmp_path, occurrence_with_multimedia(), kind)
    src = DwcaSource(path)
    rows = rows_of(src)
    assert len(rows) == 3  # the sound row is not an image
    by_url = {r["mediaURL"]: r for r in rows}
    a = by_url["https://img.example.org/1a.jpg"]
    assert a["key"] == f"{os.path.abspath(path)}#1#https://img.example.org/1a.jpg"
    assert a["location"] == "https://img.example.org/1a.jpg"
    assert (a["recordID"], a["occurrenceID"], a["catalogNumber"], a["scientificName"]) == (
        "1",
        "urn:occ:1",
        "CAT-1",
        "Corvus corax",
    )
    assert a["license"] == "CC BY 4.0" and a["rightsHolder"] == "Museum"  # the media row's own
    assert a["mediaFormat"] == "image/jpeg"
    # the record's licence is kept as the record's
    assert extra(a) == {
        "habitat": "cliff",
        "media:title": "dorsal",
        "media:type": "StillImage",
        "record:license": "CC0",
    }
    b = by_url["https://img.example.org/1b.jpg"]
    assert b["license"] is None  # no license on the media row: none (an image's licence is its own) ...
    assert extra(b)["record:license"] == "CC0"
    lent = {r["mediaURL"]: r for r in rows_of(DwcaSource(path, record_license=True))}
    assert lent["https://img.example.org/1b.jpg"]["license"] == "CC0"  # ... unless the record's is asked for
    assert extra(lent["https://img.example.org/1b.jpg"])["licenseFrom"] == "record"
    assert lent["https://img.example.org/1a.jpg"]["license"] == "CC BY 4.0"  # its own still wins
    assert b["mediaFormat"] is None  # an empty media format is still an image
    assert src.report["non_image_media_rows"] == 1
    assert src.report["records_without_media"] == 1  # record 3
    assert src.report["image_rows"] == 3 and src.report["records"] == 3
    assert rows == rows_of(DwcaSource(path)), "keys and rows are stable across scans"


def test_name_makes_keys_independent_of_the_file_name(tmp_path):
    a = write_archive(tmp_path, occurrence_with_multimedia(), "zip", name="export-2024-01")
    b = write_archive(tmp_path, occurrence_with_multimedia(), "zip", name="export-2024-02")
    keys_a = {r["key"] for r in rows_of(DwcaSource(a, name="nhm"))}
    keys_b = {r["key"] for r in rows_of(DwcaSource(b, name="nhm"))}
    assert keys_a == keys_b and all(k.startswith("nhm#") for k in keys_a)


def test_audubon_core_media(tmp_path):
    ac_fields = [
        (1, AC + "accessURI", None),
        (2, "http://purl.org/dc/elements/1.1/type", None),
        (3, DC + "type", None),
        (4, "http://purl.org/dc/elements/1.1/format", None),
        (5, XMP + "WebStatement", None),
        (6, XMP + "Owner", None),
        (7, DC + "identifier", None),
        (8, DC + "description", None),
    ]
    files = {
        "meta.xml": meta(
            entity("core", OCC, ["occ.txt"], OCC_FIELDS[:3]),
            entity("extension", AC + "Multimedia", ["ac.txt"], ac_fields),
        ),
        "occ.txt": tsv([["id", "occurrenceID", "catalogNumber", "scientificName"], ["o1", "u1", "C1", "Bufo bufo"]]),
        "ac.txt": tsv(
            [
                ["coreid", "accessURI", "dctype", "type", "format", "web", "owner", "identifier", "desc"],
                [
                    "o1",
                    "https://ac.example.org/a.jpg",
                    "StillImage",
                    "http://purl.org/dc/dcmitype/StillImage",
                    "image/jpeg",
                    "https://creativecommons.org/licenses/by/4.0/",
                    "Jane Doe",
                    "media-17",
                    "head",
                ],
                ["o1", "https://ac.example.org/a.mp4", "MovingImage", "", "video/mp4", "", "", "media-18", ""],
            ]
        ),
    }
    src = DwcaSource(write_archive(tmp_path, files))
    (row,) = rows_of(src)
    assert row["mediaURL"] == row["location"] == "https://ac.example.org/a.jpg"
    assert row["license"] == "https://creativecommons.org/licenses/by/4.0/" and row["rightsHolder"] == "Jane Doe"
    assert extra(row)["media:identifier"] == "media-17" and extra(row)["media:description"] == "head"
    assert src.report["non_image_media_rows"] == 1


def test_eol_media_extension_keeps_images_skips_text(tmp_path):
    eol_fields = [
        (0, DC + "identifier", None),
        (1, DWC + "taxonID", None),
        (2, DC + "type", None),
        (3, DC + "format", None),
        (4, AC + "accessURI", None),
        (5, XMP + "UsageTerms", None),
        (6, XMP + "Owner", None),
    ]
    files = {
        "meta.xml": meta(
            entity(
                "core",
                DWC + "Taxon",
                ["taxa.txt"],
                [(0, DWC + "taxonID", None), (1, DWC + "scientificName", None), (2, DWC + "family", None)],
            ),
            entity("extension", "http://eol.org/schema/media/Document", ["media.txt"], eol_fields, id_index=1),
        ),
        "taxa.txt": tsv([["id", "name", "family"], ["t1", "Draposa atropalpis", "Lycosidae"]]),
        "media.txt": tsv(
            [
                ["id", "taxon", "type", "format", "url", "terms", "owner"],
                ["m1.text", "t1", "http://purl.org/dc/dcmitype/Text", "text/html", "", "Public Domain", ""],
                [
                    "m2.fig",
                    "t1",
                    "http://purl.org/dc/dcmitype/StillImage",
                    "image/png",
                    "https://eol.example.org/fig2.png",
                    "http://creativecommons.org/licenses/by/3.0/",
                    "Plazi",
                ],
            ]
        ),
    }
    src = DwcaSource(write_archive(tmp_path, files, "zip"))
    (row,) = rows_of(src)
    assert row["location"] == "https://eol.example.org/fig2.png"
    assert row["scientificName"] == "Draposa atropalpis" and row["family"] == "Lycosidae"
    assert row["license"] == "http://creativecommons.org/licenses/by/3.0/" and row["rightsHolder"] == "Plazi"
    assert row.get("occurrenceID") is None  # a taxon core has no occurrence id of its own
    assert src.report["non_image_media_rows"] == 1


def test_associated_media_fallback_and_splitting(tmp_path):
    fields = [(1, DWC + "scientificName", None), (2, DWC + "associatedMedia", None)]
    mm = [(1, DC + "identifier", None)]
    files = {
        "meta.xml": meta(entity("core", OCC, ["occ.txt"], fields), entity("extension", GBIF_MM, ["mm.txt"], mm)),
        "occ.txt": tsv(
            [
                ["id", "name", "associatedMedia"],
                ["1", "A a", "https://x.org/1.jpg | https://x.org/2.jpg;https://x.org/3.jpg"],
                ["2", "B b", "https://x.org/4.jpg, https://x.org/iiif/full/,200/0/default.jpg https://x.org/5.jpg"],
                ["3", "C c", "https://x.org/ignored.jpg"],  # has an extension media row: associatedMedia unused
                ["4", "D d", ""],
            ]
        ),
        "mm.txt": tsv([["coreid", "identifier"], ["3", "https://x.org/ext.jpg"]]),
    }
    src = DwcaSource(write_archive(tmp_path, files))
    urls = {r["recordID"]: [] for r in rows_of(src)}
    for r in rows_of(src):
        urls[r["recordID"]].append(r["location"])
    assert sorted(urls["1"]) == ["https://x.org/1.jpg", "https://x.org/2.jpg", "https://x.org/3.jpg"]
    assert sorted(urls["2"]) == [
        "https://x.org/4.jpg",
        "https://x.org/5.jpg",
        "https://x.org/iiif/full/,200/0/default.jpg",
    ]
    assert urls["3"] == ["https://x.org/ext.jpg"]
    assert src.report["records_without_media"] == 1


def test_taxon_core_with_occurrence_extension(tmp_path):
    taxon = [(0, DWC + "taxonID", None), (1, DWC + "scientificName", None), (2, DWC + "kingdom", None)]
    occ = [
        (0, DWC + "occurrenceID", None),
        (2, DWC + "catalogNumber", None),
        (3, DWC + "country", None),
        (4, DWC + "scientificName", None),
    ]
    mm = [(1, DC + "identifier", None), (2, DWC + "occurrenceID", None)]
    files = {
        "meta.xml": meta(
            entity("core", DWC + "Taxon", ["taxa.txt"], taxon),
            entity("extension", OCC, ["occ.txt"], occ, id_index=1),
            entity("extension", GBIF_MM, ["mm.txt"], mm),
        ),
        "taxa.txt": tsv(
            [["id", "name", "kingdom"], ["t1", "Corvus corax", "Animalia"], ["t2", "Pica pica", "Animalia"]]
        ),
        "occ.txt": tsv(
            [
                ["occ", "taxon", "cat", "country", "name"],
                ["o1", "t1", "C-1", "NO", "Corvus corax corax"],
                ["o2", "t1", "C-2", "SE", ""],
                ["o3", "t2", "C-3", "DK", ""],
            ]
        ),
        "mm.txt": tsv(
            [
                ["taxon", "url", "occ"],
                ["t1", "https://m.org/o2.jpg", "o2"],  # names its occurrence
                ["t1", "https://m.org/t1.jpg", ""],  # t1 has two occurrences: none is chosen
                ["t2", "https://m.org/t2.jpg", ""],  # t2 has one: it is the one
            ]
        ),
    }
    rows = {r["location"]: r for r in rows_of(DwcaSource(write_archive(tmp_path, files)))}
    o2 = rows["https://m.org/o2.jpg"]
    assert (o2["occurrenceID"], o2["catalogNumber"], o2["country"], o2["scientificName"]) == (
        "o2",
        "C-2",
        "SE",
        "Corvus corax",
    )
    t1 = rows["https://m.org/t1.jpg"]
    assert t1["occurrenceID"] is None and t1["catalogNumber"] is None and t1["scientificName"] == "Corvus corax"
    t2 = rows["https://m.org/t2.jpg"]
    assert (t2["occurrenceID"], t2["catalogNumber"], t2["kingdom"]) == ("o3", "C-3", "Animalia")
    assert all(r["recordID"] in ("t1", "t2") for r in rows.values())


def test_event_core_with_occurrence_extension_and_associated_media(tmp_path):
    event = [(1, DWC + "eventDate", None), (2, DWC + "locality", None)]
    occ = [(0, DWC + "occurrenceID", None), (2, DWC + "scientificName", None), (3, DWC + "associatedMedia", None)]
    files = {
        "meta.xml": meta(
            entity("core", DWC + "Event", ["event.txt"], event), entity("extension", OCC, ["occ.txt"], occ, id_index=1)
        ),
        "event.txt": tsv([["id", "date", "loc"], ["e1", "2020-05-01", "Trap 7"]]),
        "occ.txt": tsv(
            [
                ["occ", "event", "name", "media"],
                ["o1", "e1", "Vulpes vulpes", "https://c.org/fox.jpg"],
                ["o2", "e1", "Meles meles", "https://c.org/badger.jpg"],
            ]
        ),
    }
    rows = {r["location"]: r for r in rows_of(DwcaSource(write_archive(tmp_path, files)))}
    fox = rows["https://c.org/fox.jpg"]
    assert (fox["scientificName"], fox["occurrenceID"], fox["eventDate"], fox["locality"]) == (
        "Vulpes vulpes",
        "o1",
        "2020-05-01",
        "Trap 7",
    )
    assert rows["https://c.org/badger.jpg"]["scientificName"] == "Meles meles"


def test_other_extensions_go_into_extra(tmp_path):
    taxon = [(1, DWC + "scientificName", None)]
    vern = [(1, DWC + "vernacularName", None), (2, DC + "language", None)]
    files = {
        "meta.xml": meta(
            entity("core", DWC + "Taxon", ["t.txt"], taxon + [(2, DWC + "associatedMedia", None)]),
            entity("extension", "http://rs.gbif.org/terms/1.0/VernacularName", ["v.txt"], vern),
        ),
        "t.txt": tsv([["id", "name", "media"], ["1", "Struthio camelus", "https://o.org/ostrich.jpg"]]),
        "v.txt": tsv([["id", "name", "lang"], ["1", "ostrich", "en"], ["1", "volstruis", "af"]]),
    }
    (row,) = rows_of(DwcaSource(write_archive(tmp_path, files)))
    assert row["vernacularName"] == "ostrich; volstruis"
    assert sorted(extra(row)["VernacularName"], key=lambda d: d["language"]) == [
        {"vernacularName": "volstruis", "language": "af"},
        {"vernacularName": "ostrich", "language": "en"},
    ]


# -- the descriptor ----------------------------------------------------------------------------


def test_default_values(tmp_path):
    fields = [
        (1, DWC + "scientificName", None),
        (2, DWC + "country", "Belgium"),
        (None, DWC + "basisOfRecord", "PreservedSpecimen"),
        (3, DWC + "associatedMedia", None),
    ]
    files = {
        "meta.xml": meta(entity("core", OCC, ["o.txt"], fields, header=0)),
        "o.txt": tsv([["1", "A a", "France", "https://d.org/1.jpg"], ["2", "B b", "", "https://d.org/2.jpg"]]),
    }
    rows = {r["recordID"]: r for r in rows_of(DwcaSource(write_archive(tmp_path, files)))}
    assert rows["1"]["country"] == "France" and rows["2"]["country"] == "Belgium"
    assert {r["basisOfRecord"] for r in rows.values()} == {"PreservedSpecimen"}


def test_one_entity_in_several_files_pipe_separated(tmp_path):
    core = entity("core", DWC + "Taxon", ["t1.txt", "t2.txt"], [(0, DWC + "scientificName", None)], id_index=1, sep="|")
    ext = entity(
        "extension",
        GBIF_MM,
        ["m1.txt", "m2.txt"],
        [(1, DC + "identifier", None), (None, DC + "type", "StillImage")],
        sep="|",
    )
    files = {
        "meta.xml": meta(core, ext),
        "t1.txt": "name|id\nA a|1\nB b|2\n",
        "t2.txt": "name|id\nC c|3\n",
        "m1.txt": "id|url\n1|https://p.org/1.jpg\n",
        "m2.txt": "id|url\n3|https://p.org/3.jpg\n2|https://p.org/2.jpg\n",
    }
    rows = rows_of(DwcaSource(write_archive(tmp_path, files)))
    assert [(r["recordID"], r["scientificName"]) for r in sorted(rows, key=lambda r: r["recordID"])] == [
        ("1", "A a"),
        ("2", "B b"),
        ("3", "C c"),
    ]


def test_no_quoting_keeps_quote_characters(tmp_path):
    fields = [(1, DWC + "scientificName", None), (2, DWC + "associatedMedia", None)]
    files = {
        "meta.xml": meta(entity("core", OCC, ["o.txt"], fields, quote="")),
        "o.txt": tsv(
            [
                ["id", "name", "media"],
                ["1", '"betta" splendens', "https://q.org/1.jpg"],
                ["2", "'betta' x", "https://q.org/2.jpg"],
            ]
        ),
    }
    names = sorted(r["scientificName"] for r in rows_of(DwcaSource(write_archive(tmp_path, files))))
    assert names == ['"betta" splendens', "'betta' x"]


def test_quoted_csv_with_newlines_and_json_with_escaped_quotes(tmp_path):
    fields = [(1, DWC + "locality", None), (2, DWC + "dynamicProperties", None), (3, DWC + "associatedMedia", None)]
    props = {"note": 'Old catalogue says \\"fragments\\"', "list": ["a;b"]}
    cell = json.dumps(props).replace('"', '""')
    files = {
        "meta.xml": meta(entity("core", OCC, ["o.csv"], fields, sep=",", quote='"')),
        "o.csv": "id,locality,dynamicProperties,associatedMedia\n"
        f'1,"Cambridge,\nline two","{cell}",https://n.org/1.jpg\n'
        '2,"plain",,https://n.org/2.jpg\n',
    }
    rows = {r["recordID"]: r for r in rows_of(DwcaSource(write_archive(tmp_path, files)))}
    assert rows["1"]["locality"] == "Cambridge,\nline two"
    assert json.loads(extra(rows["1"])["dynamicProperties"]) == props
    assert rows["2"]["locality"] == "plain"


@pytest.mark.parametrize(
    "encoding,declared", [("latin-1", "ISO-8859-1"), ("cp1252", "windows-1252"), ("latin-1", "latin1")]
)
def test_non_utf8_encodings(tmp_path, encoding, declared):
    text = "Döring “quoted” – €" if encoding == "cp1252" else "Döring, Ïzmir"
    fields = [(1, DWC + "recordedBy", None), (2, DWC + "associatedMedia", None)]
    files = {
        "meta.xml": meta(entity("core", OCC, ["o.txt"], fields, encoding=declared)),
        "o.txt": tsv([["id", "by", "media"], ["1", text, "https://e.org/1.jpg"]]).encode(encoding),
    }
    (row,) = rows_of(DwcaSource(write_archive(tmp_path, files, "zip")))
    assert row["recordedBy"] == text


def test_declared_utf8_but_windows_1252_falls_back_with_a_warning(tmp_path, caplog):
    fields = [(1, DWC + "recordedBy", None), (2, DWC + "associatedMedia", None)]
    files = {
        "meta.xml": meta(entity("core", OCC, ["o.txt"], fields)),
        "o.txt": tsv([["id", "by", "media"], ["1", "Döring", "https://e.org/1.jpg"]]).encode("cp1252"),
    }
    src = DwcaSource(write_archive(tmp_path, files))
    with caplog.at_level(logging.WARNING):
        (row,) = rows_of(src)
    assert row["recordedBy"] == "Döring"
    assert any("Windows-1252" in w for w in src.report["warnings"])


def test_byte_order_mark_without_header_line(tmp_path):
    core = entity("core", OCC, ["o.txt"], [(1, DWC + "scientificName", None)], header=0)
    ext = entity("extension", GBIF_MM, ["m.txt"], [(1, DC + "identifier", None)], header=0)
    files = {
        "meta.xml": meta(core, ext),
        "o.txt": b"\xef\xbb\xbf" + tsv([["1", "A a"], ["2", "B b"]]).encode(),
        "m.txt": b"\xef\xbb\xbf" + tsv([["1", "https://b.org/1.jpg"]]).encode(),
    }
    src = DwcaSource(write_archive(tmp_path, files))
    (row,) = rows_of(src)
    assert row["recordID"] == "1" and row["scientificName"] == "A a"
    assert src.report["orphan_extension_rows"] == 0


def test_media_core_id_with_trailing_space_matches(tmp_path):
    files = occurrence_with_multimedia()
    files["multimedia.txt"] = (
        files["multimedia.txt"].replace("\n3\t", "\n3 \t") + "3 \thttps://img.example.org/3.jpg\t\t\t\t\t\n"
    )
    src = DwcaSource(write_archive(tmp_path, files))
    rows = rows_of(src)
    assert "https://img.example.org/3.jpg" in {r["location"] for r in rows}
    assert src.report["orphan_extension_rows"] == 0 and src.report["records_without_media"] == 0


def test_missing_metadata_file_warns_and_goes_on(tmp_path, caplog):
    files = occurrence_with_multimedia()
    del files["eml.xml"]
    src = DwcaSource(write_archive(tmp_path, files, "zip"))
    with caplog.at_level(logging.WARNING, logger="indexer.build.sources.dwca"):
        assert len(rows_of(src)) == 3
    assert any("eml.xml" in w for w in src.report["warnings"])
    assert "eml.xml" in caplog.text


def test_orphan_extension_rows_are_counted_and_logged(tmp_path, caplog):
    files = occurrence_with_multimedia()
    files["multimedia.txt"] += "99\thttps://img.example.org/orphan.jpg\tStillImage\t\t\t\t\n"
    src = DwcaSource(write_archive(tmp_path, files))
    with caplog.at_level(logging.WARNING, logger="indexer.build.sources.dwca"):
        rows = rows_of(src)
    assert "https://img.example.org/orphan.jpg" not in {r["location"] for r in rows}
    assert src.report["orphan_extension_rows"] == 1
    assert src.report["orphans_by_file"] == {"multimedia.txt": 1}
    assert "core id that does not exist" in caplog.text


def test_macosx_junk_and_subfolder_in_zip(tmp_path):
    files = {f"export/{k}": v for k, v in occurrence_with_multimedia().items()}
    files["__MACOSX/export/._meta.xml"] = b"\x00\x05\x16\x07 resource fork junk"
    files["__MACOSX/export/._occurrence.txt"] = b"\x00\x05\x16\x07"
    files["export/._multimedia.txt"] = b"\x00\x05\x16\x07"
    assert len(rows_of(DwcaSource(write_archive(tmp_path, files, "zip")))) == 3


def test_duplicate_media_rows_are_kept_once(tmp_path):
    files = occurrence_with_multimedia()
    files["multimedia.txt"] += "1\thttps://img.example.org/1a.jpg\tStillImage\t\t\t\t\n"
    src = DwcaSource(write_archive(tmp_path, files))
    assert len(rows_of(src)) == 3
    assert src.report["duplicate_media_rows"] == 1


def test_unusable_media_values_become_error_rows(tmp_path):
    (tmp_path / "arch" / "img").mkdir(parents=True)
    fake = b"\xff\xd8\xff fake jpeg"
    (tmp_path / "arch" / "img" / "local.jpg").write_bytes(fake)
    fields = [(1, DC + "identifier", None)]
    files = {
        "meta.xml": meta(
            entity("core", OCC, ["o.txt"], OCC_FIELDS[:1]), entity("extension", GBIF_MM, ["m.txt"], fields)
        ),
        "o.txt": tsv([["id", "occ"], ["1", "u1"]]),
        "m.txt": tsv([["id", "url"], ["1", "img/local.jpg"], ["1", "ftp://f.org/x.jpg"], ["1", "id42"], ["1", ""]]),
    }
    src = DwcaSource(write_archive(tmp_path, files, name="arch"))
    rows = rows_of(src)
    by_reason = {}
    for r in rows:
        by_reason.setdefault(r.get("error_reason"), []).append(r)
    (local,) = by_reason[None]
    assert local["location"] == str(tmp_path / "arch" / "img" / "local.jpg")
    assert local["size"] == len(fake) and local["mtime"] > 0
    assert len(by_reason["invalid-url"]) == 2
    assert all("x.jpg" in r["error_detail"] or "id42" in r["error_detail"] for r in by_reason["invalid-url"])
    (empty,) = by_reason["no-media-url"]
    assert "m.txt" in empty["error_detail"] and empty["key"].endswith("#1#m.txt:4")
    assert src.report["error_rows"] == 3 and src.report["image_rows"] == 1


@pytest.mark.parametrize("where", ["zip", "file"])
def test_single_csv_without_meta_xml(tmp_path, where):
    csv_text = (
        "occurrenceID,scientificName,catalogNumber,associatedMedia,county\n"
        "occ-1,Bufo bufo,B1,https://s.org/1.jpg|https://s.org/2.jpg,Kent\n"
        "occ-2,Rana temporaria,R1,,Kent\n"
    )
    if where == "zip":
        path = write_archive(tmp_path, {"occurrences.csv": csv_text, "eml.xml": "<eml/>"}, "zip")
    else:
        path = tmp_path / "occurrences.csv"
        path.write_text(csv_text)
    src = DwcaSource(path)
    rows = rows_of(src)
    assert [(r["recordID"], r["scientificName"], r["location"]) for r in rows] == [
        ("occ-1", "Bufo bufo", "https://s.org/1.jpg"),
        ("occ-1", "Bufo bufo", "https://s.org/2.jpg"),
    ]
    assert extra(rows[0])["county"] == "Kent"
    assert src.report["records_without_media"] == 1


def test_batches_are_bounded(tmp_path):
    n = 120_000
    core = "id\tscientificName\n" + "".join(f"{i}\tSpecies {i % 97}\n" for i in range(n))
    media = "id\tidentifier\n" + "".join(f"{i}\thttps://big.org/{i}.jpg\n" for i in range(n))
    files = {
        "meta.xml": meta(
            entity("core", OCC, ["o.txt"], [(1, DWC + "scientificName", None)]),
            entity("extension", GBIF_MM, ["m.txt"], [(1, DC + "identifier", None)]),
        ),
        "o.txt": core,
        "m.txt": media,
    }
    batches = list(DwcaSource(write_archive(tmp_path, files)).scan())
    assert sum(b.num_rows for b in batches) == n
    assert max(b.num_rows for b in batches) <= 50_000 and len(batches) >= 3


# -- archives that must stop with a clear message ----------------------------------------------


def _stops(path, *words):
    with pytest.raises(SourceError) as e:
        src = DwcaSource(path)
        list(src.scan())
    message = str(e.value)
    assert str(path) in message, message
    for w in words:
        assert w in message, message
    return message


def test_malformed_meta_xml(tmp_path):
    files = occurrence_with_multimedia()
    files["meta.xml"] = files["meta.xml"][:-20]
    _stops(write_archive(tmp_path, files), "meta.xml", "XML")


def test_descriptor_maps_a_column_the_file_lacks(tmp_path):
    files = occurrence_with_multimedia()
    files["meta.xml"] = files["meta.xml"].replace(
        'index="5" term="http://rs.tdwg.org/dwc/terms/habitat"', 'index="9" term="http://rs.tdwg.org/dwc/terms/habitat"'
    )
    _stops(write_archive(tmp_path, files), "column 9", "occurrence.txt")


def test_missing_data_file(tmp_path):
    files = occurrence_with_multimedia()
    del files["multimedia.txt"]
    _stops(write_archive(tmp_path, files, "zip"), "multimedia.txt")


def test_no_meta_and_two_data_files(tmp_path):
    _stops(write_archive(tmp_path, {"a.csv": "occurrenceID\n1\n", "random_file": ""}, "zip"), "more than one")


def test_unknown_encoding(tmp_path):
    files = occurrence_with_multimedia()
    files["meta.xml"] = files["meta.xml"].replace(
        'encoding="UTF-8" fieldsTerminatedBy', 'encoding="klingon" fieldsTerminatedBy', 1
    )
    _stops(write_archive(tmp_path, files), "klingon")


def test_not_an_archive(tmp_path):
    p = tmp_path / "photo.jpg"
    p.write_bytes(b"\xff\xd8\xff not a zip")
    _stops(p, "not a Darwin Core Archive")


def test_parse_meta_xml_defaults():
    d = parse_meta_xml(
        b'<archive xmlns="http://rs.tdwg.org/dwc/text/"><core rowType="x"><files><location>a</location></files>'
        b'<field index="0" term="http://rs.tdwg.org/dwc/terms/genus"/></core></archive>',
        "w",
    )
    assert (d.core.delimiter, d.core.quote, d.core.header_lines, d.core.encoding) == (None, '"', 0, None)


# -- the real archives -------------------------------------------------------------------------

#: What we know about some of the real archives: (image rows, error rows) or a SourceError fragment.
KNOWN = {
    "nhm-occurrence-multimedia": (4, 0),
    "multifile-psv": (0, 6),
    "archive-occ.zip": (0, 0),
    "plazi-taxon-core-with-media.zip": (0, 0),
    "gbif-results.zip": (0, 0),
    "dwca-orphaned-rows.zip": (0, 0),
    "dwca-simple-test-archive.tgz": (0, 0),
    "dwca-malformed-descriptor": "maps column 234",
    "dwca-invalid-simple-toomuch.zip": "more than one",
    "dwca-invalid-simple-two.zip": "more than one",
}


def _real_archives():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        return ["(absent)"]
    return sorted(
        str(p.relative_to(SHARED_DATA))
        for d in SHARED_DATA.glob("dwca-*")
        for p in d.iterdir()
        if not p.name.endswith((".md", ".sha256", ".rst"))
    )


@pytest.mark.parametrize("rel", _real_archives())
def test_real_archive_scans_or_stops_cleanly(shared_data, rel):
    path = shared_data / rel
    name = path.name
    try:
        src = DwcaSource(path)
        rows = rows_of(src)
    except SourceError as exc:
        assert str(path) in str(exc), f"message does not name the archive: {exc}"
        assert "\n" not in str(exc).strip() and "Traceback" not in str(exc)
        expected = KNOWN.get(name)
        assert expected is None or isinstance(expected, str), f"{name} should have scanned: {exc}"
        if isinstance(expected, str):
            assert expected in str(exc)
        return
    expected = KNOWN.get(name)
    assert not isinstance(expected, str), f"{name} should have stopped with {expected!r}"
    errors = sum(1 for r in rows if r.get("error_reason"))
    if expected is not None:
        assert (len(rows) - errors, errors) == expected
    assert src.report["records"] > 0


def test_real_nhm_specimen(shared_data):
    src = DwcaSource(shared_data / "dwca-gbif-dwca-io" / "nhm-occurrence-multimedia")
    rows = rows_of(src)
    assert len(rows) == 4
    for r in rows:
        assert r["catalogNumber"] == "PV OR 35322" and r["institutionCode"] == "NHMUK"
        assert r["scientificName"] == "Ornithocheirus" and r["order"] == "Pterosauria" and r["class"] == "Reptilia"
        assert r["license"] == "http://creativecommons.org/licenses/by/4.0/"
        assert r["rightsHolder"] == "The Trustees of the Natural History Museum, London"
        assert (
            r["location"].startswith("http://www.nhm.ac.uk/services/media-store/asset/")
            and r["mediaURL"] == r["location"]
        )
        assert r["mediaFormat"] is None and r["recordID"] == "779"
        props = json.loads(extra(r)["dynamicProperties"])
        assert props["cataloguedescription"] == 'Very worn vertebra. Old catalogue says "fragments of bone".'
    assert (
        "http://www.nhm.ac.uk/services/media-store/asset/42c7b32ebb8098e69cb06c712f587025b5a36602/contents/preview"
        in {r["location"] for r in rows}
    )


def test_real_orphaned_rows_are_counted(shared_data):
    src = DwcaSource(shared_data / "dwca-python-dwca-reader" / "dwca-orphaned-rows.zip")
    rows_of(src)
    assert src.report["orphan_extension_rows"] == 4
    assert src.report["records_without_media"] == 4


def test_real_archive_with_macosx_junk(shared_data):
    src = DwcaSource(shared_data / "dwca-gbif-dwca-io" / "archive-occ.zip")
    assert rows_of(src) == []
    assert src.report["records"] == 1534 and src.report["records_without_media"] == 1534


def test_utf8_bom_wins_over_a_latin1_declaration_and_utf16_is_read(tmp_path):
    fields = [(1, DWC + "recordedBy", None), (2, DWC + "associatedMedia", None)]
    text = tsv([["id", "by", "media"], ["1", "Döring", "https://e.org/1.jpg"]])
    for declared, data in (("ISO-8859-1", b"\xef\xbb\xbf" + text.encode("utf-8")), ("UTF-16", text.encode("utf-16"))):
        files = {"meta.xml": meta(entity("core", OCC, ["o.txt"], fields, encoding=declared)), "o.txt": data}
        (row,) = rows_of(DwcaSource(write_archive(tmp_path, files, "zip", name=declared)))
        assert (row["recordID"], row["recordedBy"]) == ("1", "Döring"), declared


def test_crlf_line_ends(tmp_path):
    fields = [(1, DWC + "scientificName", None), (2, DWC + "associatedMedia", None)]
    files = {
        "meta.xml": meta(entity("core", OCC, ["o.csv"], fields, sep=",", quote='"')).replace(
            'linesTerminatedBy="\\n"', 'linesTerminatedBy="\\r\\n"'
        ),
        "o.csv": 'id,name,media\r\n1,"Bufo, bufo",https://c.org/1.jpg\r\n2,Rana,https://c.org/2.jpg\r\n',
    }
    rows = {r["recordID"]: r for r in rows_of(DwcaSource(write_archive(tmp_path, files)))}
    assert rows["1"]["scientificName"] == "Bufo, bufo" and rows["2"]["location"] == "https://c.org/2.jpg"
