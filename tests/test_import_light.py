"""An import encodes nothing, so it needs neither torch nor open_clip: the declared model's facts
come from its files (bioclip.facts), and they are what loading the model records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from embfiles import raw_vectors, write_tol_shards
from imagegen import make_folder

from bioclip import load_model
from bioclip.errors import ModelNotAvailableError
from bioclip.facts import architecture_name, builtin_model_configs, model_facts
from bioclip.testing import TINY_MODEL_CONFIG, write_fake_hf_cache, write_random_model
from indexer.build import BuildOptions, build
from indexer.build.sources import FolderSource
from indexer.search.engine import SearchEngine
from indexer.store import Collection

ROOT = Path(__file__).resolve().parents[1]
REVISION = "0123456789abcdef0123456789abcdef01234567"
#: Runs `bioclip-index import ARGS...` in this (fresh) process and prints the torch / open_clip
#: modules it imported, as JSON, on its last line.
_IMPORT_SCRIPT = (
    "import json, sys\n"
    "from indexer.cli.index import main\n"
    "main(sys.argv[1:], standalone_mode=False)\n"
    "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'open_clip', 'torchvision'})))\n"
)


@pytest.fixture(scope="module")
def odd_model_dir(tmp_path_factory) -> Path:
    """A tiny model unlike the default: 96 px, 32 text tokens, its own mean/std and interpolation,
    and a ``size`` in its preprocess_cfg that open_clip overrides with the tower's image size."""
    cfg = json.loads(json.dumps(TINY_MODEL_CONFIG))
    cfg["vision_cfg"]["image_size"] = 96
    cfg["text_cfg"]["context_length"] = 32
    pre = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bilinear", "size": 300}
    return write_random_model(tmp_path_factory.mktemp("odd") / "odd", cfg, seed=3, preprocess_cfg=pre)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch, tiny_model_dir, odd_model_dir) -> Path:
    cache = tmp_path / "hf"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_fake_hf_cache(cache, "imageomics/bioclip", tiny_model_dir, revision=REVISION)
    write_fake_hf_cache(cache, "someorg/odd", odd_model_dir, revision="f" * 40)
    return cache


def test_import_runs_without_torch_or_open_clip_and_records_the_loaded_models_description(
    tmp_path, tiny_model_source, tiny_model_dir
):
    write_tol_shards(tmp_path / "emb", raw_vectors(40, 64, seed=4), shards=2)
    col = tmp_path / "col"
    args = ["import", str(tmp_path / "emb" / "part-*.parquet"), "--out", str(col), "--model", tiny_model_source]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_SCRIPT, *args, "--preprocess", "crop", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    # What the collection records is what a loaded model describes (as before: loaded on the CPU in fp32).
    recorded = Collection.open(col)
    loaded = load_model(tiny_model_source, device="cpu", precision="fp32", preprocess="crop")
    assert recorded.model == loaded.describe() and recorded.dimension == loaded.dimension == 64
    assert recorded.model["preprocess"]["mode"] == "crop" and recorded.model["precision"] == "fp32"
    # A later build into it accepts it, and loads and encodes with the model it records.
    folder = make_folder(tmp_path / "imgs", 6)
    built = build(col, [FolderSource(folder)], model_name=tiny_model_source, options=BuildOptions(workers=0))
    assert (built.encoded, built.failed, built.images) == (6, 0, 46)
    hit = SearchEngine.open(col, model=loaded).search(image=str(sorted(folder.rglob("*.png"))[2]), k=1).hits[0]
    assert hit.score > 0.999


@pytest.mark.parametrize(
    "which, revision, preprocess",
    [
        ("tiny", None, None),
        ("tiny", None, "crop"),
        ("odd", None, None),
        ("odd", None, "crop"),
        ("bioclip", None, None),
        ("hf-odd", "f" * 40, "crop"),
    ],
)
def test_facts_from_the_files_equal_the_loaded_models(
    hf_cache, tiny_model_dir, odd_model_dir, which, revision, preprocess
):
    model = {
        "tiny": f"local-dir:{tiny_model_dir}",
        "odd": f"local-dir:{odd_model_dir}",
        "bioclip": "bioclip",
        "hf-odd": "hf-hub:someorg/odd",
    }[which]
    facts = model_facts(model, revision=revision, preprocess=preprocess)
    loaded = load_model(model, device="cpu", precision="fp32", revision=revision, preprocess=preprocess)
    assert facts is not None
    assert facts.describe() == loaded.describe()
    assert (facts.dimension, facts.identity) == (loaded.dimension, loaded.identity)
    if which == "odd":
        assert facts.describe()["preprocess"]["size"] == 96 and facts.context_length == 32
    if which == "bioclip":
        assert facts.revision == REVISION


def test_builtin_configs_read_as_files_are_open_clips_and_name_the_architecture():
    import open_clip

    from bioclip.loading import _architecture_name

    builtins = builtin_model_configs()
    assert builtins and "ViT-B-16" in builtins and "ViT-L-14" in builtins
    assert set(builtins) <= set(open_clip.list_models())
    assert all(open_clip.get_model_config(name) == cfg for name, cfg in builtins.items())
    for arch in ("ViT-B-16", "ViT-L-14"):  # BioCLIP's and BioCLIP 2's configs
        cfg = open_clip.get_model_config(arch)
        assert architecture_name(cfg, builtins) == _architecture_name(cfg) == arch
    assert architecture_name(TINY_MODEL_CONFIG, builtins) == _architecture_name(TINY_MODEL_CONFIG)


def test_what_the_files_cannot_settle_is_left_to_loading_and_missing_models_are_the_same_error(tmp_path):
    assert model_facts("ViT-B-16:openai") is None
    assert model_facts("random:ViT-B-16") is None
    hf_text = json.loads(json.dumps(TINY_MODEL_CONFIG))
    hf_text["text_cfg"] = {"hf_model_name": "some/text-model", "hf_tokenizer_name": "some/text-model"}
    folder = tmp_path / "hftext"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": hf_text}))
    (folder / "open_clip_model.safetensors").write_bytes(b"")
    assert model_facts(f"local-dir:{folder}") is None
    (folder / "open_clip_model.safetensors").unlink()
    for missing in (folder, tmp_path / "nowhere"):
        with pytest.raises(ModelNotAvailableError) as from_files:
            model_facts(f"local-dir:{missing}")
        with pytest.raises(ModelNotAvailableError) as from_loading:
            load_model(f"local-dir:{missing}", device="cpu")
        assert str(from_files.value) == str(from_loading.value)
