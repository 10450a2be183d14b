"""Precision on a CPU: bf16 detection (forced either way on any CPU), the cached once-per-machine
decision, bf16 vectors against fp32 on the same images, and loading (fast, once per process)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from imagegen import picture
from PIL import Image

from bioclip import DeviceError, load_model
from bioclip.precision import ENV_BF16, MIN_COSINE, cache_file, decide_cpu_precision, detect_cpu_bf16

PROMPTS = ["a photo of Corvus corax.", "a photo of a domestic cat.", "Plantae Tracheophyta Magnoliopsida Rosales"]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh precision cache for one test."""
    monkeypatch.setenv("BIOCLIP_SEARCH_CACHE", str(tmp_path / "cache"))
    return cache_file()


def _cached(path: Path) -> list[dict]:
    return list(json.loads(path.read_text()).values()) if path.exists() else []


def _real_photos(shared_data: Path, n: int = 24) -> list[Image.Image]:
    paths = sorted(
        p for p in shared_data.rglob("*") if p.suffix.lower() in (".jpg", ".png") and "truncated" not in p.name
    )
    images = []
    for p in paths[:: max(1, len(paths) // n)][:n]:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return images


def test_detection_reads_the_cpu_and_can_be_forced():
    real = detect_cpu_bf16({})
    assert real.cpu and real.how in ("torch.cpu.get_capabilities", "/proc/cpuinfo")
    # The verdict follows the features: AMX is bf16 matrix units; bf16 instructions alone are timed.
    expected = "yes" if "amx_bf16" in real.features else ("probe" if real.features else "no")
    assert real.verdict == expected
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    assert ("amx_bf16" in real.features) == bool(caps.get("amx_bf16", "amx_bf16" in real.features))
    for value, verdict in (("yes", "yes"), ("1", "yes"), ("no", "no"), ("OFF", "no"), ("probe", "probe")):
        forced = detect_cpu_bf16({ENV_BF16: value})
        assert forced.verdict == verdict and ENV_BF16 in forced.how and forced.cpu == real.cpu
    assert detect_cpu_bf16({ENV_BF16: "auto"}).verdict == real.verdict
    with pytest.raises(DeviceError, match=ENV_BF16):
        detect_cpu_bf16({ENV_BF16: "maybe"})
    assert real.cpu in real.summary()


def test_auto_without_bf16_units_is_fp32_and_measures_nothing(tiny_model_source, cache, monkeypatch):
    monkeypatch.setenv(ENV_BF16, "no")
    model = load_model(tiny_model_source, device="cpu")
    assert model.precision == "fp32" and model.describe()["precision"] == "fp32"
    assert next(model.torch_model.parameters()).dtype == torch.float32
    assert "no bf16 units" in model.precision_note
    assert not cache.exists()


def test_auto_with_bf16_units_checks_once_then_uses_the_cache(tiny_model_source, cache, monkeypatch):
    monkeypatch.setenv(ENV_BF16, "yes")
    model = load_model(tiny_model_source, device="cpu")
    assert model.precision == "bf16" and model.describe()["precision"] == "bf16"
    assert next(model.torch_model.parameters()).dtype == torch.bfloat16
    (record,) = _cached(cache)
    assert record["precision"] == "bf16" and record["min_cosine"] >= MIN_COSINE
    assert tiny_model_source in record["model"] and "fp32_seconds" not in record  # checked, not timed
    del model
    again = load_model(tiny_model_source, device="cpu")
    assert again.precision == "bf16" and "cached" in again.precision_note
    assert _cached(cache) == [record]


def test_auto_where_bf16_speed_is_uncertain_times_both(tiny_model_source, cache, monkeypatch):
    monkeypatch.setenv(ENV_BF16, "probe")
    model = load_model(tiny_model_source, device="cpu")
    (record,) = _cached(cache)
    assert record["fp32_seconds"] > 0 and record["bf16_seconds"] > 0
    faster = record["bf16_seconds"] * 1.1 <= record["fp32_seconds"]
    assert record["precision"] == ("bf16" if faster else "fp32") == model.precision
    assert next(model.torch_model.parameters()).dtype == (torch.bfloat16 if faster else torch.float32)


def test_bf16_that_breaks_the_cosine_contract_falls_back_to_fp32(cache):
    """A model whose bf16 vectors drift from fp32 is run in fp32 (and the decision is cached)."""
    loads = []

    def load() -> torch.nn.Module:
        loads.append(1)
        return torch.nn.Linear(8, 4)

    def check(module: torch.nn.Module, dtype: torch.dtype) -> list[torch.Tensor]:
        x = torch.ones(2, 8, dtype=dtype)
        y = module(x).float()
        if dtype == torch.bfloat16:
            y = y + torch.tensor([[1.0, -1.0, 0.5, 0.0]])  # drift well past bf16 rounding
        return [torch.nn.functional.normalize(y, dim=-1)]

    support = detect_cpu_bf16({ENV_BF16: "yes"})
    module, precision, record = decide_cpu_precision(load, identity="drifting", support=support, check=check)
    assert precision == "fp32" and record["min_cosine"] < MIN_COSINE and "cosine" in record["reason"]
    assert next(module.parameters()).dtype == torch.float32 and len(loads) == 2  # reloaded in fp32
    module, precision, record = decide_cpu_precision(load, identity="drifting", support=support, check=check)
    assert precision == "fp32" and record.get("cached") and len(loads) == 3  # no probe: one load


def test_a_damaged_cache_is_decided_again(tiny_model_source, cache, monkeypatch):
    monkeypatch.setenv(ENV_BF16, "yes")
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert load_model(tiny_model_source, device="cpu").precision == "bf16"
    assert _cached(cache)[0]["precision"] == "bf16"


def test_bf16_vectors_match_fp32_on_the_same_images(tiny_model_source):
    images = [picture(seed, (160 + 7 * seed, 120)) for seed in range(12)]
    fp32 = load_model(tiny_model_source, device="cpu", precision="fp32")
    bf16 = load_model(tiny_model_source, device="cpu", precision="bf16")
    assert bf16.precision == "bf16" and next(bf16.torch_model.parameters()).dtype == torch.bfloat16
    a, b = fp32.encode_images(images), bf16.encode_images(images)
    assert b.dtype == np.float32 and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(axis=1).min() >= MIN_COSINE
    t32, t16 = fp32.encode_texts(PROMPTS), bf16.encode_texts(PROMPTS)
    assert t16.dtype == np.float32 and (t32 * t16).sum(axis=1).min() >= MIN_COSINE


def test_fp16_on_a_cpu_runs_fp16_weights(tiny_model_source):
    images = [picture(seed) for seed in range(4)]
    fp16 = load_model(tiny_model_source, device="cpu", precision="fp16")
    assert fp16.precision == "fp16" and next(fp16.torch_model.parameters()).dtype == torch.float16
    fp32 = load_model(tiny_model_source, device="cpu", precision="fp32")
    assert ((fp32.encode_images(images) * fp16.encode_images(images)).sum(axis=1) >= MIN_COSINE).all()


@pytest.mark.slow
def test_bf16_vit_b16_matches_fp32_on_real_photos(shared_data):
    """BioCLIP's architecture (ViT-B/16, random weights) on the real sample photos and prompts."""
    images = _real_photos(shared_data)
    torch.manual_seed(0)
    fp32 = load_model("random:ViT-B-16", device="cpu", precision="fp32")
    torch.manual_seed(0)
    bf16 = load_model("random:ViT-B-16", device="cpu", precision="bf16")
    cosine = (fp32.encode_images(images, batch_size=8) * bf16.encode_images(images, batch_size=8)).sum(axis=1)
    assert len(images) >= 12 and cosine.min() >= MIN_COSINE, cosine.min()
    texts = (fp32.encode_texts(PROMPTS) * bf16.encode_texts(PROMPTS)).sum(axis=1)
    assert texts.min() >= MIN_COSINE, texts.min()


def test_weights_are_loaded_exactly_as_open_clip_loads_them(tiny_model_source):
    """Built without random initialisation and with the file's tensors assigned: the same
    parameters and buffers (the text tower's causal mask included) as open_clip's own loader."""
    ours = load_model(tiny_model_source, device="cpu", precision="fp32").torch_model.state_dict(keep_vars=False)
    reference = open_clip.create_model(tiny_model_source).eval()
    theirs = reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    model = load_model(tiny_model_source, device="cpu", precision="fp32")
    assert torch.equal(model.torch_model.attn_mask, reference.attn_mask)


def test_a_model_is_loaded_once_per_process(tiny_model_source):
    first = load_model(tiny_model_source, device="cpu", precision="fp32")
    assert load_model(tiny_model_source, device="cpu", precision="fp32") is first
    assert load_model(tiny_model_source, device="cpu", precision="bf16") is not first
    assert load_model(tiny_model_source, device="cpu", precision="fp32", preprocess="crop") is not first
