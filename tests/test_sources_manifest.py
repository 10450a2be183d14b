"""CSV / TSV / Parquet manifests."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.build.sources.manifest import ManifestSource
from indexer.errors import SourceError


def rows_of(src) -> list[dict]:
    rows = [r for b in src.scan() for r in b.to_pylist()]
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys))
    return rows


def _images(tmp_path, *names) -> None:
    for n in names:
        p = tmp_path / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"\xff\xd8\xff" + n.encode())


def test_csv_with_relative_paths_urls_and_metadata(tmp_path):
    _images(tmp_path, "img/a.jpg", "img/sub/b.jpg")
    (tmp_path / "m.csv").write_text(
        "path,scientific_name,Family,site,notes\n"
        "img/a.jpg,Vulpes vulpes,Canidae,North,\n"
        "./img\\sub\\b.jpg,Meles meles,Mustelidae,South,night\n"
        "https://cdn.example.org/c.jpg,Lutra lutra,Mustelidae,East,\n"
        "img/missing.jpg,Sus scrofa,Suidae,West,\n"
        ",Nothing,,,\n"
    )
    src = ManifestSource(tmp_path / "m.csv")
    assert src.path_column == "path"
    rows = rows_of(src)
    by_name = {r["scientificName"]: r for r in rows}
    a = by_name["Vulpes vulpes"]
    assert a["key"] == a["location"] == str(tmp_path / "img" / "a.jpg")
    assert a["size"] == os.path.getsize(tmp_path / "img" / "a.jpg") and a["mtime"] > 0 and a["error_reason"] is None
    assert a["family"] == "Canidae" and json.loads(a["extra"]) == {"site": "North"}
    assert by_name["Meles meles"]["location"] == str(tmp_path / "img" / "sub" / "b.jpg")
    c = by_name["Lutra lutra"]
    assert c["location"] == c["key"] == c["mediaURL"] == "https://cdn.example.org/c.jpg" and c["size"] is None
    assert by_name["Sus scrofa"]["error_reason"] == "not-found"
    empty = by_name["Nothing"]
    assert empty["error_reason"] == "no-media-url" and "data row 5" in empty["error_detail"]
    assert empty["key"] == f"{src.name}#row5"
    assert src.report == {"rows": 5, "image_rows": 3, "error_rows": 2}


def test_tsv_with_explicit_path_column(tmp_path):
    _images(tmp_path, "x.png")
    (tmp_path / "m.tsv").write_text("image_ref\tgenus\nx.png\tCorvus\n")
    with pytest.raises(SourceError, match="no path or URL column"):
        ManifestSource(tmp_path / "m.tsv")
    src = ManifestSource(tmp_path / "m.tsv", path_column="image_ref")
    (row,) = rows_of(src)
    assert row["location"] == str(tmp_path / "x.png") and row["genus"] == "Corvus"
    with pytest.raises(SourceError, match="no column 'nope'"):
        ManifestSource(tmp_path / "m.tsv", path_column="nope")


def test_parquet_keeps_types_in_extra(tmp_path):
    table = pa.table(
        {
            "url": ["https://a.org/1.jpg", "https://a.org/2.jpg"],
            "scientificName": ["Apis mellifera", "Bombus terrestris"],
            "decimalLatitude": [51.5, None],
            "count": [3, 4],
            "tags": [["a", "b"], []],
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    rows = {r["location"]: r for r in rows_of(ManifestSource(tmp_path / "m.parquet"))}
    one = rows["https://a.org/1.jpg"]
    assert one["scientificName"] == "Apis mellifera" and one["decimalLatitude"] == "51.5"
    assert json.loads(one["extra"]) == {"count": 3, "tags": ["a", "b"]}


def test_duplicate_paths_stop_the_source(tmp_path):
    (tmp_path / "m.csv").write_text("file\na.jpg\nb.jpg\n./a.jpg\n")
    with pytest.raises(SourceError) as e:
        ManifestSource(tmp_path / "m.csv")
    assert "a.jpg" in str(e.value) and str(tmp_path / "m.csv") in str(e.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        ManifestSource(tmp_path / "nope.csv")


def test_windows_1252_manifest(tmp_path):
    _images(tmp_path, "a.jpg")
    (tmp_path / "m.csv").write_bytes("file,recordedBy\na.jpg,Döring “M.”\n".encode("cp1252"))
    (row,) = rows_of(ManifestSource(tmp_path / "m.csv"))
    assert row["recordedBy"] == "Döring “M.”"
    src = ManifestSource(tmp_path / "m.csv")
    assert len(rows_of(src)) == len(rows_of(src)) == 1, "a second scan reads the transcoded copy again"


def test_batches_are_bounded(tmp_path):
    n = 120_000
    (tmp_path / "m.csv").write_text("url,genus\n" + "".join(f"https://b.org/{i}.jpg,G{i % 7}\n" for i in range(n)))
    batches = list(ManifestSource(tmp_path / "m.csv").scan())
    assert sum(b.num_rows for b in batches) == n and max(b.num_rows for b in batches) <= 50_000
