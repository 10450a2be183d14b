"""The normalisation on real archives (../shared/data; skipped when absent): the value spellings that
GBIF downloads, IPT archives and museum exports actually contain (see /work/notes/research-dwc.md)."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import duckdb

from indexer.build.sources._dwca_meta import parse_meta_xml
from indexer.build.sources.dwca import DwcaSource
from indexer.dwc import BASIS_OF_RECORD, normalise_query
from indexer.store.schema import METADATA_COLUMNS, canonical_column, quote_ident


def _table(con, rows: list[dict]) -> None:
    cols = ", ".join(f"{quote_ident(c)} VARCHAR" for c in METADATA_COLUMNS)
    con.execute(f"CREATE OR REPLACE TABLE t (key VARCHAR, {cols})")
    for r in rows:
        keys = [k for k in r if k == "key" or k in METADATA_COLUMNS]
        con.execute(
            f"INSERT INTO t ({', '.join(quote_ident(k) for k in keys)}) VALUES ({', '.join('?' for _ in keys)})",
            [None if r[k] is None else str(r[k]) for k in keys],
        )


def _normalised(con) -> tuple[list[dict], dict]:
    n = normalise_query(con, "t")
    rel = con.execute(n.sql)
    cols = [d[0] for d in rel.description]
    rows = [dict(zip(cols, r)) for r in rel.fetchall()]
    n.drop(con)
    return rows, n.report


def _core_rows(archive: Path, tmp_path: Path) -> list[dict]:
    """The core rows of an archive without media, read through its meta.xml (tab-separated, no quotes)."""
    with zipfile.ZipFile(archive) as zf:
        spec = parse_meta_xml(zf.read("meta.xml"), str(archive)).core
        zf.extract(spec.locations[0], tmp_path)
    con = duckdb.connect()
    index: dict[str, int] = {}
    for f in spec.fields:
        canon = canonical_column(f.term)
        if f.index is not None and canon is not None:
            index.setdefault(canon, f.index)
    sel = ", ".join(f"column{i:02d} AS {quote_ident(c)}" for c, i in index.items())  # the file has 64 columns
    rel = con.execute(
        f"SELECT {sel} FROM read_csv(?, header=false, delim='\t', quote='', all_varchar=true, null_padding=true)",
        [str(tmp_path / spec.locations[0])],
    )
    names = [d[0] for d in rel.description]
    return [dict(zip(names, r), key=str(n)) for n, r in enumerate(rel.fetchall())]


def test_a_2013_gbif_download(shared_data, tmp_path):
    rows = _core_rows(shared_data / "dwca-python-dwca-reader" / "gbif-results.zip", tmp_path)
    assert len(rows) == 158
    con = duckdb.connect()
    _table(con, rows)
    out, report = _normalised(con)
    assert Counter(r["basisOfRecord"] for r in out) == {"PreservedSpecimen": 151, "Occurrence": 7}
    assert {r["basisOfRecord"] for r in out} <= set(BASIS_OF_RECORD)
    # that format put the binomial in specificEpithet: the epithet is recovered, the original kept
    assert {r["specificEpithet"] for r in out} == {"fluviatilis"}
    assert json.loads(out[0]["verbatim"])["specificEpithet"] == "Tetraodon fluviatilis"
    assert {r["genus"] for r in out} == {"Tetraodon"}
    codes = Counter(r["countryCode"] for r in out)
    assert codes["IN"] >= 23 and codes["MM"] >= 6
    # names like "golfe du bengale" or "oceanie" name no country: kept as written, and counted
    assert report["country"]["unresolved"] > 0
    assert all(r["countryCode"] is None for r in out if r["country"] in ("golfe du bengale", "oceanie"))


def test_an_nhm_export_with_media(shared_data):
    source = DwcaSource(shared_data / "dwca-gbif-dwca-io" / "nhm-occurrence-multimedia")
    rows = [r for b in source.scan() for r in b.to_pylist()]
    assert len(rows) == 4
    con = duckdb.connect()
    _table(con, rows)
    out, _ = _normalised(con)
    assert {(r["basisOfRecord"], r["license"], r["country"], r["countryCode"]) for r in out} == {
        ("PreservedSpecimen", "CC-BY-4.0", "United Kingdom", "GB")
    }
    assert json.loads(out[0]["verbatim"])["basisOfRecord"] == "Specimen"
    assert {r["genus"] for r in out} == {"Ornithocheirus"}


def test_a_2016_gbif_simple_csv_download_is_recognised(shared_data):
    source = DwcaSource(shared_data / "dwca-python-dwca-reader" / "dwca-simple-csv.zip")
    assert [r for b in source.scan() for r in b.to_pylist()] == []
    assert source.report["gbif_simple_csv"] and "no media links" in source.report["empty_because"]
    assert source.report["records"] == 3
