"""Zero-shot classification: scores of images against taxa or free-text labels.

Scores are BioCLIP's and pybioclip's: ``softmax(logit_scale * image @ label.T)`` over the labels,
with the model's (exponentiated) logit scale and label vectors from OpenAI's 80-template ensemble
by default. A higher rank's score is the sum of its descendants' scores
(:func:`aggregate_to_rank`), as pybioclip does for tree-of-life predictions.

Needs numpy only; the model is passed in (anything with ``embed_taxa``, ``embed_text_ensemble``,
``encode_texts``, ``encode_images`` and ``logit_scale``, such as :class:`bioclip.model.ClipModel`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .taxa import RANKS, Taxon, TextForm

__all__ = ["Prediction", "ZeroShotClassifier", "aggregate_to_rank", "classify_images"]


@dataclass(frozen=True)
class Prediction:
    """One scored label: ``label`` (the taxon's scientific name, or the free text), ``score`` (a
    probability), ``rank`` (the taxon's rank, None for free text) and ``taxon`` (None for free
    text)."""

    label: str
    score: float
    rank: str | None = None
    taxon: Taxon | None = None


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=1, keepdims=True)
    return shifted


def aggregate_to_rank(probs: np.ndarray, taxa: Sequence[Taxon], rank: str) -> tuple[list[Taxon], np.ndarray]:
    """Sum label probabilities (n, L) into the groups of ``taxa`` at ``rank``.

    Returns the group taxa (each ``taxon.at_rank(rank)``, in order of first appearance) and an
    (n, G) array whose column g is the sum of the columns of the labels in group g. Groups are
    keyed by the whole lineage down to ``rank``, so homonyms in different families stay apart
    (and so do labels whose lineages are given to different depths). Raises ValueError for an
    unknown rank, a free-text label, or a label above ``rank`` or without a name at ``rank``.
    """
    if rank not in RANKS:
        raise ValueError(f"Unknown rank {rank!r}; ranks are {', '.join(RANKS)}.")
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] != len(taxa):
        raise ValueError(f"probs must be (n, {len(taxa)}), got {probs.shape}.")
    groups: dict[Taxon, int] = {}
    column = np.empty(len(taxa), dtype=np.intp)
    for i, taxon in enumerate(taxa):
        if not isinstance(taxon, Taxon):
            raise ValueError(
                f"Label {taxon!r} is free text, not a Taxon: free-text labels cannot be aggregated to a rank."
            )
        key = taxon.at_rank(rank)
        if key.common_name is not None:
            key = replace(key, common_name=None)  # a common name is not part of the group
        column[i] = groups.setdefault(key, len(groups))
    # One-hot (L, G) membership: the sums become one matrix product.
    membership = np.zeros((len(taxa), len(groups)), dtype=probs.dtype)
    membership[np.arange(len(taxa)), column] = 1
    return list(groups), probs @ membership


class ZeroShotClassifier:
    """Scores image embeddings against a fixed list of labels (taxa and/or free text).

    Label vectors are computed once, here. A :class:`Taxon` is written in ``form``; with
    ``ensemble`` (the default, as pybioclip) its text fills OpenAI's 80 templates, otherwise it
    becomes the single caption ``a photo of {text}.``. A free-text label is used the same way
    (filled into the templates, or ``a photo of {label}.``).
    """

    def __init__(
        self,
        model: Any,
        labels: Sequence[Taxon | str],
        *,
        form: TextForm | str = TextForm.TAXONOMIC_COMMON,
        ensemble: bool = True,
    ):
        labels = [label.strip() if isinstance(label, str) else label for label in labels]
        if not labels:
            raise ValueError("A zero-shot classifier needs at least one label.")
        for label in labels:
            if not isinstance(label, (Taxon, str)) or label == "":
                raise ValueError(f"Labels are Taxon values or non-empty strings, not {label!r}.")
        self.model = model
        self.labels: list[Taxon | str] = labels
        self.form = TextForm(form)
        self.ensemble = ensemble
        self.logit_scale = float(model.logit_scale)
        self.label_embeddings = self._embed_labels()

    def _embed_labels(self) -> np.ndarray:
        taxa_at = [i for i, label in enumerate(self.labels) if isinstance(label, Taxon)]
        text_at = [i for i, label in enumerate(self.labels) if isinstance(label, str)]
        out = np.zeros((len(self.labels), int(self.model.dimension)), dtype=np.float32)
        if taxa_at:
            out[taxa_at] = self.model.embed_taxa(
                [self.labels[i] for i in taxa_at], form=self.form, ensemble=self.ensemble
            )
        if text_at:
            texts = [str(self.labels[i]) for i in text_at]
            if self.ensemble:
                out[text_at] = self.model.embed_text_ensemble(texts)
            else:
                out[text_at] = self.model.encode_texts([f"a photo of {t}." for t in texts])
        return out

    @property
    def label_names(self) -> list[str]:
        """Display names: a taxon's scientific name, or the free text."""
        return [label.scientific_name if isinstance(label, Taxon) else label for label in self.labels]

    def probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(n, d) normalised image embeddings -> (n, L) float64 probabilities (rows sum to 1)."""
        images = np.asarray(image_embeddings, dtype=np.float64)
        if images.ndim != 2 or images.shape[1] != self.label_embeddings.shape[1]:
            raise ValueError(f"Image embeddings must be (n, {self.label_embeddings.shape[1]}), got {images.shape}.")
        logits = self.logit_scale * (images @ self.label_embeddings.astype(np.float64).T)
        return _softmax(logits)

    def predict(self, image_embeddings: np.ndarray, k: int = 5, rank: str | None = None) -> list[list[Prediction]]:
        """Top ``k`` predictions per image, best first.

        With ``rank``, label (species) probabilities are first summed to that rank
        (:func:`aggregate_to_rank`); every label must then be a Taxon at or below ``rank``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, not {k!r}.")
        probs = self.probabilities(image_embeddings)
        labels: Sequence[Taxon | str]
        if rank is None:
            names = self.label_names
            labels = self.labels
        else:
            # aggregate_to_rank refuses labels that are not taxa (text labels have no lineage)
            groups, probs = aggregate_to_rank(probs, self.labels, rank)  # type: ignore[arg-type]
            names = [taxon.scientific_name for taxon in groups]
            labels = groups
        k = min(k, probs.shape[1])
        results: list[list[Prediction]] = []
        for row in probs:
            # Stable sort: ties keep label order, so results are reproducible.
            top = np.argsort(-row, kind="stable")[:k]
            results.append(
                [
                    Prediction(
                        label=names[j],
                        score=float(row[j]),
                        rank=labels[j].rank if isinstance(labels[j], Taxon) else None,
                        taxon=labels[j] if isinstance(labels[j], Taxon) else None,
                    )
                    for j in top
                ]
            )
        return results


def classify_images(
    model: Any,
    images: Iterable[Any],
    labels: Sequence[Taxon | str],
    k: int = 5,
    rank: str | None = None,
    *,
    form: TextForm | str = TextForm.TAXONOMIC_COMMON,
    ensemble: bool = True,
) -> list[list[Prediction]]:
    """Zero-shot predictions for PIL images: encode them with ``model`` and classify against
    ``labels`` (see :class:`ZeroShotClassifier` and its ``predict``)."""
    classifier = ZeroShotClassifier(model, labels, form=form, ensemble=ensemble)
    return classifier.predict(model.encode_images(images), k=k, rank=rank)
