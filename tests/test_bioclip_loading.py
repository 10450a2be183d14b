"""Where weights come from: a faked Hugging Face cache, local folders, checkpoints, random:;
and the named errors (with a useful message) when they are missing."""

from __future__ import annotations

import json
import logging
import shutil

# Imported before any test changes the environment, on purpose: huggingface_hub reads
# HF_HUB_CACHE once at import, so the loader must read the environment itself, at call time.
import huggingface_hub  # noqa: F401
import numpy as np
import open_clip
import pytest
from PIL import Image

from bioclip import ModelNotAvailableError, ModelSpecError, load_model
from bioclip.loading import _architecture_name
from bioclip.testing import TINY_MODEL_CONFIG, write_fake_hf_cache


@pytest.fixture(autouse=True)
def _fp32(monkeypatch):
    """These tests compare loads of one model bit for bit; on a CPU with bf16 instructions but no
    matrix units, ``auto`` times bf16 against fp32 and a near-tie may go either way per load."""
    monkeypatch.setenv("BIOCLIP_CPU_BF16", "no")


REVISION = "0123456789abcdef0123456789abcdef01234567"
OTHER_REVISION = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline, set through the environment only."""
    cache = tmp_path / "hf-hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return cache


def _probe() -> Image.Image:
    rng = np.random.default_rng(7)
    return Image.fromarray(rng.integers(0, 256, size=(180, 260, 3), dtype=np.uint8), "RGB")


def test_bioclip_from_faked_hf_cache(hf_cache, tiny_model_dir, tiny_model_source):
    write_fake_hf_cache(hf_cache, "imageomics/bioclip", tiny_model_dir, revision=REVISION)
    model = load_model("bioclip", device="cpu")
    assert model.spec.name == "bioclip"
    assert model.spec.source == "hf-hub:imageomics/bioclip"
    assert model.revision == REVISION
    assert model.describe()["revision"] == REVISION
    assert model.dimension == 64
    # The same weights as the folder it was cached from.
    direct = load_model(tiny_model_source, device="cpu")
    np.testing.assert_allclose(model.encode_images([_probe()]), direct.encode_images([_probe()]), atol=1e-6)
    # The source string and a pinned revision resolve to the same files.
    pinned = load_model(f"hf-hub:imageomics/bioclip@{REVISION}", device="cpu")
    assert pinned.spec.name == "bioclip" and pinned.revision == REVISION
    assert load_model("bioclip", revision="main", device="cpu").revision == REVISION


def test_explicit_cache_dir(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "elsewhere"
    write_fake_hf_cache(cache, "imageomics/bioclip-2", tiny_model_dir, revision=OTHER_REVISION)
    model = load_model("bioclip-2", device="cpu", cache_dir=cache)
    assert model.revision == OTHER_REVISION and model.spec.name == "bioclip-2"


def test_missing_cache_says_which_model_where_and_how(hf_cache):
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("bioclip", device="cpu")
    message = str(info.value)
    assert "bioclip" in message and "imageomics/bioclip" in message
    assert str(hf_cache) in message
    assert "hf download imageomics/bioclip" in message
    assert "local-dir:" in message and "HF_HUB_CACHE" in message
    assert info.value.model == "bioclip"
    assert str(hf_cache) in info.value.locations


def test_unknown_revision_is_not_available(hf_cache, tiny_model_dir):
    write_fake_hf_cache(hf_cache, "imageomics/bioclip", tiny_model_dir, revision=REVISION)
    with pytest.raises(ModelNotAvailableError, match=OTHER_REVISION):
        load_model(f"hf-hub:imageomics/bioclip@{OTHER_REVISION}", device="cpu")


def test_cached_snapshot_without_weights_is_not_available(hf_cache, tmp_path, tiny_model_dir):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", config_only)
    write_fake_hf_cache(hf_cache, "imageomics/bioclip", config_only, revision=REVISION)
    with pytest.raises(ModelNotAvailableError, match="no weights"):
        load_model("bioclip", device="cpu")


def test_cache_with_pickled_weights_only(hf_cache, tmp_path, tiny_model_dir, tiny_model_source):
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", pickled)
    torch.save(load_file(str(tiny_model_dir / "open_clip_model.safetensors")), pickled / "open_clip_pytorch_model.bin")
    write_fake_hf_cache(hf_cache, "imageomics/bioclip", pickled, revision=REVISION)
    model = load_model("bioclip", device="cpu")
    assert model.revision == REVISION
    direct = load_model(tiny_model_source, device="cpu")
    np.testing.assert_allclose(model.encode_texts(["a crow"]), direct.encode_texts(["a crow"]), atol=1e-6)


def test_local_dir_without_weights(tmp_path, tiny_model_dir):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "open_clip_config.json", folder)
    with pytest.raises(ModelNotAvailableError) as info:
        load_model(f"local-dir:{folder}", device="cpu")
    assert str(folder) in str(info.value) and "weights" in str(info.value)
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(f"local-dir:{tmp_path / 'nothing-here'}", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailableError, match="open_clip_config.json"):
        load_model(f"local-dir:{tmp_path / 'empty'}", device="cpu")
    bad = tmp_path / "bad-config"
    bad.mkdir()
    (bad / "open_clip_config.json").write_text("{not json", encoding="utf-8")
    shutil.copy(tiny_model_dir / "open_clip_model.safetensors", bad)
    with pytest.raises(ModelSpecError):
        load_model(f"local-dir:{bad}", device="cpu")


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    """The tiny config registered as an open_clip built-in architecture (for ARCH: sources)."""
    name = "BioclipTestTiny-32"
    folder = tmp_path_factory.mktemp("arch")
    (folder / f"{name}.json").write_text(json.dumps(TINY_MODEL_CONFIG), encoding="utf-8")
    open_clip.add_model_config(folder)
    assert name in open_clip.list_models()
    yield name
    # open_clip's registry is process-wide: later tests (bioclip/facts.py names architectures from the
    # shipped configs only) must not see this one
    open_clip.factory._MODEL_CONFIGS.pop(name, None)
    assert name not in open_clip.list_models()


def test_checkpoint_file(tiny_arch, tiny_model_dir, tiny_model_source):
    checkpoint = tiny_model_dir / "open_clip_model.safetensors"
    model = load_model(f"{tiny_arch}:{checkpoint}", device="cpu")
    assert model.spec.kind == "checkpoint"
    assert model.architecture == tiny_arch
    assert model.revision is None
    direct = load_model(tiny_model_source, device="cpu")
    np.testing.assert_allclose(model.encode_texts(["a crow"]), direct.encode_texts(["a crow"]), atol=1e-6)
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        load_model(f"{tiny_arch}:{tiny_model_dir / 'missing.pt'}", device="cpu")


def test_random_weights_only_when_asked_and_loudly(tiny_arch, caplog):
    with caplog.at_level(logging.WARNING, logger="bioclip.loading"):
        model = load_model(f"random:{tiny_arch}", device="cpu")
    assert any(r.levelno == logging.WARNING and "RANDOM" in r.getMessage() for r in caplog.records)
    assert model.spec.kind == "random" and model.dimension == 64
    assert model.encode_texts(["a crow"]).shape == (1, 64)


def test_random_weights_are_the_same_in_every_load_and_leave_the_callers_seed_alone(tiny_arch):
    """``random:ARCH`` is seeded: a warm server and a direct query, or two benchmark runs, get
    the same vectors; the caller's own random stream goes on as if nothing had been drawn."""
    import torch

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = load_model(f"random:{tiny_arch}", device="cpu").encode_texts(["a crow", "Quercus robur"])
    assert torch.equal(torch.rand(3), expected_next)
    second = load_model(f"random:{tiny_arch}", device="cpu").encode_texts(["a crow", "Quercus robur"])
    np.testing.assert_array_equal(first, second)


def test_unknown_architecture_and_tag(tiny_arch):
    with pytest.raises(ModelSpecError, match="not an open_clip architecture"):
        load_model("NoSuchArch-99:openai", device="cpu")
    with pytest.raises(ModelSpecError, match="not a pretrained tag"):
        load_model("ViT-B-32:no-such-tag", device="cpu")
    with pytest.raises(ModelSpecError, match="not a pretrained tag"):
        load_model(f"{tiny_arch}:openai", device="cpu")


def test_pretrained_tag_offline_is_not_available(tmp_path):
    if not huggingface_hub.constants.HF_HUB_OFFLINE:
        pytest.skip("huggingface_hub was imported online; this test must not touch the network")
    with pytest.raises(ModelNotAvailableError) as info:
        load_model("ViT-B-32:openai", device="cpu", cache_dir=tmp_path)
    assert "ViT-B-32:openai" in str(info.value) and str(tmp_path) in str(info.value)


def test_architecture_names():
    assert _architecture_name(open_clip.get_model_config("ViT-B-16")) == "ViT-B-16"
    assert _architecture_name(open_clip.get_model_config("ViT-L-14")) == "ViT-L-14"
    assert _architecture_name({"embed_dim": 8, "vision_cfg": {"image_size": 32, "patch_size": 8}}).startswith("custom(")
