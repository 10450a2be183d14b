"""Museum labels CSVs as people make them: read, or refused with one line naming the file and the
row; the build's summary counts matched and unmatched label rows. And ranks beyond the seven from
a labels file, and a collection built before the normalisation opening and searching the same."""

from __future__ import annotations

import codecs
import json
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from imagegen import picture

from indexer.build.sources.folder import FolderSource, read_labels
from indexer.cli import index as index_cli
from indexer.errors import SourceError
from indexer.search.engine import SearchEngine
from indexer.store import Collection

HEADER = "path,scientificName,taxonRank,family,subfamily,tribe,recordedBy,country"
ROWS = [
    "a/1.png,Felis catus,species,Felidae,Felinae,,Tomás Ruíz,USA",
    "a/2.png,Panthera leo,species,Felidae,Pantherinae,Pantherini,José,Kenya",
    "b/3.png,Carabus auratus,species,Carabidae,Carabinae,Carabini",  # short: no recordedBy, no country
    "b/4.png,Felinae,subfamily,Felidae,,,Ann,Deutschland",
    "gone/5.png,Canis lupus,species,Canidae,,,Bo,UK",  # names no image
]


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i, rel in enumerate(["a/1.png", "a/2.png", "b/3.png", "b/4.png", "b/6.png"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        picture(i).save(root / rel)
    return root


def _write(path: Path, lines: list[str], *, encoding="utf-8", bom=b"", endings=("\r\n", "\n")) -> Path:
    data = bom
    for i, line in enumerate(lines):
        data += (line + endings[i % len(endings)]).encode(encoding)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "encoding, bom",
    [("utf-8", b""), ("utf-8", codecs.BOM_UTF8), ("latin-1", b""), ("cp1252", b""), ("utf-16-le", codecs.BOM_UTF16_LE)],
)
def test_a_labels_file_is_read_whatever_wrote_it(tmp_path, encoding, bom):
    labels = _write(tmp_path / "labels.csv", [HEADER, *ROWS], encoding=encoding, bom=bom)
    table = read_labels(labels)
    rows = {r["relpath"]: r for r in table.to_pylist()}
    assert list(rows) == ["a/1.png", "a/2.png", "b/3.png", "b/4.png", "gone/5.png"]
    assert rows["a/1.png"]["recordedBy"] == "Tomás Ruíz" and rows["a/1.png"]["scientificName"] == "Felis catus"
    assert rows["b/3.png"]["recordedBy"] is None and rows["b/3.png"]["tribe"] == "Carabini"  # the short row
    assert "path" not in table.column_names  # the BOM did not stick to the first header


def test_semicolons_lone_carriage_returns_and_quoted_line_breaks(tmp_path):
    lines = ["path;scientificName;locality", 'a/1.png;Felis catus;"Kew,\r\nRichmond"', "a/2.png;Panthera leo;Tsavo"]
    labels = _write(tmp_path / "labels.csv", lines, endings=("\r",))
    rows = read_labels(labels).to_pylist()
    assert [r["relpath"] for r in rows] == ["a/1.png", "a/2.png"]
    assert rows[0]["locality"] == "Kew,\r\nRichmond"


def test_a_row_with_values_past_the_header_is_refused_naming_the_file_and_line(tmp_path):
    lines = [HEADER, ROWS[0], "a/2.png,Panthera leo,species,Felidae,Pantherinae,Pantherini,José,Kenya,extra,more"]
    labels = _write(tmp_path / "labels.csv", lines)
    with pytest.raises(SourceError) as err:
        read_labels(labels)
    message = str(err.value)
    assert str(labels) in message and "line 3" in message and "10 fields where the header has 8" in message
    assert "\n" not in message
    # trailing empty fields (a spreadsheet's extra separators) are fine
    _write(labels, [HEADER, ROWS[0] + ",,", ROWS[1]])
    assert len(read_labels(labels)) == 2


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    labels = _write(tmp_path / "labels.csv", ["path,country,Country,country", ROWS[0][:20]])
    with pytest.raises(SourceError, match=r"names 'country' twice \(columns 2 and 4\)"):
        read_labels(labels)


def test_the_folder_source_counts_matched_and_unmatched_label_rows(tmp_path):
    root = _folder(tmp_path)
    labels = _write(tmp_path / "labels.csv", [HEADER, *ROWS], encoding="latin-1")
    source = FolderSource(root, labels=labels)
    rows = [r for b in source.scan() for r in b.to_pylist()]
    assert len(rows) == 5
    assert {k: v for k, v in source.report.items() if k != "warnings"} == {
        "label_rows": 5,
        "label_rows_matched": 4,
        "label_rows_unmatched": 1,
        "images_without_labels": 1,
    }
    warnings = " ".join(source.report["warnings"])
    assert "not UTF-8" in warnings and "1 rows of labels.csv name no image" in warnings and "gone/5.png" in warnings


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_source):
    tmp = tmp_path_factory.mktemp("labels")
    root = _folder(tmp)
    labels = _write(tmp / "labels.csv", [HEADER, *ROWS], encoding="cp1252", bom=b"")
    args = ["build", str(root), "--labels", str(labels), "--out", str(tmp / "c"), "--model", tiny_model_source]
    run = CliRunner().invoke(index_cli.main, [*args, "--device", "cpu", "--workers", "0"])
    assert run.exit_code == 0, run.output
    return tmp, root, labels, run.output


@pytest.mark.slow
def test_the_build_summary_counts_label_rows(built):
    _, _, _, output = built
    assert "label rows 5, label rows matched 4, label rows unmatched 1, images without labels 1" in output
    assert "labels.csv is not UTF-8" in output


def _names(engine, where):
    return sorted(h.get("scientificName") for h in engine.browse([where], k=20).hits)


@pytest.mark.slow
def test_ranks_beyond_the_seven_are_findable(built):
    tmp, _, _, _ = built
    engine = SearchEngine.open(tmp / "c")
    assert _names(engine, "taxon=Felinae") == ["Felinae", "Felis catus"]  # the subfamily and what it holds
    assert _names(engine, "taxon=Carabini") == ["Carabus auratus"]
    assert _names(engine, "taxon=tribe Pantherini") == ["Panthera leo"]
    (felinae,) = engine.resolve_taxon("Felinae")
    assert (felinae.rank, felinae.higher()[-1]) == ("subfamily", "Felidae")
    result = engine.search("Felinae", k=2)
    assert result.interpretation.startswith("subfamily Felinae") and "Felidae Felinae" in (result.prompt or "")


def _make_old(col: Path) -> None:
    """Rewrite a collection's segments as the version before the normalisation wrote them: without
    the columns it added (the ranks beyond the seven it kept in ``extra``, as every unknown column),
    and with the values as the publisher wrote them."""
    lifted = ("superfamily", "subfamily", "tribe", "subtribe")
    added = {"verbatim", "meta_version", *lifted}
    for seg in sorted((col / "segments").glob("seg-*.parquet")):
        table = pq.read_table(seg)
        rows = table.to_pylist()
        for r in rows:
            for k, v in json.loads(r.get("verbatim") or "{}").items():
                r[k] = v
            extra = {**json.loads(r.get("extra") or "{}"), **{c: r[c] for c in lifted if r[c] is not None}}
            r["extra"] = json.dumps(extra) if extra else None
        names = [n for n in table.column_names if n not in added and not n.startswith("_fold_")]
        old = pa.Table.from_pylist([{n: r[n] for n in names} for r in rows], schema=table.select(names).schema)
        pq.write_table(old, seg)


@pytest.mark.slow
def test_a_collection_built_before_opens_searches_the_same_and_the_next_build_stores_it(built, tiny_model_source):
    tmp, root, labels, _ = built
    old = tmp / "old"
    shutil.copytree(tmp / "c", old)
    _make_old(old)
    segment = next((old / "segments").glob("seg-*.parquet"))
    assert "meta_version" not in pq.read_schema(segment).names
    assert {r["country"] for r in pq.read_table(segment, columns=["country"]).to_pylist()} >= {"USA", "Deutschland"}
    engine = SearchEngine.open(old)
    assert len(engine.browse(["country=United States"], k=9).hits) == 1
    assert len(engine.browse(["country=DE"], k=9).hits) == 1
    assert _names(engine, "recordedBy~tomas ruiz") == ["Felis catus"]
    assert _names(engine, "taxon=Felinae") == ["Felinae", "Felis catus"]
    (hit,) = engine.browse(["country=Germany"], k=1).hits
    assert json.loads(hit.get("verbatim"))["country"] == "Deutschland"
    assert Collection.open(old).snapshot().segments_to_normalise()
    args = ["build", str(root), "--labels", str(labels), "--out", str(old), "--device", "cpu", "--workers", "0"]
    run = CliRunner().invoke(index_cli.main, args)
    assert run.exit_code == 0, run.output
    assert "0 encoded" in run.output  # only the metadata is rewritten
    snap = Collection.open(old).snapshot()
    live = duckdb.sql(f"SELECT count(*), count(*) FILTER (WHERE meta_version IS NULL) FROM ({snap.images_sql()})")
    assert live.fetchall() == [(5, 0)]  # every live row is stored normalised (the old ones retired)
    assert _names(SearchEngine.open(old), "country=US") == ["Felis catus"]


def test_an_empty_folder_build_fails_unless_allowed(tmp_path, tiny_model_source):
    (tmp_path / "empty").mkdir()
    args = ["build", str(tmp_path / "empty"), "--out", str(tmp_path / "c"), "--model", tiny_model_source]
    run = CliRunner().invoke(index_cli.main, args)
    assert run.exit_code == 1 and "has no images" in run.output and "--allow-empty" in run.output
    run = CliRunner().invoke(index_cli.main, [*args, "--allow-empty"])
    assert run.exit_code == 0, run.output
