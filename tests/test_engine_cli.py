"""bioclip-search: every query type, filters, grouping and output format through click's runner."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from imagegen import make_folder, picture

from indexer.cli import index as index_cli
from indexer.cli import search as search_cli
from indexer.search.engine import SearchEngine
from indexer.search.query import Term
from indexer.store import Collection


@pytest.fixture(scope="module")
def col(tmp_path_factory, tiny_model_source):
    tmp = tmp_path_factory.mktemp("search-cli")
    folder = make_folder(tmp / "imgs", 20)
    path = tmp / "col"
    r = CliRunner().invoke(
        index_cli.main,
        [
            "build",
            str(folder),
            "--labels",
            str(folder / "labels.csv"),
            "--out",
            str(path),
            "--model",
            tiny_model_source,
            "--device",
            "cpu",
            "--workers",
            "0",
        ],
    )
    assert r.exit_code == 0, r.output
    picture(777).save(tmp / "photo.jpg")
    return path, folder, tmp / "photo.jpg"


def run(*args):
    return CliRunner().invoke(search_cli.main, [str(a) for a in args])


def ids_of(result) -> list[int]:
    assert result.exit_code == 0, result.output
    return [h["id"] for h in json.loads(result.stdout)["hits"]]


def test_a_combined_query_equals_the_python_api(col):
    path, _, photo = col
    got = ids_of(run(path, "Corvus", "--image", photo, "--minus", "juvenile", "--id", 3, "--k", 5, "--json"))
    engine = SearchEngine.open(path, refresh_interval=None)
    want = engine.search(query=Term.text("Corvus") + Term.image(str(photo)) + Term.id(3) - Term.text("juvenile"), k=5)
    assert got == [h.id for h in want.hits] and 3 not in got
    same = ids_of(
        run(
            path,
            "--term",
            "text=Corvus",
            "--term",
            f"image:1={photo}",
            "--term",
            "id=3",
            "--term",
            "text:-1=juvenile",
            "--k",
            5,
            "--json",
        )
    )
    assert same == got


def test_term_weights_and_vector_files(col, tmp_path):
    path, _, _ = col
    engine = SearchEngine.open(path, refresh_interval=None)
    stored = Collection.open(path).snapshot().get_vectors([5])[0]
    np.save(tmp_path / "q.npy", stored)
    got = ids_of(run(path, "--term", f"vector={tmp_path / 'q.npy'}", "--k", 1, "--json"))
    assert got == [5]
    heavy = ids_of(
        run(path, "--term", "text:3=Corvus", "--term", f"vector:0.1={tmp_path / 'q.npy'}", "--k", 3, "--json")
    )
    assert heavy == [h.id for h in engine.search(query=3 * Term.text("Corvus") + Term.vector(stored, 0.1), k=3).hits]


def test_filters_sets_ranges_and_taxa(col):
    path, _, _ = col
    out = run(
        path,
        "bird",
        "--where",
        "country=kenya",
        "--where",
        "country=Sweden",
        "--where",
        "year=1900..1950",
        "--taxon",
        "Corvidae",
        "--taxon",
        "Felidae",
        "--k",
        20,
        "--json",
    )
    hits = json.loads(out.stdout)["hits"]
    assert hits and all(h["country"] in ("Kenya", "Sweden") and 1900 <= h["year"] <= 1950 for h in hits)
    assert all(h["family"] in ("Corvidae", "Felidae") for h in hits)
    quoted = run(path, "bird", "--where", "catalogNumber=CAT-1' OR '1'='1", "--json")
    assert quoted.exit_code == 0 and json.loads(quoted.stdout)["hits"] == []
    assert "no image matches the filters" in quoted.stderr


def test_grouping_table_and_csv(col):
    path, _, _ = col
    table = run(path, "--id", 4, "--group", "similar", "--group-similarity", "-1", "--k", 2)
    assert table.exit_code == 0, table.output
    assert "in its group: id" in table.stdout  # every picture is "similar" at -1: one group holds the rest
    assert "grouped by similarity >= -1" in table.stderr
    rows = list(
        csv.DictReader(
            io.StringIO(
                run(path, "--id", 4, "--group", "similar", "--group-similarity", "-1", "--format", "csv").stdout
            )
        )
    )
    assert len(rows) == 1 and len(rows[0]["group"].split()) == 18
    plain = list(csv.DictReader(io.StringIO(run(path, "Corvidae", "--group", "record", "--format", "csv").stdout)))
    assert len(plain) == 10 and not any(row["group"] for row in plain)  # catalogue numbers all differ: no groups


def test_paging_and_min_score(col):
    path, _, _ = col
    first = ids_of(run(path, "Corvidae", "--k", 5, "--json"))
    second = ids_of(run(path, "Corvidae", "--k", 5, "--offset", 5, "--json"))
    assert first + second == ids_of(run(path, "Corvidae", "--k", 10, "--json"))
    table = run(path, "Corvidae", "--k", 5)
    assert "more: --offset 5" in table.stderr
    assert ids_of(run(path, "Corvidae", "--min-score", 2, "--json")) == []


def test_fields(col):
    path, _, _ = col
    r = run(path, "--fields")
    assert r.exit_code == 0 and "taxon" in r.stdout and "preparations" in r.stdout and "year" in r.stdout
    fields = {f["field"]: f["type"] for f in json.loads(run(path, "--fields", "--json").stdout)}
    assert fields["year"] == "integer" and fields["has_coordinates"] == "true/false"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give TEXT"),
        (["--minus", "crow"], "positive weight"),
        (["crow", "--minus", "crow"], "cancel"),
        (["--term", "colour=red"], "cannot read query term"),
        (["--term", "text:heavy=crow"], "weight"),
        (["--term", "vector=missing.npy"], "cannot read the vector file"),
        (["crow", "--where", "contry=Kenya"], "did you mean 'country'?"),
        (["crow", "--where", "year~19"], "year is a number"),
        (["crow", "--where", "year>="], "has no value"),
        (["crow", "--where", "has_coordinates=perhaps"], "true or false"),
        (["crow", "--group", "nearby"], "Invalid value for '--group'"),
        (["--id", "-5"], "no image with id -5"),
    ],
)
def test_bad_queries_are_messages_not_tracebacks(col, args, message):
    path, _, _ = col
    result = run(path, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_notices_go_to_stderr_and_json_stays_clean(col, tiny_model_source):
    path, _, _ = col
    long = " ".join(["feather"] * 100)
    r = run(path, long, "--json")
    assert r.exit_code == 0 and "longer than the model reads" in r.stderr
    assert isinstance(json.loads(r.stdout)["hits"], list)
    r = run(path, "Corvus coraxx", "--json")
    assert "did you mean Corvus corax?" in r.stderr


def test_help_shows_examples_of_every_query_type():
    out = CliRunner().invoke(search_cli.main, ["--help"]).output
    for needle in (
        '"Corvus corax"',
        "--image query.jpg",
        "--id 42",
        "--minus juvenile",
        "--term text:-0.5=juvenile",
        "--where country=Kenya",
        "year=1900..1950",
        "--group record",
        "--fields",
        "FIELD~TEXT",
    ):
        assert needle in out, needle
