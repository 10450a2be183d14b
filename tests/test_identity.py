"""Image identity: an id survives edits of its metadata; new pixels get a new id, and the old id
says which one replaced it. Collections written before (format 1) open and answer the same."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from imagegen import make_folder, picture

from indexer.build import BuildOptions, build
from indexer.build.sources import FolderSource
from indexer.cli import search as search_cli
from indexer.search.engine import SearchEngine
from indexer.store import Collection

V1_FIXTURE = Path(__file__).parent / "data" / "v1-collection"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from bioclip import load_model
    from bioclip.testing import write_random_model

    return load_model(f"local-dir:{write_random_model(tmp_path_factory.mktemp('m') / 'tiny')}", device="cpu")


def _build(col, folder, model, **opts):
    src = FolderSource(folder, labels=folder / "labels.csv")
    return build(col, [src], model=model, options=BuildOptions(**{"workers": 0, **opts}))


def _ids(col) -> dict[str, int]:
    con = Collection.open(col).snapshot().connect()
    return dict(con.execute("SELECT key, id FROM images").fetchall())


def _edit_labels(folder: Path, old: str, new: str) -> None:
    text = (folder / "labels.csv").read_text()
    assert old in text
    (folder / "labels.csv").write_text(text.replace(old, new))


def _add_column(folder: Path, name: str, value_of) -> None:
    lines = (folder / "labels.csv").read_text().splitlines()
    out = [lines[0] + f",{name}"] + [f"{line},{value_of(i)}" for i, line in enumerate(lines[1:])]
    (folder / "labels.csv").write_text("\n".join(out) + "\n")


def test_an_edited_label_and_a_new_column_keep_every_id_vector_and_the_index(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 8)
    col = tmp_path / "col"
    _build(col, folder, model)
    before = _ids(col)
    snap = Collection.open(col).snapshot()
    vectors_before = dict(zip(snap.load_vectors()[0].tolist(), snap.load_vectors()[1]))
    index_before = snap.generation.index["path"]

    _edit_labels(folder, "CAT-3,", "CAT-3-FIXED,")
    _add_column(folder, "preparation", lambda i: f"prep-{i}")
    r = _build(col, folder, model)

    assert (r.metadata_updated, r.encoded, r.replaced) == (8, 0, 0)
    assert _ids(col) == before  # same key -> same id, for every image
    snap = Collection.open(col).snapshot()
    gen = snap.generation
    assert gen.images == 8 and gen.updates and gen.deleted == 0 and gen.next_id == 8
    assert gen.index["path"] == index_before  # the ANN index was not touched
    ids, vecs = snap.load_vectors()
    for i, v in zip(ids.tolist(), vecs):
        np.testing.assert_array_equal(v, vectors_before[i])
    engine = SearchEngine.open(col, model=model)
    fixed = before[str(folder / "b" / "img_0003.png")]
    hit = engine.get([fixed])[0]
    assert hit.get("catalogNumber") == "CAT-3-FIXED"
    assert json.loads(hit.get("extra"))["preparation"] == "prep-3"
    assert hit.get("sha256") and hit.get("width") == 96  # carried over from the row it superseded
    assert engine.count(["catalogNumber=CAT-3"]) == 0 and engine.count(["catalogNumber=CAT-3-FIXED"]) == 1
    assert "preparation" in dict(engine.fields())
    # more like this still answers under the old id, which is the current id
    assert fixed not in [h.id for h in engine.similar(fixed, k=3).hits]
    # and a second edit of the same row supersedes the first
    _edit_labels(folder, "CAT-3-FIXED,", "CAT-3-AGAIN,")
    assert _build(col, folder, model).metadata_updated == 1
    assert SearchEngine.open(col, model=model).get([fixed])[0].get("catalogNumber") == "CAT-3-AGAIN"
    assert _ids(col) == before


def test_new_pixels_get_a_new_id_and_the_old_id_says_which_replaced_it(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 6)
    col = tmp_path / "col"
    _build(col, folder, model)
    before = _ids(col)
    changed = str(folder / "a" / "img_0000.png")
    picture(900).save(changed)
    assert _build(col, folder, model).replaced == 1
    middle = _ids(col)[changed]
    picture(901).save(changed)  # changed again: the first id is followed to the newest
    _build(col, folder, model)
    after = _ids(col)
    assert after[changed] not in (before[changed], middle)
    assert {k: v for k, v in after.items() if k != changed} == {k: v for k, v in before.items() if k != changed}

    engine = SearchEngine.open(col, model=model)
    rep = engine.replacement(before[changed])
    assert (rep.new_id, rep.reason) == (after[changed], "changed")
    assert rep.describe() == f"image {before[changed]} was replaced by {after[changed]} (its file changed)"
    assert engine.replacement(middle).new_id == after[changed]
    assert engine.replacement(after[changed]) is None  # live
    assert engine.replacement(10_000) is None  # never an id here

    # a search by the old id follows it, says so, and leaves both out of the results
    res = engine.similar(before[changed], k=10)
    assert any(f"was replaced by {after[changed]}" in n for n in res.notices)
    assert {before[changed], after[changed]}.isdisjoint(h.id for h in res.hits)
    assert f"image {after[changed]}" in res.interpretation
    np.testing.assert_array_equal([h.id for h in res.hits], [h.id for h in engine.similar(after[changed], k=10).hits])


def test_pruned_and_moved_files_say_what_became_of_their_ids(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 6)
    col = tmp_path / "col"
    _build(col, folder, model)
    before = _ids(col)
    gone = str(folder / "a" / "img_0002.png")
    moved_from, moved_to = folder / "b" / "img_0001.png", folder / "b" / "renamed.png"
    os.remove(gone)
    os.rename(moved_from, moved_to)
    r = _build(col, folder, model, prune=True)
    assert r.pruned == 2 and r.reused == 1 and r.encoded == 0
    engine = SearchEngine.open(col, model=model)
    rep = engine.replacement(before[gone])
    assert (rep.new_id, rep.reason) == (None, "pruned")
    assert rep.describe() == f"image {before[gone]} is no longer in this collection (its file is gone)"
    moved = engine.replacement(before[str(moved_from)])
    assert (moved.new_id, moved.reason) == (_ids(col)[str(moved_to)], "moved")
    assert str(moved_to) in moved.describe()
    from indexer.errors import QueryError

    with pytest.raises(QueryError, match="its file is gone"):
        engine.similar(before[gone])


def test_a_changed_file_that_no_longer_reads_says_so(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 3)
    col = tmp_path / "col"
    _build(col, folder, model)
    broken = folder / "a" / "img_0000.png"
    old = _ids(col)[str(broken)]
    broken.write_bytes(broken.read_bytes()[:200])
    assert _build(col, folder, model).replaced_by_failure == 1
    rep = SearchEngine.open(col, model=model).replacement(old)
    assert (rep.new_id, rep.reason) == (None, "unreadable")


def test_a_serving_engine_applies_updates_incrementally_like_a_fresh_open(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 10)
    col = tmp_path / "col"
    _build(col, folder, model)
    engine = SearchEngine.open(col, model=model, refresh_interval=None)
    _edit_labels(folder, "CAT-4,", "CAT-4-FIXED,")
    _edit_labels(folder, "CAT-5,", "CAT-5-FIXED,")
    picture(555).save(folder / "b" / "img_0005.png")  # label edited and pixels changed: a new id
    make_folder(tmp_path / "more", 2, start=20, labels=False)
    shutil.copy(tmp_path / "more" / "a" / "img_0020.png", folder / "a" / "img_0020.png")
    _build(col, folder, model)
    assert engine.refresh()
    fresh = SearchEngine.open(col, model=model, refresh_interval=None)
    every = list(range(Collection.open(col).latest_generation().next_id))
    assert [h.metadata for h in engine.get(every)] == [h.metadata for h in fresh.get(every)]
    assert engine.count(["catalogNumber=CAT-4-FIXED"]) == 1 and engine.count(["catalogNumber=CAT-5-FIXED"]) == 1
    assert engine.count() == fresh.count() == 11


def test_the_writer_keeps_the_newest_row_of_an_id_and_refuses_ids_that_are_not_live(tmp_path):
    col = Collection.create(tmp_path / "c", {"spec": "test"}, dimension=4)
    vecs = np.eye(4, dtype=np.float32)[:3]
    with col.writer() as w:
        w.add(pa.table({"key": ["a", "b", "c"], "catalogNumber": ["1", "2", "3"]}), vecs)
        w.commit()
        w.update(pa.table({"key": ["b"], "catalogNumber": ["2-first"]}), [1])
        w.update(pa.table({"key": ["b"], "catalogNumber": ["2-second"]}), [1])
        w.commit()
        w.update(pa.table({"key": ["c"], "catalogNumber": ["3-new"]}), [2])
        w.retire([2], reason="pruned")
        w.commit()
        with pytest.raises(ValueError, match="not a live image"):
            w.update(pa.table({"key": ["c"]}), [2])
        with pytest.raises(ValueError, match="unknown retirement reason"):
            w.retire([0], reason="because")
    con = col.snapshot().connect()
    assert con.execute('SELECT id, "catalogNumber" FROM images ORDER BY id').fetchall() == [(0, "1"), (1, "2-second")]
    assert col.latest_generation().to_dict()["format_version"] == 2


def test_a_format_1_collection_opens_and_says_what_became_of_its_retired_ids(tmp_path):
    """tests/data/v1-collection was written by bioclip-search before image ids survived label
    edits (commit 7a0febd): CAT-3's label edit re-indexed it (id 4 -> 6), img_0000 changed (0 -> 7),
    img_0005 was renamed and pruned (5 -> 8)."""
    col = tmp_path / "v1.collection"
    shutil.copytree(V1_FIXTURE, col)
    engine = SearchEngine.open(col, refresh_interval=None)
    assert engine.collection.manifest["format_version"] == 1
    assert engine.count() == 6
    assert sorted(h.id for h in engine.browse(k=10).hits) == [1, 2, 3, 6, 7, 8]
    assert [(r.new_id, r.reason) for r in map(engine.replacement, (4, 0, 5))] == [
        (6, "metadata"),
        (7, "changed"),
        (8, "moved"),
    ]
    assert "moved_0005.png" in engine.replacement(5).describe()
    assert [h.id for h in engine.similar(4, k=3).hits] == [h.id for h in engine.similar(6, k=3).hits]

    # written to by this version: an update keeps the id, the old records still answer
    c = Collection.open(col)
    with c.writer() as w:
        w.update(pa.table({"key": [engine.get([6])[0].get("key")], "catalogNumber": ["CAT-3-AGAIN"]}), [6])
        w.commit()
    assert engine.refresh()
    assert engine.get([6])[0].get("catalogNumber") == "CAT-3-AGAIN" and engine.count() == 6
    assert engine.replacement(4).new_id == 6
    assert c.latest_generation().to_dict()["format_version"] == 2


def test_bioclip_search_by_a_replaced_id_says_so_and_follows_it(tmp_path, model):
    folder = make_folder(tmp_path / "imgs", 6)
    col = tmp_path / "col"
    _build(col, folder, model)
    old = _ids(col)[str(folder / "a" / "img_0000.png")]
    picture(900).save(folder / "a" / "img_0000.png")
    _build(col, folder, model)
    new = _ids(col)[str(folder / "a" / "img_0000.png")]
    r = CliRunner().invoke(search_cli.main, [str(col), "--id", str(old), "--k", "3"])
    assert r.exit_code == 0, r.output
    assert f"note: image {old} was replaced by {new} (its file changed); searching with image {new}" in r.stderr
    os.remove(folder / "a" / "img_0000.png")
    _build(col, folder, model, prune=True)
    r = CliRunner().invoke(search_cli.main, [str(col), "--id", str(new)])
    assert r.exit_code == 1 and f"image {new} is no longer in this collection (its file is gone)" in r.stderr
