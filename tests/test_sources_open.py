"""open_source: picking the kind of source, option checks, and --media-root for every kind."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.build.sources import (
    DwcaSource,
    FolderSource,
    ManifestSource,
    MediaRootSource,
    TarShardSource,
    open_source,
    parse_media_root,
)
from indexer.build.sources.media_root import map_location
from indexer.errors import SourceError

META = (
    '<archive xmlns="http://rs.tdwg.org/dwc/text/"><core rowType="http://rs.tdwg.org/dwc/terms/Occurrence" '
    'fieldsTerminatedBy="\\t" fieldsEnclosedBy="" ignoreHeaderLines="1"><files><location>o.txt</location></files>'
    '<id index="0"/><field index="1" term="http://rs.tdwg.org/dwc/terms/scientificName"/>'
    '<field index="2" term="http://rs.tdwg.org/dwc/terms/associatedMedia"/></core></archive>'
)
OCC = (
    "id\tname\tmedia\n1\tCorvus corax\thttps://media.museum.org/assets/raven%20one.jpg\n"
    "2\tPica pica\thttps://media.museum.org/assets/../../etc/passwd\n"
    "3\tTurdus merula\thttps://media.museum.org/assets/missing.jpg?size=large\n"
    "4\tSturnus vulgaris\thttps://elsewhere.org/x.jpg\n"
)


def _dwca_folder(tmp_path):
    d = tmp_path / "dwca"
    d.mkdir()
    (d / "meta.xml").write_text(META)
    (d / "o.txt").write_text(OCC)
    return d


def _tar(path, members, mode="w"):
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_detects_each_kind(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    assert isinstance(open_source(str(images)), FolderSource)
    assert isinstance(open_source(str(_dwca_folder(tmp_path))), DwcaSource)

    z = tmp_path / "export.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("meta.xml", META)
        zf.writestr("o.txt", OCC)
    assert isinstance(open_source(str(z)), DwcaSource)

    tgz = tmp_path / "export.tgz"
    _tar(tgz, {"meta.xml": META.encode(), "o.txt": OCC.encode()}, "w:gz")
    assert isinstance(open_source(str(tgz)), DwcaSource)

    shard = tmp_path / "shard-000.tar"
    _tar(shard, {"a.jpg": b"x", "a.json": b"{}"})
    assert isinstance(open_source(str(shard)), TarShardSource)
    assert isinstance(open_source(str(tmp_path / "shard-{000..000}.tar")), TarShardSource)

    gz_shard = tmp_path / "shard.tar.gz"
    _tar(gz_shard, {"a.jpg": b"x"}, "w:gz")
    assert isinstance(open_source(str(gz_shard)), TarShardSource)

    (tmp_path / "m.csv").write_text("url,genus\nhttps://x.org/a.jpg,Corvus\n")
    assert isinstance(open_source(str(tmp_path / "m.csv")), ManifestSource)
    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "m.parquet")
    assert isinstance(open_source(str(tmp_path / "m.parquet")), ManifestSource)

    (tmp_path / "dwc.csv").write_text("occurrenceID,scientificName,associatedMedia\n1,Bufo bufo,https://x.org/b.jpg\n")
    assert isinstance(open_source(str(tmp_path / "dwc.csv")), DwcaSource)
    assert isinstance(open_source(str(tmp_path / "dwc.csv"), path_column="associatedMedia"), ManifestSource)


def test_source_type_overrides_detection(tmp_path):
    (tmp_path / "m.csv").write_text("url,occurrenceID,associatedMedia\nhttps://x.org/a.jpg,1,https://x.org/b.jpg\n")
    assert isinstance(open_source(str(tmp_path / "m.csv"), source_type="dwca"), DwcaSource)
    with pytest.raises(SourceError, match="unknown source type"):
        open_source(str(tmp_path / "m.csv"), source_type="ftp")


def test_errors_name_the_source(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "x.bin").write_bytes(b"\x00\x01binary")
    with pytest.raises(SourceError, match="cannot tell"):
        open_source(str(tmp_path / "x.bin"))
    (tmp_path / "plain.csv").write_text("a,b\n1,2\n")
    with pytest.raises(SourceError, match="Darwin Core"):
        open_source(str(tmp_path / "plain.csv"))
    with pytest.raises(SourceError, match="--labels"):
        open_source(str(_dwca_folder(tmp_path)), labels=str(tmp_path / "l.csv"))
    with pytest.raises(SourceError, match="--path-column"):
        open_source(str(tmp_path / "dwca"), path_column="url")


def test_name_is_passed_on(tmp_path):
    src = open_source(str(_dwca_folder(tmp_path)), name="museum")
    assert src.name == "museum"
    assert all(r["key"].startswith("museum#") for b in src.scan() for r in b.to_pylist())


# -- --media-root ------------------------------------------------------------------------------


def test_parse_media_root():
    assert parse_media_root("https://m.org/a?x=1=/srv/img") == ("https://m.org/a?x=1", "/srv/img")
    with pytest.raises(SourceError):
        parse_media_root("no-equals-sign")


def test_map_location_refuses_to_leave_the_root(tmp_path):
    root = str(tmp_path)
    assert map_location("https://m.org/a/b%20c.jpg", "https://m.org/", root) == (
        os.path.join(root, "a", "b c.jpg"),
        None,
    )
    for bad in ("https://m.org/../x", "https://m.org/a/%2e%2e/%2e%2e/x", "https://m.org/a/..%2F..%2Fx"):
        path, why = map_location(bad, "https://m.org/", root)
        assert path is None and "media root" in why


def test_media_root_on_a_darwin_core_archive(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "raven one.jpg").write_bytes(b"\xff\xd8\xff raven")
    src = open_source(str(_dwca_folder(tmp_path)), media_roots={"https://media.museum.org/assets/": str(store)})
    assert isinstance(src, MediaRootSource) and isinstance(src.inner, DwcaSource)
    plain = {r["recordID"]: r for b in DwcaSource(tmp_path / "dwca").scan() for r in b.to_pylist()}
    rows = {r["recordID"]: r for b in src.scan() for r in b.to_pylist()}
    raven = rows["1"]
    assert raven["location"] == str(store / "raven one.jpg") and raven["size"] == len(b"\xff\xd8\xff raven")
    assert raven["mediaURL"] == "https://media.museum.org/assets/raven%20one.jpg"
    assert raven["key"] == plain["1"]["key"], "the key does not change with the media root"
    assert rows["2"]["error_reason"] == "invalid-url" and "media root" in rows["2"]["error_detail"]
    assert rows["3"]["error_reason"] == "not-found" and rows["3"]["location"] == str(store / "missing.jpg")
    assert rows["4"]["location"] == "https://elsewhere.org/x.jpg" and rows["4"]["error_reason"] is None
    assert src.report["records"] == 4  # the wrapped source's report


def test_media_root_on_a_manifest(tmp_path):
    store = tmp_path / "mirror"
    (store / "a").mkdir(parents=True)
    (store / "a" / "1.jpg").write_bytes(b"img")
    (tmp_path / "m.csv").write_text("url,genus\nhttp://cdn.org/a/1.jpg,Corvus\n")
    src = open_source(str(tmp_path / "m.csv"), media_roots={"http://cdn.org/": str(store)})
    (row,) = [r for b in src.scan() for r in b.to_pylist()]
    assert row["location"] == str(store / "a" / "1.jpg") and row["key"] == "http://cdn.org/a/1.jpg"
    assert row["mediaURL"] == "http://cdn.org/a/1.jpg" and row["size"] == 3


def test_media_root_must_be_a_folder(tmp_path):
    with pytest.raises(SourceError, match="not a folder"):
        open_source(str(_dwca_folder(tmp_path)), media_roots={"https://m.org/": str(tmp_path / "nope")})


def test_folder_source_still_works(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"\xff\xd8\xff")
    src = open_source(str(images), name="field")
    assert isinstance(src, FolderSource) and src.name == "field"
    (row,) = [r for b in src.scan() for r in b.to_pylist()]
    assert row["location"] == str(images / "a.jpg")


def test_windows_1252_tables_are_detected_and_read(tmp_path):
    """Latin-1 / Windows-1252 CSVs with no encoding declared: a manifest and a single Darwin Core CSV."""
    (tmp_path / "imgs").mkdir()
    manifest = tmp_path / "latin.csv"
    manifest.write_bytes("path,scientificName,locality\nimgs/a.jpg,Salmo trutta,Köln – Rhein\n".encode("cp1252"))
    src = open_source(str(manifest))
    assert isinstance(src, ManifestSource)
    (row,) = [r for b in src.scan() for r in b.to_pylist()]
    assert row["locality"] == "Köln – Rhein"

    dwc = tmp_path / "occurrences.csv"
    dwc.write_bytes(
        "occurrenceID,scientificName,locality,associatedMedia\n"
        "o1,Salmo trutta,Köln,https://media.example.org/a.jpg\n".encode("cp1252")
    )
    for path in (dwc, tmp_path / "occurrences.zip"):
        if path.suffix == ".zip":
            with zipfile.ZipFile(path, "w") as z:
                z.write(dwc, "occurrences.csv")
        src = open_source(str(path))
        assert isinstance(src, DwcaSource)
        (row,) = [r for b in src.scan() for r in b.to_pylist()]
        assert row["locality"] == "Köln" and row["scientificName"] == "Salmo trutta"
        assert any("Windows-1252" in w for w in src.report.get("warnings", []))


def test_a_damaged_meta_xml_in_a_zip_is_one_clear_error(tmp_path):
    good = tmp_path / "export.zip"
    with zipfile.ZipFile(good, "w", zipfile.ZIP_STORED) as z:
        z.writestr("meta.xml", META)
        z.writestr("o.txt", OCC)
    data = bytearray(good.read_bytes())
    i = data.find(b"scientificName")
    data[i] ^= 0xFF  # the stored bytes no longer match meta.xml's CRC
    bad = tmp_path / "damaged.zip"
    bad.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"damaged\.zip: cannot read meta\.xml: the archive is damaged"):
        src = open_source(str(bad))
        list(src.scan())
