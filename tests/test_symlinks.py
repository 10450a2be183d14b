"""Symbolic links out of a source folder: skipped and counted unless --follow-symlinks, whose images
the app may then show; links inside the folder are followed as before."""

from __future__ import annotations

import json

from click.testing import CliRunner
from imagegen import make_folder

from indexer.cli import index as index_cli
from indexer.media.library import MediaLibrary
from indexer.search import SearchEngine


def _build(folder, col, model, *extra):
    args = ["build", str(folder), "--out", str(col), "--model", model, "--device", "cpu", "--workers", "0"]
    return CliRunner().invoke(index_cli.main, [*args, *extra])


def test_links_out_of_the_folder_are_counted_and_followed_only_when_asked(tmp_path, tiny_model_source):
    outside = make_folder(tmp_path / "elsewhere", 3, labels=False)
    secret = outside / "b" / "secret.png"  # outside, and no link leads to it
    secret.write_bytes((outside / "a" / "img_0000.png").read_bytes())
    folder = make_folder(tmp_path / "imgs", 4, labels=False)
    (folder / "linked").symlink_to(outside / "a", target_is_directory=True)  # 2 images outside
    (folder / "alias.png").symlink_to(outside / "b" / "img_0001.png")
    (folder / "inside.png").symlink_to(folder / "a" / "img_0000.png")  # within the folder: followed
    col = tmp_path / "col"

    plain = _build(folder, col, tiny_model_source)
    assert plain.exit_code == 0, plain.output
    assert "links not followed 2" in plain.output
    assert "--follow-symlinks" in plain.output and "alias.png ->" in plain.output
    engine = SearchEngine.open(col, refresh_interval=None)
    keys = {h.location for h in engine.browse(k=100).hits}
    assert keys == {str(p) for p in folder.rglob("*.png") if "linked" not in p.parts and p.name != "alias.png"}
    assert len(keys) == 5  # 4 images and the link inside the folder

    followed = _build(folder, col, tiny_model_source, "--follow-symlinks", "--json")
    assert followed.exit_code == 0, followed.output
    report = json.loads(followed.output)
    assert report["encoded"] + report["reused"] == 3 and not report["source_reports"][str(folder)].get(
        "links_not_followed"
    )
    engine = SearchEngine.open(col, refresh_interval=None)
    hits = engine.browse(k=100).hits
    assert len(hits) == 8
    # The app shows the images the followed links lead to (it refuses what is outside its sources).
    media = MediaLibrary.for_engine(engine)
    linked = [h for h in hits if "/linked/" in h.location or h.location.endswith("alias.png")]
    assert len(linked) == 3 and all(media.read(h) for h in linked)
    assert not media.read(_Fake(str(secret), str(folder)))


class _Fake:
    """A hit whose location is a file outside the sources (never indexed)."""

    def __init__(self, location: str, source: str):
        self.location = location
        self.metadata = {"source": source}
