"""The console scripts through click's test runner, and their documentation."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from imagegen import make_folder

from indexer.cli import app as app_cli
from indexer.cli import demo as demo_cli
from indexer.cli import index as index_cli
from indexer.cli import search as search_cli

ROOT = Path(__file__).resolve().parents[1]

# Every subcommand the group has (each a module of indexer/cli/index/), and the other scripts.
COMMANDS = {f"bioclip-index {name}": (index_cli.main, [name]) for name in index_cli.main.commands} | {
    "bioclip-search": (search_cli.main, []),
    "bioclip-app": (app_cli.main, []),
    "bioclip-demo": (demo_cli.main, []),
}


def test_the_index_group_finds_its_subcommand_modules():
    assert {"build", "info", "failures", "reindex"} <= set(index_cli.main.commands)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example_and_is_in_the_readme(name):
    main, args = COMMANDS[name]
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert name.split()[0] in result.output or name.split()[-1] in result.output
    readme = (ROOT / "README.md").read_text()
    assert name in readme, f"{name} is not documented in README.md"


def test_build_and_import_share_the_index_options_in_the_same_order():
    def index_params(command):
        names = ["no_index", "index_type", "memory_budget", "recall_target"]
        params = [p for p in command.params if p.name in names]
        assert [p.name for p in params] == names
        return [{k: v for k, v in p.to_info_dict().items() if k != "help"} for p in params]

    build, imp = index_cli.main.commands["build"], index_cli.main.commands["import"]
    assert index_params(build) == index_params(imp)
    helps = [
        [p.help for p in c.params if p.name in ("no_index", "memory_budget", "recall_target")] for c in (build, imp)
    ]
    assert helps[0] == helps[1]


def test_console_scripts_are_declared():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {
        *("bioclip-index", "bioclip-search", "bioclip-app", "bioclip-demo"),
        *("bioclip-predict", "bioclip-embed", "bioclip-serve"),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_source):
    tmp = tmp_path_factory.mktemp("cli")
    folder = make_folder(tmp / "imgs", 12)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    col = tmp / "col"
    result = CliRunner().invoke(
        index_cli.main,
        [
            "build",
            str(folder),
            "--labels",
            str(folder / "labels.csv"),
            "--out",
            str(col),
            "--model",
            tiny_model_source,
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--workers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    return col, folder, result.output


def test_build_prints_a_summary(built):
    _, _, output = built
    assert "encoded" in output and "failed      1" in output and "bioclip-index failures" in output


def test_info_json_has_the_documented_fields(built):
    col, _, _ = built
    result = CliRunner().invoke(index_cli.main, ["info", str(col), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["images"] == 12 and info["failures"] == 1
    assert info["dimension"] == 64 and info["model"].startswith("local-dir:")
    assert info["index"]
    plain = CliRunner().invoke(index_cli.main, ["info", str(col)])
    assert plain.exit_code == 0 and "failures by reason" in plain.output


def test_failures_csv(built):
    col, _, _ = built
    result = CliRunner().invoke(index_cli.main, ["failures", str(col)])
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 1 and rows[0]["location"].endswith("broken.jpg") and rows[0]["reason"]


def test_search_text_json_hits_have_id_score_location_metadata(built):
    col, _, _ = built
    result = CliRunner().invoke(search_cli.main, [str(col), "Corvidae", "--k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert len(hits) == 3
    for h in hits:
        assert {"id", "score", "location", "scientificName", "catalogNumber"} <= set(h)


def test_search_by_image_finds_it_first_and_by_id_excludes_itself(built):
    col, folder, _ = built
    img = folder / "a" / "img_0004.png"
    result = CliRunner().invoke(search_cli.main, [str(col), "--image", str(img), "--k", "2", "--json"])
    hits = json.loads(result.stdout)["hits"]
    assert hits[0]["location"] == str(img)
    result = CliRunner().invoke(search_cli.main, [str(col), "--id", str(hits[0]["id"]), "--json"])
    assert hits[0]["id"] not in [h["id"] for h in json.loads(result.stdout)["hits"]]


def test_search_filters_and_csv(built):
    col, _, _ = built
    result = CliRunner().invoke(
        search_cli.main, [str(col), "bird", "--where", "country=Kenya", "--where", "year>=1900", "--format", "csv"]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows and all(r["country"] == "Kenya" for r in rows)


@pytest.mark.parametrize(
    "args, message",
    [
        (["search", "NOPE", "x"], "collection not found"),
        (["search", "COL", "x", "--where", "colour=red"], "no field named 'colour'"),
        (["search", "COL", "x", "--where", "year>=old"], "needs a number"),
        (["search", "COL", "   "], "empty"),
        (["search", "COL", "--image", "README"], "not an image"),
        (["search", "COL", "--id", "99999"], "no image with id 99999"),
    ],
)
def test_bad_input_gets_a_message_not_a_traceback(built, args, message):
    col, _, _ = built
    args = [str(col) if a == "COL" else str(ROOT / "README.md") if a == "README" else a for a in args[1:]]
    result = CliRunner().invoke(search_cli.main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_build_errors_are_messages(tmp_path, built, tiny_model_source):
    col, folder, _ = built
    r = CliRunner().invoke(index_cli.main, ["build", str(tmp_path / "missing"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 1 and "source not found" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(index_cli.main, ["build", str(folder), "--out", str(col), "--model", "bioclip-2"])
    assert r.exit_code == 1 and "cannot be mixed" in r.output
    bad = tmp_path / "labels.csv"
    bad.write_text("name,scientificName\nx.jpg,Corvus corax\n")
    r = CliRunner().invoke(
        index_cli.main,
        ["build", str(folder), "--labels", str(bad), "--out", str(tmp_path / "c2"), "--model", tiny_model_source],
    )
    assert r.exit_code == 1 and "no path column" in r.output and str(bad) in r.output
