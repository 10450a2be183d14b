"""The shapes of bioclip-search's output for programs: one JSON object, CSV with fixed columns."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from imagegen import make_folder

from indexer.cli import index as index_cli
from indexer.cli import search as search_cli
from indexer.search.output import CSV_COLUMNS

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def col(tmp_path_factory, tiny_model_source):
    tmp = tmp_path_factory.mktemp("output")
    folder = make_folder(tmp / "imgs", 12)
    lines = (folder / "labels.csv").read_text().splitlines()
    # two columns that are not Darwin Core terms: they go to ``extra``
    lines = [lines[0] + ",preparation,drawer"] + [f"{line},skin-{i},D{i % 3}" for i, line in enumerate(lines[1:])]
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    path = tmp / "col"
    args = ["build", str(folder), "--labels", str(folder / "labels.csv"), "--out", str(path)]
    r = CliRunner().invoke(index_cli.main, [*args, "--model", tiny_model_source, "--device", "cpu", "--workers", "0"])
    assert r.exit_code == 0, r.output
    return path


def run(*args):
    r = CliRunner().invoke(search_cli.main, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r


def test_json_is_one_object_with_interpretation_notices_paging_and_extra_as_an_object(col):
    out = json.loads(run(col, "Corvus coraxx", "--k", 4, "--json").stdout)
    assert out["interpretation"] == 'free text "Corvus coraxx"'
    assert any("did you mean Corvus corax?" in n for n in out["notices"])
    assert (out["offset"], out["k"], out["has_more"], out["next_offset"]) == (0, 4, True, 4)
    assert out["candidates"] is None and out["generation"] >= 1 and out["prompts"] == ["Corvus coraxx"]
    assert len(out["hits"]) == 4
    assert out["query_kind"] == "text" and out["recall"]["kind"] == "text" and out["recall"]["recall_at_10"] == 1.0
    assert out["searched_as"].startswith("searched as a text query (exact search")
    assert json.loads(run(col, "--id", 2, "--json").stdout)["query_kind"] == "image"
    for hit in out["hits"]:
        assert isinstance(hit["extra"], dict) and {"preparation", "drawer"} <= set(hit["extra"])
        assert isinstance(hit["id"], int) and isinstance(hit["score"], float) and "meta_hash" not in hit
    last = json.loads(run(col, "Corvus corax", "--k", 10, "--offset", 8, "--where", "year>=1900", "--json").stdout)
    assert (last["has_more"], last["next_offset"], last["candidates"]) == (False, None, 12)
    assert last["interpretation"].startswith("species Corvus corax")


def test_csv_has_the_same_documented_columns_whatever_the_hits_hold(col):
    def header_and_rows(*args):
        rows = list(csv.reader(io.StringIO(run(col, *args, "--format", "csv").stdout)))
        return rows[0], rows[1:]

    with_coords, rows = header_and_rows("Corvus", "--where", "has_coordinates=true", "--k", 3)
    without, rows_without = header_and_rows("Corvus", "--where", "has_coordinates=false", "--k", 3)
    nothing, none = header_and_rows("Corvus", "--where", "catalogNumber=NOPE")
    grouped, grows = header_and_rows("--id", 2, "--group", "similar", "--group-similarity", "-1")
    assert with_coords == without == nothing == grouped == list(CSV_COLUMNS)
    assert len(rows) == len(rows_without) == 3 and none == [] and len(grows) == 1
    as_dicts = [dict(zip(CSV_COLUMNS, r)) for r in rows + rows_without]
    assert [d["position"] for d in as_dicts] == ["1", "2", "3", "1", "2", "3"]
    assert all(d["decimalLatitude"] for d in as_dicts[:3]) and not any(d["decimalLatitude"] for d in as_dicts[3:])
    assert json.loads(as_dicts[0]["extra"])["preparation"].startswith("skin-")
    assert len(dict(zip(CSV_COLUMNS, grows[0]))["group"].split()) == 10
    # the order is documented in the README, as the header line itself
    assert ",".join(CSV_COLUMNS) in README.read_text(encoding="utf-8")
