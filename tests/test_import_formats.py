"""Import of pybioclip JSON and clip-retrieval output, mixing imported and encoded images, and export
(Parquet, npy) with the round trip export -> import giving identical search results."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from embfiles import raw_vectors, unit, write_tol_shards
from imagegen import make_folder

from indexer.build import BuildOptions, build
from indexer.build.importers import DeclaredModel, import_embeddings
from indexer.build.sources import FolderSource
from indexer.cli.index import main as index_cli
from indexer.errors import ModelMismatchError, SourceError
from indexer.search.engine import SearchEngine

D = 64


@pytest.fixture(scope="module")
def model(tiny_model_source):
    from bioclip import load_model

    return load_model(tiny_model_source, device="cpu", precision="fp32")  # pybioclip's `embed` runs fp32


def _raw_features(model, paths):
    """pybioclip's `embed`: the image tower's output, not normalised."""
    import torch
    from PIL import Image

    batch = torch.stack([model.transform(Image.open(p).convert("RGB")) for p in paths])
    with torch.inference_mode():
        return model.torch_model.encode_image(batch).numpy()


def _write_embed_json(path, model_string, folder, files, feats):
    doc = {"model": model_string, "embeddings": {str(f.relative_to(folder)): v.tolist() for f, v in zip(files, feats)}}
    path.write_text(json.dumps(doc, indent=4))


def test_pybioclip_json_imports_and_a_later_build_adds_labels_without_encoding(tmp_path, model, tiny_model_source):
    folder = make_folder(tmp_path / "imgs", 12)
    files = sorted(folder.rglob("*.png"))
    feats = _raw_features(model, files)
    assert np.abs(np.linalg.norm(feats, axis=1) - 1).min() > 0.01  # really not normalised
    _write_embed_json(folder / "embeddings.json", tiny_model_source, folder, files, feats)
    report = import_embeddings(tmp_path / "col", [str(folder / "embeddings.json")])  # the model from the file
    assert (report.imported, report.renormalised, report.kinds) == (
        12,
        12,
        {str(folder / "embeddings.json"): "pybioclip"},
    )
    built = build(
        tmp_path / "col",
        [FolderSource(folder, labels=folder / "labels.csv")],
        model=model,
        options=BuildOptions(workers=0),
    )
    assert (built.encoded, built.metadata_updated) == (0, 12)
    engine = SearchEngine.open(tmp_path / "col", model=model)
    from PIL import Image

    fresh = model.encode_images([Image.open(f) for f in files])
    ids = engine.selected_ids(["genus!="])
    by_location = {h.location: v for h, v in zip(engine.get(ids), engine.vectors(ids))}
    assert engine.count() == 12 == len(ids) and engine.count({"genus": "Corvus"}) > 0
    cos = [float(by_location[str(f)] @ v) for f, v in zip(files, fresh)]
    assert min(cos) > 0.999  # the imported vectors were kept: nothing was encoded
    hit = engine.search(image=str(files[3]), k=1).hits[0]
    assert hit.location == str(files[3]) and hit.score > 0.999


def test_pybioclip_json_of_another_model_is_refused(tmp_path, model):
    write = tmp_path / "e.json"
    write.write_text(json.dumps({"model": "hf-hub:imageomics/bioclip-2", "embeddings": {"a.jpg": [1.0] * D}}))
    write_tol_shards(tmp_path / "emb", raw_vectors(5, D), shards=1)
    import_embeddings(tmp_path / "col", [str(tmp_path / "emb")], model=DeclaredModel(model=model))
    with pytest.raises(
        ModelMismatchError, match="e.json says its embeddings were made with hf-hub:imageomics/bioclip-2"
    ):
        import_embeddings(tmp_path / "col", [str(write)])
    write.write_text(json.dumps({"model": "x", "vectors": {}}))
    with pytest.raises(SourceError, match="not pybioclip embed output"):
        import_embeddings(tmp_path / "col", [str(write)])


def _write_clip_output(root, parts, d=D, seed=0):
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    vecs_all = []
    start = 0
    for n, rows in enumerate(parts):
        v = unit(raw_vectors(rows, d, seed=seed + n)).astype(np.float16)
        np.save(root / "img_emb" / f"img_emb_{n}.npy", v)
        paths = [f"/data/imgs/{start + i:05d}.jpg" for i in range(rows)]
        meta = pa.table(
            {
                "image_path": paths,
                "caption": [f"caption {start + i}" for i in range(rows)],
                "url": [f"https://example.org/{start + i}.jpg" for i in range(rows)],
            }
        )
        pq.write_table(meta, root / "metadata" / f"metadata_{n}.parquet")
        vecs_all.append(v)
        start += rows
    return np.concatenate(vecs_all)


def test_clip_retrieval_output_imports_row_aligned_by_partition(tmp_path, model):
    vecs = _write_clip_output(tmp_path / "out", [300, 200, 50])
    report = import_embeddings(tmp_path / "col", [str(tmp_path / "out")], model=DeclaredModel(model=model))
    assert (report.files, report.imported, report.renormalised, report.failed) == (3, 550, 0, 0)
    engine = SearchEngine.open(tmp_path / "col", model=model)
    for i in (0, 299, 300, 549):
        hit = engine.search(vector=vecs[i].astype(np.float32), k=1).hits[0]
        assert hit.location == f"/data/imgs/{i:05d}.jpg" and hit.score > 0.999
        assert json.loads(hit.metadata["extra"]) == {"caption": f"caption {i}", "url": f"https://example.org/{i}.jpg"}


def test_clip_retrieval_misaligned_or_missing_metadata_is_a_clear_error(tmp_path, model):
    _write_clip_output(tmp_path / "out", [30, 20])
    pq.write_table(pa.table({"image_path": ["x"] * 19}), tmp_path / "out" / "metadata" / "metadata_1.parquet")
    with pytest.raises(SourceError, match=r"img_emb_1.npy has 20 vectors but .*metadata_1.parquet has 19 rows"):
        import_embeddings(tmp_path / "col", [str(tmp_path / "out")], model=DeclaredModel(model=model))
    (tmp_path / "out" / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(SourceError, match=r"img_emb_1.npy has no metadata/metadata_1.parquet"):
        import_embeddings(tmp_path / "col", [str(tmp_path / "out")], model=DeclaredModel(model=model))
    with pytest.raises(SourceError, match="numpy array without ids"):
        import_embeddings(
            tmp_path / "c", [str(tmp_path / "out" / "img_emb" / "img_emb_0.npy")], model=DeclaredModel(model=model)
        )


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, model):
    """A collection of 20 encoded images with labels and 400 imported TreeOfLife-style rows."""
    root = tmp_path_factory.mktemp("mixed")
    folder = make_folder(root / "imgs", 20)
    build(
        root / "col", [FolderSource(folder, labels=folder / "labels.csv")], model=model, options=BuildOptions(workers=0)
    )
    write_tol_shards(root / "emb", raw_vectors(400, D, seed=11), shards=2)
    report = import_embeddings(root / "col", [str(root / "emb")], model=DeclaredModel(model=model))
    assert report.imported == 400
    return root


def _results(engine, queries, **kwargs):
    out = []
    for q in queries:
        res = engine.search(vector=q, k=10, **kwargs)
        out.append([(h.metadata["key"], round(h.score, 6)) for h in res.hits])
    return out


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_export_then_import_gives_identical_search_results(tmp_path, mixed, model, fmt):
    src = SearchEngine.open(mixed / "col", model=model)
    report = src.export(tmp_path / "out", fmt=fmt, shard_rows=150)
    assert report.rows == 420 and len(report.files) == (3 if fmt == "parquet" else 6)
    back = import_embeddings(tmp_path / "col2", [str(tmp_path / "out")], model=DeclaredModel(model=model))
    assert (back.imported, back.renormalised, back.failed) == (420, 0, 0)
    dst = SearchEngine.open(tmp_path / "col2", model=model)
    rng = np.random.default_rng(0)
    queries = list(unit(rng.standard_normal((20, D))))
    queries += list(src.vectors(src.selected_ids(["genus=Corvus"])[:5]))
    assert _results(dst, queries) == _results(src, queries)
    assert _results(dst, queries[:5], filters=["taxon=Felidae"]) == _results(
        src, queries[:5], filters=["taxon=Felidae"]
    )
    assert [h.metadata["key"] for h in dst.search("Corvus corax", k=10).hits] == [
        h.metadata["key"] for h in src.search("Corvus corax", k=10).hits
    ]
    a = np.sort(src.vectors(src.selected_ids(["key!="])), axis=0)
    b = np.sort(dst.vectors(dst.selected_ids(["key!="])), axis=0)
    assert np.array_equal(a, b)  # bit for bit


def test_parquet_export_reads_in_duckdb_pandas_pyarrow_with_the_emb_explorer_columns(tmp_path, mixed, model):
    result = CliRunner().invoke(
        index_cli, ["export", str(mixed / "col"), "--out", str(tmp_path / "x"), "--where", "taxon=Corvidae"]
    )
    assert result.exit_code == 0, result.output
    n = SearchEngine.open(mixed / "col", model=model).count({"taxon": "Corvidae"})
    assert f"exported    {n} images (64-d)" in result.output
    glob = str(tmp_path / "x" / "*.parquet")
    con = duckdb.connect()
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet('{glob}')").fetchall()]
    assert cols[:2] == ["uuid", "emb"] and {
        "kingdom",
        "class",
        "order",
        "family",
        "genus",
        "species",
        "identifier",
    } <= set(cols)
    (typ,) = con.execute(f"SELECT typeof(emb) FROM read_parquet('{glob}') LIMIT 1").fetchall()[0]
    assert typ == "FLOAT[]"
    assert con.execute(
        f"SELECT count(DISTINCT uuid), min(len(emb)), max(len(emb)) FROM read_parquet('{glob}')"
    ).fetchall()[0] == (n, D, D)
    species = {r[0] for r in con.execute(f"SELECT DISTINCT species FROM read_parquet('{glob}')").fetchall()}
    assert species <= {"Corvus corax", "Corvus corone", "Pica pica"} and species
    import pandas as pd

    df = pd.read_parquet(tmp_path / "x")
    assert len(df) == n and len(df["emb"].iloc[0]) == D
    table = pq.read_table(tmp_path / "x")
    assert table.schema.field("emb").type == pa.list_(pa.float32())
    urls = con.execute(f"SELECT identifier FROM read_parquet('{glob}') WHERE uuid LIKE 'uuid-%'").fetchall()
    assert all(u[0].startswith("https://images.example.org/") for u in urls)


def test_npy_export_is_laid_out_as_clip_retrieval_writes_it(tmp_path, mixed, model):
    SearchEngine.open(mixed / "col", model=model).export(tmp_path / "n", fmt="npy", shard_rows=100)
    names = sorted(p.name for p in (tmp_path / "n" / "img_emb").iterdir())
    assert names == [f"img_emb_{i}.npy" for i in range(5)]
    v = np.load(tmp_path / "n" / "img_emb" / "img_emb_4.npy")
    meta = pq.read_table(tmp_path / "n" / "metadata" / "metadata_4.parquet")
    assert v.dtype == np.float16 and v.shape == (20, D) and meta.num_rows == 20
    assert meta.column_names[:2] == ["image_path", "uuid"]
    assert np.abs(np.linalg.norm(v.astype(np.float32), axis=1) - 1).max() < 2e-3


def test_export_into_a_folder_that_holds_files_is_refused(tmp_path, mixed):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(index_cli, ["export", str(mixed / "col"), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "not empty" in result.output
    result = CliRunner().invoke(
        index_cli, ["export", str(mixed / "col"), "--out", str(tmp_path / "y"), "--where", "genus=Nope"]
    )
    assert result.exit_code == 1 and "no images to export" in result.output
