"""Zero-shot scores equal a hand-written softmax; higher ranks are sums over their species."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bioclip import Taxon, TextForm
from bioclip.zeroshot import Prediction, ZeroShotClassifier, aggregate_to_rank, classify_images

CORVIDAE = ["Animalia", "Chordata", "Aves", "Passeriformes", "Corvidae"]
RAVEN = Taxon.from_lineage(CORVIDAE + ["Corvus", "corax"], common_name="common raven")
CROW = Taxon.from_lineage(CORVIDAE + ["Corvus", "corone"], common_name="carrion crow")
MAGPIE = Taxon.from_lineage(CORVIDAE + ["Pica", "pica"], common_name="Eurasian magpie")
TIT = Taxon.from_lineage(["Animalia", "Chordata", "Aves", "Passeriformes", "Paridae", "Parus", "major"])
SPECIES = [RAVEN, CROW, MAGPIE, TIT]


class FakeModel:
    """Label vectors chosen by hand, so that scores are known in advance."""

    dimension = 4
    logit_scale = 10.0

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def _vectors(self, n: int, offset: int) -> np.ndarray:
        return np.eye(self.dimension, dtype=np.float32)[[(offset + i) % self.dimension for i in range(n)]]

    def embed_taxa(self, taxa, form=TextForm.TAXONOMIC_COMMON, ensemble=False):
        self.calls.append(("embed_taxa", len(taxa), TextForm(form), ensemble))
        return self._vectors(len(taxa), 0)

    def embed_text_ensemble(self, texts):
        self.calls.append(("embed_text_ensemble", tuple(texts)))
        return self._vectors(len(texts), 2)

    def encode_texts(self, texts):
        self.calls.append(("encode_texts", tuple(texts)))
        return self._vectors(len(texts), 2)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_aggregate_to_genus_and_family():
    probs = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.125, 0.125]])
    genera, by_genus = aggregate_to_rank(probs, SPECIES, "genus")
    assert [g.scientific_name for g in genera] == ["Corvus", "Pica", "Parus"]
    assert all(g.rank == "genus" and g.common_name is None for g in genera)
    np.testing.assert_allclose(by_genus, [[0.3, 0.3, 0.4], [0.75, 0.125, 0.125]])
    families, by_family = aggregate_to_rank(probs, SPECIES, "family")
    assert [f.scientific_name for f in families] == ["Corvidae", "Paridae"]
    np.testing.assert_allclose(by_family, [[0.6, 0.4], [0.875, 0.125]])
    orders, by_order = aggregate_to_rank(probs, SPECIES, "order")
    assert [o.taxonomic_name for o in orders] == ["Animalia Chordata Aves Passeriformes"]
    np.testing.assert_allclose(by_order, [[1.0], [1.0]])
    species, same = aggregate_to_rank(probs, SPECIES, "species")
    assert [s.scientific_name for s in species] == [t.scientific_name for t in SPECIES]
    np.testing.assert_allclose(same, probs)


def test_aggregate_refuses_what_it_cannot_sum():
    probs = np.full((1, 2), 0.5)
    with pytest.raises(ValueError, match="free text"):
        aggregate_to_rank(probs, [RAVEN, "a bird"], "genus")  # type: ignore[list-item]
    with pytest.raises(ValueError):
        aggregate_to_rank(probs, [RAVEN, RAVEN.at_rank("genus")], "species")  # genus is above species
    with pytest.raises(ValueError):
        aggregate_to_rank(probs, [RAVEN, Taxon(genus="Pica", species="pica")], "family")  # no family given
    with pytest.raises(ValueError, match="rank"):
        aggregate_to_rank(probs, [RAVEN, CROW], "tribe")
    with pytest.raises(ValueError):
        aggregate_to_rank(np.full((1, 3), 0.3), [RAVEN, CROW], "genus")


def test_classifier_with_fake_model():
    fake = FakeModel()
    classifier = ZeroShotClassifier(fake, SPECIES)
    assert fake.calls == [("embed_taxa", 4, TextForm.TAXONOMIC_COMMON, True)]
    images = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.6, 0.8]], dtype=np.float32)
    probs = classifier.probabilities(images)
    np.testing.assert_allclose(probs, _softmax(10.0 * (images.astype(np.float64) @ np.eye(4).T)))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)

    top = classifier.predict(images, k=2)
    assert [p.label for p in top[0]] == ["Corvus corax", "Corvus corone"]  # tie broken by label order
    assert top[0][0] == Prediction("Corvus corax", float(probs[0, 0]), "species", RAVEN)
    assert [p.label for p in top[1]] == ["Parus major", "Pica pica"]

    by_family = classifier.predict(images, k=5, rank="family")
    assert [len(row) for row in by_family] == [2, 2]  # k is capped at the number of groups
    assert by_family[1][0].label == "Paridae" and by_family[1][0].rank == "family"
    assert by_family[1][0].score == pytest.approx(probs[1, 3])
    assert by_family[0][0].score == pytest.approx(probs[0, :3].sum())

    with pytest.raises(ValueError):
        classifier.predict(images, k=0)
    with pytest.raises(ValueError):
        classifier.probabilities(np.zeros((2, 3)))
    assert classifier.probabilities(np.zeros((0, 4))).shape == (0, 4)


def test_free_text_labels():
    fake = FakeModel()
    classifier = ZeroShotClassifier(fake, [RAVEN, " a lichen "], ensemble=True)
    assert ("embed_text_ensemble", ("a lichen",)) in fake.calls
    single = ZeroShotClassifier(FakeModel(), ["a lichen"], ensemble=False)
    assert single.model.calls == [("encode_texts", ("a photo of a lichen.",))]
    prediction = classifier.predict(np.array([[0.0, 0.0, 1.0, 0.0]]), k=1)[0][0]
    assert (prediction.label, prediction.rank, prediction.taxon) == ("a lichen", None, None)
    with pytest.raises(ValueError, match="free"):
        classifier.predict(np.array([[0.0, 0.0, 1.0, 0.0]]), rank="genus")
    with pytest.raises(ValueError):
        ZeroShotClassifier(FakeModel(), [])
    with pytest.raises(ValueError):
        ZeroShotClassifier(FakeModel(), [RAVEN, ""])


def test_probabilities_with_tiny_model_equal_manual_softmax(tiny_model_source):
    from bioclip import load_model

    model = load_model(tiny_model_source, device="cpu")
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, size=(200, 150, 3), dtype=np.uint8)) for _ in range(3)]
    image_vectors = model.encode_images(images)
    label_vectors = model.embed_taxa(SPECIES, form=TextForm.TAXONOMIC_COMMON, ensemble=True)

    classifier = ZeroShotClassifier(model, SPECIES)
    np.testing.assert_allclose(classifier.label_embeddings, label_vectors, atol=1e-6)
    expected = _softmax(model.logit_scale * image_vectors.astype(np.float64) @ label_vectors.T.astype(np.float64))
    np.testing.assert_allclose(classifier.probabilities(image_vectors), expected, rtol=1e-5, atol=1e-7)

    predictions = classify_images(model, images, SPECIES, k=4, rank="genus")
    assert len(predictions) == 3
    for row, p in zip(predictions, expected):
        scores = {pred.label: pred.score for pred in row}
        assert scores["Corvus"] == pytest.approx(p[0] + p[1], rel=1e-5)
        assert scores["Pica"] == pytest.approx(p[2], rel=1e-5)
        assert [pred.score for pred in row] == sorted((pred.score for pred in row), reverse=True)
