"""pybioclip's predictions, row for row: custom labels, binned labels, the Tree of Life at any rank.

The method (pybioclip 2.x ``predict.py``), on L2-normalised image features ``x`` (n, d):

- label vectors: for custom labels, each label's text (stripped) filled into OpenAI's 80 ImageNet
  templates, each template's embedding normalised, averaged, renormalised; for the Tree of Life,
  the precomputed (d, N) matrix of :mod:`bioclip.reference`;
- probabilities: ``softmax(logit_scale.exp() * x @ labels)`` over all labels, in float32;
- custom labels: the top ``k`` labels (all by default); bins: label probabilities summed per bin (in
  label order), the ``k`` largest bins (ties: the bin seen first);
- Tree of Life, rank ``species``: the top ``k`` species; a higher rank: the species whose probability
  is above ``min_prob`` (1e-9) summed per lineage prefix (kingdom .. rank, the values joined by a
  space, so homonyms in different families stay apart), the ``k`` largest (ties: first seen).

Rows carry pybioclip's columns: ``file_name`` then ``classification``, ``score`` (custom and bins),
or the ranks down to the asked one and ``score`` (species adds ``species_epithet``, ``species`` as
the binomial and ``common_name``). Needs numpy only; the model is passed in.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .taxa import RANKS

__all__ = [
    "MIN_PROB",
    "probabilities",
    "custom_label_vectors",
    "rank_columns",
    "predict_custom",
    "predict_bins",
    "predict_tree_of_life",
]

#: Species at or below this probability are left out of higher-rank sums (pybioclip's ``min_prob``).
MIN_PROB = 1e-9


def probabilities(image_features: np.ndarray, label_matrix: np.ndarray, logit_scale: float) -> np.ndarray:
    """(n, L) float32 softmax of ``logit_scale * x @ W`` for normalised features (n, d) and a (d, L)
    label matrix (columns are labels, as pybioclip stores them)."""
    x = np.asarray(image_features, dtype=np.float32)
    w = np.asarray(label_matrix, dtype=np.float32)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"image features {x.shape} and labels {w.shape} do not fit ((n, d) and (d, L))")
    logits = np.float32(logit_scale) * (x @ w)
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def custom_label_vectors(model: Any, labels: Sequence[str]) -> np.ndarray:
    """(d, L) label matrix of free-text labels: the 80-template ensemble of each stripped label."""
    cleaned = [label.strip() for label in labels]
    if not cleaned or any(not c for c in cleaned):
        raise ValueError("labels must be non-empty text")
    return np.ascontiguousarray(model.embed_text_ensemble(cleaned).T)


def _top(row: np.ndarray, k: int) -> np.ndarray:
    # descending; ties keep the lower index first (as a stable sort does)
    return np.argsort(-row, kind="stable")[:k]


def predict_custom(files: Sequence[str], probs: np.ndarray, labels: Sequence[str], k: int | None = None) -> list[dict]:
    """Rows ``{file_name, classification, score}``: the top ``k`` labels per image (all when None/0)."""
    labels = [label.strip() for label in labels]
    k = len(labels) if not k or k > len(labels) else k
    rows = []
    for name, row in zip(files, probs):
        for j in _top(row, k):
            rows.append({"file_name": name, "classification": labels[j], "score": float(row[j])})
    return rows


def predict_bins(
    files: Sequence[str], probs: np.ndarray, labels: Sequence[str], bins: Mapping[str, str], k: int | None = None
) -> list[dict]:
    """Rows ``{file_name, classification (the bin), score (summed label probabilities)}``, the ``k``
    largest bins per image (all when None/0); ``bins`` maps each label to its bin."""
    labels = [label.strip() for label in labels]
    missing = [label for label in labels if not str(bins.get(label) or "").strip()]
    if missing:
        raise ValueError(f"labels without a bin: {', '.join(missing[:5])}")
    k = len(labels) if not k or k > len(labels) else k
    rows = []
    for name, row in zip(files, probs):
        sums: dict[str, np.float32] = {}
        for j, label in enumerate(labels):
            b = bins[label]
            sums[b] = sums.get(b, np.float32(0)) + row[j]
        for b in heapq.nlargest(k, sums, key=sums.__getitem__):
            rows.append({"file_name": name, "classification": b, "score": float(sums[b])})
    return rows


def rank_columns(rank: str) -> list[str]:
    """pybioclip's classification columns at ``rank`` (``species`` adds epithet, binomial, common name)."""
    if rank not in RANKS:
        raise ValueError(f"Unknown rank {rank!r}; ranks are {', '.join(RANKS)}.")
    if rank == "species":
        return [*RANKS[:-1], "species_epithet", "species", "common_name"]
    return list(RANKS[: RANKS.index(rank) + 1])


def _classification(names: Sequence[str], common: str, rank: str) -> dict[str, str]:
    if rank == "species":
        d = {r: names[i] for i, r in enumerate(RANKS[:-1])}
        d["species_epithet"] = names[6]
        d["species"] = f"{names[5]} {names[6]}"
        d["common_name"] = common
        return d
    return {r: names[i] for i, r in enumerate(RANKS[: RANKS.index(rank) + 1])}


def predict_tree_of_life(
    files: Sequence[str],
    probs: np.ndarray,
    names: Sequence[Sequence[str]],
    common_names: Sequence[str],
    *,
    rank: str = "species",
    k: int = 5,
    min_prob: float = MIN_PROB,
) -> list[dict]:
    """Rows ``{file_name, <rank columns>, score}``: the top ``k`` species, or the ``k`` largest sums at
    a higher ``rank`` (see the module docstring)."""
    rank_columns(rank)  # validates
    n_labels = probs.shape[1]
    k = min(int(k), n_labels) if k else n_labels
    rows = []
    for name, row in zip(files, probs):
        if rank == "species":
            for j in map(int, _top(row, k)):
                rows.append(
                    {"file_name": name, **_classification(names[j], common_names[j], rank), "score": float(row[j])}
                )
            continue
        depth = RANKS.index(rank) + 1
        sums: dict[str, np.float32] = {}
        first: dict[str, int] = {}
        for j in map(int, np.flatnonzero(row > min_prob)):
            key = " ".join(names[j][:depth])
            sums[key] = sums.get(key, np.float32(0)) + row[j]
            first.setdefault(key, int(j))
        for key in heapq.nlargest(k, sums, key=sums.__getitem__):
            j = first[key]
            rows.append(
                {"file_name": name, **_classification(names[j], common_names[j], rank), "score": float(sums[key])}
            )
    return rows
