"""bioclip-index verify: the cosine between stored and re-encoded vectors, on collections whose stored
vectors are the model's own, perturbed, swapped between ids, or made with the other preprocessing."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from imagegen import make_folder
from PIL import Image

from indexer.build.importers import DeclaredModel, import_embeddings
from indexer.build.importers.verify import verify_collection
from indexer.cli.index import main as index_cli


@pytest.fixture(scope="module")
def model(tiny_model_source):
    from bioclip import load_model

    return load_model(tiny_model_source, device="cpu")


@pytest.fixture(scope="module")
def images(tmp_path_factory, model):
    folder = make_folder(tmp_path_factory.mktemp("v") / "imgs", 40, labels=False)
    files = sorted(folder.rglob("*.png"))
    # Long pictures with a plain band in the middle: what a centre crop keeps differs from the whole
    # picture even for the tiny random model (cosine ~0.85 between the two preprocessings).
    for i, f in enumerate(files):
        pixels = np.array(Image.open(f).convert("RGB").resize((480, 40)))
        pixels[:, 200:280] = 0 if i % 2 else 255
        Image.fromarray(pixels if i % 3 else pixels.transpose(1, 0, 2)).save(f)
    return folder, files, model.encode_images([Image.open(f) for f in files])


def _collection(tmp_path, folder, files, vectors, model, name="col", url_prefix=None):
    rel = [str(f.relative_to(folder)) for f in files]
    paths = [f"{url_prefix}{r}" for r in rel] if url_prefix else rel
    table = pa.table({"uuid": [f"img-{i}" for i in range(len(files))], "path": paths, "emb": vectors.tolist()})
    pq.write_table(table, folder / f"{name}.parquet")
    import_embeddings(tmp_path / name, [str(folder / f"{name}.parquet")], model=DeclaredModel(model=model))
    (folder / f"{name}.parquet").unlink()
    return tmp_path / name


def test_the_models_own_vectors_match(tmp_path, images, model):
    folder, files, vecs = images
    col = _collection(tmp_path, folder, files, vecs, model)
    report = verify_collection(col, sample=25, model=model)
    assert (report.sampled, report.compared, report.verdict) == (25, 25, "match")
    assert min(report.cosines) > 0.999 and np.median(report.other_cosines) < 0.99


def test_perturbed_vectors_are_a_mismatch_and_swapped_ids_are_found(tmp_path, images, model):
    folder, files, vecs = images
    rng = np.random.default_rng(0)
    noisy = vecs + 0.12 * rng.standard_normal(vecs.shape).astype(np.float32)
    col = _collection(tmp_path, folder, files, noisy, model, name="noisy")
    report = verify_collection(col, sample=40, model=model)
    assert report.verdict == "mismatch" and np.median(report.cosines) < 0.9
    swapped = vecs.copy()
    swapped[[3, 17, 29]] = vecs[[17, 29, 3]]
    col = _collection(tmp_path, folder, files, swapped, model, name="swapped")
    report = verify_collection(col, sample=40, model=model)
    assert report.verdict == "misaligned"
    assert {key for _, key, _ in report.worst[:3]} == {"img-3", "img-17", "img-29"}


def test_vectors_made_with_the_other_preprocessing_say_so(tmp_path, images, tiny_model_source):
    from bioclip import load_model

    folder, files, _ = images
    crop = load_model(tiny_model_source, device="cpu", preprocess="crop")
    vecs = crop.encode_images([Image.open(f) for f in files])
    rel = [str(f.relative_to(folder)) for f in files]
    pq.write_table(
        pa.table({"uuid": [f"i{i}" for i in range(len(files))], "path": rel, "emb": vecs.tolist()}),
        folder / "c.parquet",
    )
    import_embeddings(
        tmp_path / "sq", [str(folder / "c.parquet")], model=DeclaredModel(tiny_model_source, preprocess="squash")
    )
    report = verify_collection(tmp_path / "sq", sample=20, device="cpu")
    assert report.verdict == "other-preprocessing" and "--preprocess crop" in report.advice
    assert min(report.other_cosines) > 0.999


def test_media_roots_missing_files_and_the_cli(tmp_path, images, model, tiny_model_source):
    folder, files, vecs = images
    col = _collection(tmp_path, folder, files, vecs, model, name="urls", url_prefix="https://images.example.org/")
    files[0].rename(folder / "moved.png")
    try:
        args = ["verify", str(col), "--sample", "40", "--media-root", f"https://images.example.org/={folder}"]
        result = CliRunner().invoke(index_cli, args)
        assert result.exit_code == 0, result.output
        assert (
            "40 images, 39 re-encoded; unreadable: not-found 1" in result.output
            and "verdict     match" in result.output
        )
        result = CliRunner().invoke(index_cli, [*args, "--json"])
        data = json.loads(result.output)
        assert data["cosine"]["min"] > 0.999 and data["thresholds"]["match"] == 0.99
    finally:
        (folder / "moved.png").rename(files[0])
    bad = CliRunner().invoke(index_cli, ["verify", str(col), "--sample", "5", "--column", "catalogNumber"])
    assert bad.exit_code == 1 and "no-location 5" in bad.output and "verdict     unknown" in bad.output
