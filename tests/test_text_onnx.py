"""Text queries without torch: the exported text tower (bioclip/text_onnx.py) and its torch-free
tokenizer (bioclip/bpe.py) give the model's tokens and vectors; a build exports it once; a text
query in a fresh process then imports neither torch nor open_clip and finds what the model finds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from imagegen import make_folder

from bioclip import load_model
from bioclip.bpe import ClipBpe
from bioclip.precision import MIN_COSINE
from bioclip.testing import write_random_model
from bioclip.text_onnx import encoder_folder, export_text_encoder, open_text_encoder

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]

TEXTS = [
    "a photo of Corvus corax.",
    "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven.",
    "Quercus robur L.",
    "QUERCUS   ROBUR\tsubsp.\nrobur",
    "Käfer auf einem Blatt &amp; Blüte; œuvre, façade, naïve",
    "Ранункулюс; 蝴蝶; 🦋 butterfly",
    "it's the beetle's leg, they'll see, we've got 1887 specimens (no. 42)",
    "&lt;b&gt;bold&lt;/b&gt; &amp;amp; double-escaped",
    "x",
    "",
    "   ",
    " ".join(["a very long description of a specimen"] * 20),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model of its own (so its folder is this module's) with its text tower exported."""
    folder = write_random_model(tmp_path_factory.mktemp("onnx-model") / "tiny", seed=3)
    saved = os.environ.get("BIOCLIP_TEXT_ENCODER")
    os.environ["BIOCLIP_TEXT_ENCODER"] = "on"
    try:
        model = load_model(f"local-dir:{folder}", device="cpu", precision="fp32")
        assert export_text_encoder(model) == encoder_folder(model.identity)
        yield model
    finally:
        if saved is None:
            os.environ.pop("BIOCLIP_TEXT_ENCODER", None)
        else:
            os.environ["BIOCLIP_TEXT_ENCODER"] = saved


@pytest.fixture
def text_encoder_on(monkeypatch):
    monkeypatch.setenv("BIOCLIP_TEXT_ENCODER", "on")


def test_the_torch_free_tokenizer_gives_open_clips_tokens(tiny_model_source):
    model = load_model(tiny_model_source, device="cpu", precision="fp32")
    bpe = ClipBpe(model.bpe_vocab() or "", model.context_length)
    assert np.array_equal(bpe(TEXTS), model.tokenize(TEXTS))
    assert [bpe.token_count(t) for t in TEXTS] == [model.text_token_count(t) for t in TEXTS]
    long = TEXTS[-1]
    assert bpe.token_count(long) > model.context_length and bpe(TEXTS)[-1, -1] == bpe.eot


def test_the_exported_encoder_gives_the_models_vectors(exported, text_encoder_on):
    encoder = open_text_encoder(exported.identity)
    assert encoder is not None and encoder.dimension == exported.dimension
    texts = TEXTS * 6  # more than one batch, texts of every length in each
    ours, theirs = encoder.encode_texts(texts, batch_size=16), exported.encode_texts(texts)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(axis=1).min() >= MIN_COSINE
    bf16 = load_model(exported.spec, device="cpu", precision="bf16")
    assert (ours * bf16.encode_texts(texts)).sum(axis=1).min() >= MIN_COSINE
    assert [encoder.text_is_truncated(t) for t in TEXTS] == [exported.text_is_truncated(t) for t in TEXTS]
    assert encoder.encode_texts([]).shape == (0, exported.dimension)


def test_no_encoder_for_other_weights_or_when_switched_off(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOCLIP_TEXT_ENCODER", "off")
    assert open_text_encoder(exported.identity) is None
    monkeypatch.setenv("BIOCLIP_TEXT_ENCODER", "on")
    assert open_text_encoder(exported.identity) is not None
    other = load_model(f"local-dir:{write_random_model(tmp_path / 'other', seed=4)}", device="cpu")
    assert other.identity != exported.identity and open_text_encoder(other.identity) is None
    assert open_text_encoder(None) is None


def test_a_damaged_encoder_is_ignored(exported, tmp_path, monkeypatch, caplog):
    exported_folder = encoder_folder(exported.identity)
    monkeypatch.setenv("BIOCLIP_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIOCLIP_TEXT_ENCODER", "on")
    import bioclip.precision as precision

    good = encoder_folder(exported.identity)
    assert str(tmp_path) in str(good) and not good.exists()
    shutil.copytree(exported_folder, good)
    (good / "text.onnx").write_bytes(b"not a model")
    assert open_text_encoder(exported.identity) is None
    assert "ignoring the text encoder" in caplog.text and precision.cache_folder() == tmp_path / "cache"


def test_a_failed_export_is_said_once_and_not_retried_at_every_build(tmp_path, monkeypatch, caplog):
    import bioclip.text_onnx as text_onnx

    monkeypatch.setenv("BIOCLIP_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIOCLIP_TEXT_ENCODER", "on")
    model = load_model(f"local-dir:{write_random_model(tmp_path / 'm', seed=5)}", device="cpu", precision="fp32")
    calls = []

    def broken(*args):  # an exporter failing as a torch version without it would
        calls.append(args)
        raise RuntimeError("no exporter here")

    monkeypatch.setattr(text_onnx, "_export", broken)
    assert export_text_encoder(model) is None and export_text_encoder(model) is None
    assert len(calls) == 1 and "no exporter here" in caplog.text
    folder = encoder_folder(model.identity)
    assert not folder.exists() and not list(folder.parent.glob(".export-*"))  # nothing half-written
    assert open_text_encoder(model.identity) is None


# Runs a text query of a collection in a fresh process; reports the hits and what was imported.
_QUERY = """
import json, sys
from indexer.search.engine import SearchEngine
engine = SearchEngine.open(sys.argv[1], device="cpu", refresh_interval=None)
hits = engine.search(sys.argv[2], k=4).hits
print(json.dumps({"ids": [h.id for h in hits], "torch": "torch" in sys.modules,
                  "open_clip": "open_clip" in sys.modules, "encoder": type(engine.text_model).__name__}))
"""


def test_a_text_query_after_a_build_imports_no_torch(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("BIOCLIP_TEXT_ENCODER", "on")
    from indexer.build import BuildOptions, build
    from indexer.build.sources import open_source
    from indexer.search.engine import SearchEngine

    source = f"local-dir:{exported.spec.path}"
    col = tmp_path / "col"
    folder = make_folder(tmp_path / "imgs", 6)
    build(col, [open_source(str(folder))], model_name=source, options=BuildOptions(workers=0))
    assert (encoder_folder(exported.identity) / "meta.json").is_file()
    query = "a photo of Corvus corax."
    out = subprocess.run(
        [sys.executable, "-c", _QUERY, str(col), query],
        cwd=ROOT,
        env={**os.environ},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    assert fresh["encoder"] == "TextEncoder" and not fresh["torch"] and not fresh["open_clip"], fresh
    engine = SearchEngine.open(col, device="cpu", refresh_interval=None)
    engine.load_model()  # the model itself, as an image query or the app would load it
    assert type(engine.text_model).__name__ == "ClipModel"
    assert fresh["ids"] == [h.id for h in engine.search(query, k=4).hits]
