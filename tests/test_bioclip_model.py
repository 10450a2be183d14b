"""Loading through the real code path and the embedding contract, checked against plain open_clip."""

from __future__ import annotations

import json
import threading

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from bioclip import DeviceError, Taxon, TextForm, load_model, taxon_prompt, taxon_text
from bioclip.device import pick_device, resolve_precision
from bioclip.model import ClipModel, ensemble_texts
from bioclip.preprocess import OPENAI_MEAN, OPENAI_STD


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    sizes = [(320, 240), (200, 500), (224, 224), (90, 60), (1000, 300)]
    return [
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


@pytest.fixture(scope="module")
def model(tiny_model_source) -> ClipModel:
    # fp32: these tests hold the vectors to open_clip's own fp32 encoding (bf16: test_bioclip_precision.py).
    return load_model(tiny_model_source, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def reference(tiny_model_source):
    """The same weights loaded by open_clip alone, with its tokenizer."""
    oc_model, _, _ = open_clip.create_model_and_transforms(tiny_model_source)
    return oc_model.eval(), open_clip.get_tokenizer(tiny_model_source)


def _assert_contract(vectors: np.ndarray, n: int, d: int) -> None:
    assert isinstance(vectors, np.ndarray)
    assert vectors.dtype == np.float32
    assert vectors.shape == (n, d)
    if n:
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_local_dir_model_attributes(model, tiny_model_dir, tiny_model_source):
    assert model.spec.source == tiny_model_source
    assert model.device == "cpu" and model.precision == "fp32"
    assert model.dimension == 64
    assert model.context_length == 77
    assert model.revision is None
    assert model.logit_scale == pytest.approx(np.exp(4.6052), rel=1e-5)
    assert model.preprocess_config.mode == "squash" and model.preprocess_config.size == 224
    assert not model.torch_model.training
    described = model.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["name"] == model.spec.name
    assert described["source"] == tiny_model_source
    assert described["dimension"] == 64
    assert described["preprocess"] == model.preprocess_config.to_dict()
    assert set(described) >= {
        "name",
        "source",
        "revision",
        "architecture",
        "dimension",
        "context_length",
        "preprocess",
        "precision",
    }


def test_embedding_contract(model):
    _assert_contract(model.encode_images(_images(5), batch_size=2), 5, 64)
    _assert_contract(model.encode_texts(["a photo of a crow.", "b", "c"], batch_size=2), 3, 64)
    batch = torch.stack([model.transform(im) for im in _images(3)])
    _assert_contract(model.encode_image_tensors(batch), 3, 64)
    raven = Taxon.from_lineage(["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax"])
    _assert_contract(model.embed_taxa([raven, raven.at_rank("genus")]), 2, 64)
    _assert_contract(model.embed_taxa([raven], ensemble=True), 1, 64)
    _assert_contract(model.embed_text_ensemble(["Corvus corax", "Pica pica"]), 2, 64)
    # Empty input: shape (0, d), same dtype.
    _assert_contract(model.encode_images([]), 0, 64)
    _assert_contract(model.encode_texts([]), 0, 64)
    _assert_contract(model.encode_image_tensors(torch.zeros(0, 3, 224, 224)), 0, 64)
    _assert_contract(model.embed_taxa([]), 0, 64)
    _assert_contract(model.embed_text_ensemble([]), 0, 64)


def test_bad_inputs(model):
    with pytest.raises(TypeError):
        model.encode_texts("a photo of a crow.")  # a string is not a list of texts
    with pytest.raises(ValueError):
        model.encode_image_tensors(torch.zeros(2, 3, 100, 100))
    with pytest.raises(ValueError):
        model.encode_images(_images(1), batch_size=0)


def test_batches_do_not_change_results(model):
    images = _images(5)
    np.testing.assert_allclose(
        model.encode_images(images, batch_size=1), model.encode_images(images, batch_size=5), atol=1e-5
    )
    # Any iterable works, e.g. a generator.
    np.testing.assert_allclose(model.encode_images(iter(images)), model.encode_images(images), atol=1e-6)


def test_encode_images_equals_plain_open_clip(model, reference):
    oc_model, _ = reference
    # pybioclip's BioCLIP preprocessing, written out with torchvision.
    from torchvision import transforms

    squash = transforms.Compose(
        [
            transforms.ToTensor(),
            transforms.Resize((224, 224), antialias=True),
            transforms.Normalize(mean=OPENAI_MEAN, std=OPENAI_STD),
        ]
    )
    images = _images(5, seed=1)
    with torch.no_grad():
        expected = oc_model.encode_image(torch.stack([squash(im) for im in images]))
        expected = torch.nn.functional.normalize(expected, dim=-1).numpy()
    ours = model.encode_images(images, batch_size=2)
    cosine = (ours * expected).sum(axis=1)
    assert (cosine >= 0.9999).all(), cosine


def test_encode_texts_equals_plain_open_clip(model, reference):
    oc_model, tokenizer = reference
    texts = ["a photo of Corvus corax.", "a photo of a magpie.", "lichen on a rock"]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(oc_model.encode_text(tokenizer(texts)), dim=-1).numpy()
    cosine = (model.encode_texts(texts) * expected).sum(axis=1)
    assert (cosine >= 0.9999).all(), cosine


def test_template_ensemble_is_average_of_normalised(model, reference):
    oc_model, tokenizer = reference
    texts = ensemble_texts("Corvus corax")
    assert len(texts) == 80
    assert "a photo of a Corvus corax." in texts and "a bad photo of a Corvus corax." in texts
    with torch.no_grad():
        per_template = torch.nn.functional.normalize(oc_model.encode_text(tokenizer(texts)), dim=-1)
    mean = per_template.mean(dim=0)
    expected = (mean / mean.norm()).numpy()
    got = model.embed_text_ensemble(["Corvus corax"])[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_embed_taxa_uses_bioclip_text(model):
    raven = Taxon.from_lineage(
        ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae", "Corvus", "corax"], common_name="common raven"
    )
    for form in TextForm:
        np.testing.assert_allclose(
            model.embed_taxa([raven], form=form), model.encode_texts([taxon_prompt(raven, form)]), atol=1e-6
        )
        np.testing.assert_allclose(
            model.embed_taxa([raven], form=form, ensemble=True),
            model.embed_text_ensemble([taxon_text(raven, form)]),
            atol=1e-6,
        )


def test_token_count_and_truncation(model, reference):
    _, tokenizer = reference
    short = "a photo of Corvus corax."
    assert model.text_token_count(short) == int((tokenizer([short]) != 0).sum())
    assert not model.text_is_truncated(short)
    long = " ".join(["Animalia Chordata Aves Passeriformes Corvidae Corvus corax"] * 12)
    assert model.text_token_count(long) > 77
    assert model.text_is_truncated(long)
    # ... and open_clip's tokenizer indeed keeps only context_length tokens of it.
    assert (tokenizer([long]) != 0).sum() == model.context_length


def test_threads_share_one_model(model):
    images = _images(4, seed=2)
    expected = model.encode_images(images)
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(model.encode_images(images, batch_size=2))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_preprocess_argument(tiny_model_source):
    from bioclip import PreprocessConfig

    recorded = PreprocessConfig(mode="crop", interpolation="bilinear")
    model = load_model(tiny_model_source, device="cpu", preprocess=recorded.to_dict())
    assert model.preprocess_config == recorded
    with pytest.raises(ValueError, match="224"):
        load_model(tiny_model_source, device="cpu", preprocess=PreprocessConfig(size=256))
    with pytest.raises(ValueError):
        load_model(tiny_model_source, device="cpu", preprocess="letterbox")


def test_devices_and_precision():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") != "cuda"
        with pytest.raises(DeviceError, match="CUDA"):
            pick_device("cuda")
        with pytest.raises(DeviceError):
            pick_device("cuda:0")
    if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        with pytest.raises(DeviceError, match="MPS"):
            pick_device("mps")
    with pytest.raises(DeviceError):
        pick_device("tpu")
    assert resolve_precision("auto", "mps") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(DeviceError):
        resolve_precision("int8", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_low_precision_matches_fp32(tiny_model_source, model):
    gpu = load_model(tiny_model_source, device="auto")
    assert gpu.device == "cuda" and gpu.precision in ("bf16", "fp16")
    images = _images(4, seed=3)
    got = gpu.encode_images(images)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cosine = (got * model.encode_images(images)).sum(axis=1)
    assert (cosine > 0.99).all(), cosine
    fp32 = load_model(tiny_model_source, device="cuda", precision="fp32")
    assert (fp32.encode_texts(["a photo of a crow."]) * model.encode_texts(["a photo of a crow."])).sum() > 0.9999


def test_trimmed_text_encoding_equals_open_clips_full_encode(tiny_model_source):
    """Query texts are encoded without the padding positions; the vectors must not change."""
    import open_clip
    import torch

    from bioclip import load_model

    model = load_model(tiny_model_source, device="cpu", precision="fp32")
    texts = [
        "a photo of Corvus corax.",
        "x",
        "a photo of Animalia Chordata Aves Passeriformes Corvidae Corvus corax with common name common raven.",
        "word " * 100,
    ]
    tokens = open_clip.get_tokenizer(tiny_model_source)(texts)
    with torch.inference_mode():
        full = torch.nn.functional.normalize(model.torch_model.encode_text(tokens), dim=-1).numpy()
    got = model.encode_texts(texts)
    np.testing.assert_allclose(got, full, atol=2e-6)
