"""bioclip-index import of Parquet embeddings (TreeOfLife-200M-Embeddings-shaped files written here)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from embfiles import raw_vectors, tol_table, unit, write_tol_shards

from indexer.build.importers import DeclaredModel, ImportColumns, ImportOptions, import_embeddings
from indexer.errors import ModelMismatchError, SourceError
from indexer.search.engine import SearchEngine
from indexer.store import Collection

D = 64  # the tiny model's dimension


@pytest.fixture(scope="module")
def model(tiny_model_source):
    from bioclip import load_model

    return load_model(tiny_model_source, device="cpu")


def _import(col, sources, model, **opts):
    return import_embeddings(
        col, [str(s) for s in sources], model=DeclaredModel(model=model), options=ImportOptions(**opts)
    )


def _stored(col):
    snap = Collection.open(col).snapshot()
    con = snap.connect()
    rows = con.execute(
        'SELECT id, key, genus, "specificEpithet", "family", "basisOfRecord", "mediaURL", location, extra '
        "FROM images ORDER BY key"
    ).fetchall()
    vecs = snap.get_vectors([r[0] for r in rows])
    return rows, vecs


def test_float16_unnormalised_shards_import_normalised_with_ranks_and_metadata(tmp_path, model):
    raw = raw_vectors(2500, D, seed=1)
    write_tol_shards(tmp_path / "emb", raw, shards=5)
    report = _import(tmp_path / "col", [tmp_path / "emb" / "part-*.parquet"], model, batch_rows=700)
    assert (report.files, report.rows, report.imported, report.failed) == (5, 2500, 2500, 0)
    assert report.renormalised == 2500 and 5 <= report.norm_range[0] < report.norm_range[1] <= 20 * 1.01
    rows, vecs = _stored(tmp_path / "col")
    assert [r[1] for r in rows] == [f"uuid-{i:07d}" for i in range(2500)]
    expected = unit(raw.astype(np.float16).astype(np.float32))
    cos = np.einsum("ij,ij->i", unit(vecs), expected)
    assert cos.min() > 0.9999 and np.abs(np.linalg.norm(vecs, axis=1) - 1).max() < 2e-3
    first = rows[0]
    # ranks: the binomial in `species` loses its genus; Darwin Core columns map (and are normalised as a
    # build normalises them: GBIF's PRESERVED_SPECIMEN is Darwin Core's PreservedSpecimen); the rest go to extra
    assert first[2:6] == ("Corvus", "corax", "Corvidae", "PreservedSpecimen")
    assert first[6] == first[7] == "https://images.example.org/0.jpg"
    assert json.loads(first[8]) == {"img_type": "Citizen Science", "publisher": "iNaturalist"}
    engine = SearchEngine.open(tmp_path / "col", model=model)
    hit = engine.search(vector=expected[123], k=1).hits[0]
    assert hit.location == "https://images.example.org/123.jpg" and hit.score > 0.999
    assert engine.count({"genus": "Panthera"}) == 625 and engine.count({"taxon": "Felidae"}) == 625


def test_float32_fixed_size_lists_and_duplicate_ids(tmp_path, model):
    raw = unit(raw_vectors(300, D, seed=2))
    table = tol_table(raw, dtype=pa.float32(), fixed=True)
    again = tol_table(raw[:50] * 0.5, dtype=pa.float32(), fixed=True)  # the same ids once more
    pq.write_table(pa.concat_tables([table, again]), tmp_path / "one.parquet")
    report = _import(tmp_path / "col", [tmp_path / "one.parquet"], model)
    assert (report.imported, report.duplicates, report.renormalised) == (300, 50, 50)  # the repeats are half length
    _, vecs = _stored(tmp_path / "col")
    assert np.einsum("ij,ij->i", unit(vecs), raw).min() > 0.9999


def test_bad_rows_are_recorded_with_file_and_row_and_the_rest_imported(tmp_path, model):
    raw = raw_vectors(40, D, seed=3)
    raw[3, 5] = np.nan
    raw[7, 0] = np.inf
    raw[11] = 0
    table = tol_table(raw, dtype=pa.float32())
    emb = table.column("emb").to_pylist()
    emb[13] = None
    emb[17] = emb[17][:10]
    ids = table.column("uuid").to_pylist()
    ids[19] = None
    table = table.set_column(table.schema.get_field_index("emb"), "emb", pa.array(emb, pa.list_(pa.float32())))
    table = table.set_column(0, "uuid", pa.array(ids, pa.string()))
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    report = _import(tmp_path / "col", [path], model)
    assert report.imported == 34
    assert report.failed_by_reason == {
        "nan": 1,
        "infinite": 1,
        "zero-vector": 1,
        "no-vector": 1,
        "wrong-dimension": 1,
        "no-id": 1,
    }
    fails = {f["reason"]: f for f in SearchEngine.open(tmp_path / "col", model=model).failures()}
    assert fails["nan"]["detail"] == f"{path}, row 4: the vector holds NaN"
    assert fails["wrong-dimension"]["detail"] == f"{path}, row 18: 10 values, the model gives {D}"
    assert fails["no-id"]["key"] == f"{path}#row20"
    # a re-run records nothing new and imports nothing twice
    again = _import(tmp_path / "col", [path], model, recheck=True)
    assert (again.imported, again.unchanged, again.failed) == (0, 34, 6)
    snap = Collection.open(tmp_path / "col").snapshot()
    assert len(snap.generation.failures) == 1


@pytest.mark.parametrize("fixed", [True, False])
def test_vectors_of_another_dimension_are_a_file_level_error(tmp_path, model, fixed):
    path = tmp_path / "wrong.parquet"
    pq.write_table(tol_table(raw_vectors(20, 32), dtype=pa.float32(), fixed=fixed), path)
    with pytest.raises(SourceError, match=rf"{path}.*32-d.*model gives 64-d"):
        _import(tmp_path / "col", [path], model)


def test_missing_columns_name_the_file_and_its_columns(tmp_path, model):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"name": ["a"], "emb": pa.array([[1.0] * D])}), path)
    with pytest.raises(SourceError, match=r"x.parquet: which column identifies each image.*--id-column.*name, emb"):
        _import(tmp_path / "col", [path], model)
    pq.write_table(pa.table({"uuid": ["a"], "v": pa.array([[1.0] * D])}), path)
    with pytest.raises(SourceError, match=r"no column 'feat' \(--vector-column\)"):
        _import(tmp_path / "col", [path], model, columns=ImportColumns(vector_column="feat"))


def test_rerun_is_incremental_by_id(tmp_path, model):
    raw = raw_vectors(600, D, seed=4)
    paths = write_tol_shards(tmp_path / "emb", raw, shards=3)
    first = _import(tmp_path / "col", [tmp_path / "emb"], model, commit_every=100)
    assert first.imported == 600
    gen = Collection.open(tmp_path / "col").latest_generation()
    # Nothing changed: every file is skipped without being read.
    again = _import(tmp_path / "col", [tmp_path / "emb"], model)
    assert (again.files_skipped, again.imported, again.unchanged) == (3, 0, 600)
    # One vector and one label change in the last shard; a fourth shard brings 100 new ids.
    changed = raw.copy()
    changed[599] *= -1
    t = tol_table(changed[400:], start=400)
    pub = t.column("publisher").to_pylist()
    pub[10] = "Another Museum"
    pq.write_table(t.set_column(t.schema.get_field_index("publisher"), "publisher", pa.array(pub)), paths[2])
    pq.write_table(tol_table(raw_vectors(100, D, seed=5), start=600), tmp_path / "emb" / "part-00003.parquet")
    third = _import(tmp_path / "col", [tmp_path / "emb"], model)
    assert (third.files_skipped, third.imported, third.replaced, third.metadata_updated) == (2, 100, 1, 1)
    assert third.unchanged == 400 + 198
    snap = Collection.open(tmp_path / "col").snapshot()
    assert snap.generation.images == 700 and snap.generation.next_id == gen.next_id + 102
    con = snap.connect()
    (vid,) = con.execute("SELECT id FROM images WHERE key = 'uuid-0000599'").fetchall()[0]
    assert float(snap.get_vectors([vid])[0] @ unit(raw[599:600])[0]) < -0.999


def test_a_file_level_error_keeps_what_was_committed_and_the_rerun_resumes(tmp_path, model):
    write_tol_shards(tmp_path / "emb", raw_vectors(400, D, seed=6), shards=2)
    second = tmp_path / "emb" / "part-00001.parquet"
    good = second.read_bytes()
    pq.write_table(tol_table(raw_vectors(200, 32), start=200), second)  # another model's vectors
    with pytest.raises(SourceError, match="part-00001.parquet: the vectors are 32-d"):
        _import(tmp_path / "col", [tmp_path / "emb"], model)
    assert Collection.open(tmp_path / "col").latest_generation().images == 200
    second.write_bytes(good)
    report = _import(tmp_path / "col", [tmp_path / "emb"], model)
    assert (report.files_skipped, report.imported) == (1, 200)


def test_an_unreadable_file_is_refused_before_anything_is_imported(tmp_path, model):
    write_tol_shards(tmp_path / "emb", raw_vectors(400, D, seed=6), shards=2)
    broken = tmp_path / "emb" / "part-00001.parquet"
    broken.write_bytes(broken.read_bytes()[:1000])  # truncated while copying
    with pytest.raises(SourceError, match="cannot read .*part-00001.parquet as Parquet"):
        _import(tmp_path / "col", [tmp_path / "emb"], model)


def test_prune_retires_ids_no_longer_in_the_source(tmp_path, model):
    raw = raw_vectors(300, D, seed=7)
    write_tol_shards(tmp_path / "emb", raw, shards=3)
    _import(tmp_path / "col", [tmp_path / "emb"], model)
    (tmp_path / "emb" / "part-00001.parquet").unlink()
    report = _import(tmp_path / "col", [tmp_path / "emb"], model, prune=True)
    assert (report.pruned, report.files_skipped) == (100, 2)
    assert Collection.open(tmp_path / "col").latest_generation().images == 200


def test_import_into_a_collection_of_another_model_is_refused(tmp_path, model, tiny_model_source):
    write_tol_shards(tmp_path / "emb", raw_vectors(10, D), shards=1)
    _import(tmp_path / "col", [tmp_path / "emb"], model)
    with pytest.raises(ModelMismatchError, match="cannot be mixed"):
        import_embeddings(tmp_path / "col", [str(tmp_path / "emb")], model=DeclaredModel("bioclip-2"))
    with pytest.raises(SourceError, match="give --model"):
        import_embeddings(tmp_path / "new", [str(tmp_path / "emb")])


def test_cli_imports_and_says_the_vectors_were_normalised(tmp_path, tiny_model_source):
    from indexer.cli.index import main

    write_tol_shards(tmp_path / "emb", raw_vectors(120, D, seed=8), shards=2)
    args = ["import", str(tmp_path / "emb" / "part-{00000..00001}.parquet"), "--out", str(tmp_path / "col")]
    result = CliRunner().invoke(main, [*args, "--model", tiny_model_source])
    assert result.exit_code == 0, result.output
    assert "imported    120 new" in result.output
    assert "normalised  120 vectors were not unit length" in result.output
    again = CliRunner().invoke(main, [*args, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["files_skipped"] == 2
    missing = CliRunner().invoke(main, ["import", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "c2")])
    assert missing.exit_code == 1 and "not found" in missing.output and "Traceback" not in missing.output
