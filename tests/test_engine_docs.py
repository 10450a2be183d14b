"""The README's "Search" section stays true: its Python runs and its bioclip-search lines work."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner
from imagegen import make_folder, picture

from indexer.build import BuildOptions, build
from indexer.build.sources import FolderSource
from indexer.cli import search as search_cli

ROOT = Path(__file__).resolve().parents[1]


def search_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Search\n")
    end = text.index("\n## ", start + 5)
    return text[start:end]


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", search_section(), re.S)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, tiny_model_source):
    """A folder holding photos.collection (60 labelled images), query.jpg and photo.jpg."""
    from bioclip import load_model

    root = tmp_path_factory.mktemp("readme")
    folder = make_folder(root / "images", 60)
    model = load_model(tiny_model_source, device="cpu")
    build(
        root / "photos.collection",
        [FolderSource(folder, labels=folder / "labels.csv")],
        model=model,
        options=BuildOptions(workers=0),
    )
    picture(1001).save(root / "query.jpg")
    picture(1002).save(root / "photo.jpg")
    return root


def test_the_python_example_runs(photos, monkeypatch, capsys):
    code = blocks("python")
    assert code, "no Python example in the Search section"
    monkeypatch.chdir(photos)
    for snippet in code:
        exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert 'family Corvidae, as "a photo of Animalia Chordata Aves Passeriformes Corvidae.", where ' in out
    assert "images pass;" in out


def test_every_bioclip_search_line_works(photos, monkeypatch):
    monkeypatch.chdir(photos)
    lines = [ln for b in blocks("bash") for ln in b.splitlines() if ln.startswith("bioclip-search ")]
    assert len(lines) >= 8
    for line in lines:
        args = shlex.split(line, comments=True)[1:]
        result = CliRunner().invoke(search_cli.main, args)
        assert result.exit_code == 0, (line, result.output)
        assert "Traceback" not in result.output


def test_every_search_option_is_documented():
    section = search_section()
    for param in search_cli.main.params:
        for opt in getattr(param, "opts", []):
            if opt.startswith("--") and opt not in ("--help", "--verbose", "--quiet", "--device", "--json"):
                assert opt in section, f"{opt} is not in the README's Search section"
