"""bioclip-predict and bioclip-embed give pybioclip's results: reference values computed here by
pybioclip's method (the 80-template ensemble, softmax with logit_scale.exp(), sums over the lineage
prefix) with plain open_clip and torch, on the same weights and labels."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from imagegen import make_folder

from indexer.cli.embed import main as embed_cli
from indexer.cli.predict import main as predict_cli

LABELS = ["Corvus corax", "Pica pica", "Felis catus", "Rosa canina", "Panthera leo"]


@pytest.fixture(scope="module")
def ref(tiny_model_dir):
    """pybioclip's method in plain open_clip + torch."""
    import open_clip
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torchvision import transforms as T

    model, _, crop = open_clip.create_model_and_transforms(f"local-dir:{tiny_model_dir}")
    model.eval()
    tok = open_clip.get_tokenizer(f"local-dir:{tiny_model_dir}")
    squash = T.Compose(
        [
            T.ToTensor(),
            T.Resize((224, 224), antialias=True),
            T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )

    class Ref:
        scale = model.logit_scale.exp().detach()

        @staticmethod
        def image(paths, pre=squash, normalize=True):
            with torch.no_grad():
                x = model.encode_image(torch.stack([pre(Image.open(p).convert("RGB")) for p in paths]))
            return F.normalize(x, dim=-1) if normalize else x

        @staticmethod
        def text(labels):
            cols = []
            with torch.no_grad():
                for label in labels:
                    e = model.encode_text(tok([t(label) for t in open_clip.OPENAI_IMAGENET_TEMPLATES]))
                    e = F.normalize(e, dim=-1).mean(dim=0)
                    cols.append(e / e.norm())
            return torch.stack(cols, dim=1)

        @classmethod
        def probs(cls, img, txt):
            return torch.softmax(cls.scale * img @ txt, dim=1)

    Ref.crop = crop
    return Ref


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = make_folder(tmp_path_factory.mktemp("p") / "photos", 6, labels=False)
    return folder, sorted(str(p) for p in folder.rglob("*.png"))


def _csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def _run(cli, args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_custom_labels_equal_pybioclips_method(photos, ref, tiny_model_source):
    _, files = photos
    out = _run(
        predict_cli, [*files[:3], "--model", tiny_model_source, "--preprocess", "squash", "--cls", ",".join(LABELS)]
    )
    rows = _csv(out)
    assert list(rows[0]) == ["file_name", "classification", "score"] and len(rows) == 3 * len(LABELS)
    probs = ref.probs(ref.image(files[:3]), ref.text(LABELS)).numpy()
    for i, f in enumerate(files[:3]):
        mine = [r for r in rows if r["file_name"] == f]
        assert [r["classification"] for r in mine] == [LABELS[j] for j in np.argsort(-probs[i], kind="stable")]
        for r in mine:
            assert abs(float(r["score"]) - probs[i][LABELS.index(r["classification"])]) < 1e-6


def test_other_models_use_open_clips_own_transform_and_labels_may_come_from_a_file(
    photos, ref, tiny_model_source, tmp_path
):
    _, files = photos
    (tmp_path / "labels.txt").write_text("\n".join(LABELS[:3]) + "\n", encoding="utf-8")
    rows = _csv(
        _run(predict_cli, [files[0], "--model", tiny_model_source, "--cls", str(tmp_path / "labels.txt"), "--k", "2"])
    )
    probs = ref.probs(ref.image(files[:1], pre=ref.crop), ref.text(LABELS[:3])).numpy()[0]
    assert len(rows) == 2 and abs(float(rows[0]["score"]) - probs.max()) < 1e-6


def test_bins_sum_label_probabilities(photos, ref, tiny_model_source, tmp_path):
    _, files = photos
    bins = tmp_path / "bins.csv"
    bins.write_text(
        "cls,bin\nCorvus corax,Birds\nPica pica,Birds\nFelis catus,Mammals\nPanthera leo,Mammals\nRosa canina,Plants\n"
    )
    rows = _csv(
        _run(predict_cli, [files[1], "--model", tiny_model_source, "--preprocess", "squash", "--bins", str(bins)])
    )
    p = ref.probs(
        ref.image(files[1:2]), ref.text(["Corvus corax", "Pica pica", "Felis catus", "Panthera leo", "Rosa canina"])
    ).numpy()[0]
    expected = {"Birds": p[0] + p[1], "Mammals": p[2] + p[3], "Plants": p[4]}
    assert [r["classification"] for r in rows] == sorted(expected, key=lambda b: -expected[b])
    for r in rows:
        assert abs(float(r["score"]) - expected[r["classification"]]) < 1e-6
    bad = tmp_path / "bad.csv"
    bad.write_text("cls\nCorvus corax\n")
    result = CliRunner().invoke(predict_cli, [files[1], "--model", tiny_model_source, "--bins", str(bad)])
    assert result.exit_code == 2 and "at least two columns" in result.output


#: (kingdom, phylum, class, order, family, genus, epithet), common: two genera "Morus" in two families,
#: an empty class, a species without a common name.
TOL_NAMES = [
    [["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax"], "Common Raven"],
    [["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corone"], "Carrion Crow"],
    [["Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "bassanus"], "Northern Gannet"],
    [["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "alba"], "White Mulberry"],
    [["Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "nigra"], ""],
    [["Animalia", "Chordata", "", "Cypriniformes", "Cyprinidae", "Carassius", "auratus"], "Goldfish"],
]


def write_reference_labels(folder, d=64, seed=0, stem="txt_emb_species"):
    """pybioclip's layout: embeddings/<stem>.npy of shape (d, N), unit columns; the JSON names them."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((d, len(TOL_NAMES))).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=0, keepdims=True)
    (folder / "embeddings").mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings" / f"{stem}.npy", emb)
    (folder / "embeddings" / f"{stem}.json").write_text(json.dumps(TOL_NAMES), encoding="utf-8")
    return emb


def test_tree_of_life_species_and_rank_sums_over_the_lineage_prefix(photos, ref, tiny_model_source, tmp_path):
    _, files = photos
    import torch

    emb = write_reference_labels(tmp_path / "tol")
    args = [
        *files[:2],
        "--model",
        tiny_model_source,
        "--preprocess",
        "squash",
        "--reference-labels",
        str(tmp_path / "tol"),
    ]
    probs = ref.probs(ref.image(files[:2]), torch.from_numpy(emb)).numpy()
    rows = _csv(_run(predict_cli, [*args, "--k", "3"]))
    assert list(rows[0]) == [
        "file_name",
        "kingdom",
        "phylum",
        "class",
        "order",
        "family",
        "genus",
        "species_epithet",
        "species",
        "common_name",
        "score",
    ]
    top = [TOL_NAMES[j] for j in np.argsort(-probs[0])[:3]]
    assert [r["species"] for r in rows[:3]] == [f"{n[0][5]} {n[0][6]}" for n in top]
    assert [r["common_name"] for r in rows[:3]] == [n[1] for n in top]
    assert abs(float(rows[0]["score"]) - probs[0].max()) < 1e-6
    genus = _csv(_run(predict_cli, [*args, "--rank", "genus", "--k", "10"]))
    assert list(genus[0]) == ["file_name", "kingdom", "phylum", "class", "order", "family", "genus", "score"]
    mine = {(r["family"], r["genus"]): float(r["score"]) for r in genus if r["file_name"] == files[1]}
    expected: dict = {}  # pybioclip: species above min_prob, summed per "kingdom ... genus" prefix
    for j, (names, _) in enumerate(TOL_NAMES):
        if probs[1][j] > 1e-9:
            expected[(names[4], names[5])] = expected.get((names[4], names[5]), 0.0) + probs[1][j]
    assert ("Sulidae", "Morus") in expected and ("Moraceae", "Morus") in expected  # homonyms stay apart
    assert mine.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(mine[key] - value) < 1e-6
    out = json.loads(_run(predict_cli, [*args, "--rank", "kingdom", "--format", "json"]))
    assert {r["kingdom"] for r in out} <= {"Animalia", "Plantae"}
    assert abs(sum(r["score"] for r in out if r["file_name"] == files[0]) - 1) < 1e-5


def test_reference_labels_come_from_an_existing_hugging_face_cache_or_a_clear_message(
    photos, tiny_model_dir, tmp_path, monkeypatch
):
    from bioclip.testing import write_fake_hf_cache

    _, files = photos
    cache = tmp_path / "hf"
    write_fake_hf_cache(cache, "imageomics/bioclip-2", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(predict_cli, [files[0]])
    assert result.exit_code == 1
    assert "imageomics/TreeOfLife-200M" in result.output and "never downloaded" in result.output
    assert "hf download imageomics/TreeOfLife-200M --repo-type dataset" in result.output
    snap = cache / "datasets--imageomics--TreeOfLife-200M" / "snapshots" / "abc123"
    write_reference_labels(snap, stem="txt_emb_bioclip-2")
    (cache / "datasets--imageomics--TreeOfLife-200M" / "refs").mkdir()
    (cache / "datasets--imageomics--TreeOfLife-200M" / "refs" / "main").write_text("abc123")
    log = tmp_path / "run.json"
    rows = _csv(_run(predict_cli, [files[0], "--log", str(log)]))
    assert len(rows) == 5 and rows[0]["file_name"] == files[0]
    report = json.loads(log.read_text())
    assert (
        report["model"] == "hf-hub:imageomics/bioclip-2"
        and report["revision"] == "0123456789abcdef0123456789abcdef01234567"
    )
    assert report["top_level_settings"]["tree_of_life_version"] == "imageomics/TreeOfLife-200M"
    assert report["top_level_settings"]["revision"] == "abc123" and report["preprocess"]["mode"] == "squash"
    assert report["predictions"] == [
        {"images": [files[0]], "details": {"rank": "species", "min_prob": 1e-9, "k": 5, "batch_size": 10}}
    ]
    again = CliRunner().invoke(predict_cli, [files[0], "--log", str(log)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_folders_globs_unreadable_files_table_output_and_a_text_log(photos, tiny_model_source, tmp_path):
    folder, files = photos
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    log = tmp_path / "run.log"
    result = CliRunner().invoke(
        predict_cli,
        [
            str(folder),
            str(tmp_path / "*.jpg"),
            "--model",
            tiny_model_source,
            "--cls",
            "a,b",
            "--format",
            "table",
            "--log",
            str(log),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "warning: cannot read" in result.output and "broken.jpg" in result.output
    assert " file_name " in result.output and "+----" in result.output and result.output.count(files[0]) == 2
    text = log.read_text()
    assert "** Prediction Log - bioclip-search v" in text and "Classes: a,b" in text and "Images:" in text
    both = CliRunner().invoke(predict_cli, [files[0], "--cls", "a", "--rank", "genus"])
    assert both.exit_code == 2 and "cannot be combined" in both.output
    none = CliRunner().invoke(predict_cli, [str(tmp_path / "nothing-*.png"), "--cls", "a"])
    assert none.exit_code == 1 and "no files match" in none.output


def test_embed_writes_pybioclips_json_and_importable_parquet(photos, ref, tiny_model_source, tmp_path):
    from indexer.build.importers import import_embeddings
    from indexer.search.engine import SearchEngine

    _, files = photos
    out = _run(embed_cli, [*files[:2], "--model", tiny_model_source, "--preprocess", "squash"])
    doc = json.loads(out)
    assert list(doc) == ["model", "embeddings"] and doc["model"] == tiny_model_source
    raw = ref.image(files[:2], normalize=False).numpy()
    for f, v in zip(files[:2], raw):
        assert np.abs(np.array(doc["embeddings"][f]) - v).max() < 1e-5  # not normalised, as pybioclip
    _run(embed_cli, [*files, "--model", tiny_model_source, "--output", str(tmp_path / "e.parquet"), "--normalize"])
    table = pq.read_table(tmp_path / "e.parquet")
    assert table.column_names == ["image_path", "emb"] and table.num_rows == len(files)
    report = import_embeddings(tmp_path / "col", [str(tmp_path / "e.parquet")])  # the model from the file
    assert (report.imported, report.renormalised) == (len(files), 0)
    engine = SearchEngine.open(tmp_path / "col")
    assert engine.search(image=files[2], k=1).hits[0].location == files[2]
    _run(embed_cli, [files[0], "--model", tiny_model_source, "--output", str(tmp_path / "e.npy")])
    arr = np.load(tmp_path / "e.npy")
    side = json.loads((tmp_path / "e.json").read_text())
    assert arr.shape == (1, 64) and side["images"] == [files[0]] and side["normalized"] is False
