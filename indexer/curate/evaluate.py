"""How far to trust the curation on this collection: measured on its own labelled images.

For every rank, over the images labelled at that rank: top-1 and top-5 accuracy of the zero-shot
prediction (over the collection's taxa) and of the neighbour vote, leave-one-out (an image never
votes for itself, and its near-duplicates do not vote: a re-imaged specimen would only repeat its
label). A calibration table at one rank: the top-1 confidence (zero-shot probability, neighbour
share) in ten bins against the accuracy in each bin, and the expected calibration error (ECE,
the bins' |accuracy - confidence| weighted by their share of images).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from indexer.curate.curation import Curation
from indexer.curate.options import DUPLICATE_COSINE
from indexer.errors import CurationError
from indexer.store.schema import RANKS

__all__ = ["Evaluation", "evaluate", "calibration"]

BINS = 10


@dataclass
class Evaluation:
    """Per rank: ``{rank, labelled, zeroshot_top1, zeroshot_top5, neighbours_top1, neighbours_top5}``;
    ``calibration``: method -> bins ``{low, high, images, confidence, accuracy}``; ``ece``: method ->
    expected calibration error; at ``calibration_rank``."""

    images: int
    ranks: list[dict[str, Any]] = field(default_factory=list)
    calibration_rank: str | None = None
    calibration: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    ece: dict[str, float] = field(default_factory=dict)
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = BINS) -> tuple[list[dict[str, Any]], float]:
    """Ten equal-width confidence bins: images, mean confidence, accuracy; and the ECE."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    out, ece, n = [], 0.0, max(len(confidence), 1)
    for b in range(bins):
        m = which == b
        count = int(m.sum())
        conf = float(confidence[m].mean()) if count else None
        acc = float(correct[m].mean()) if count else None
        if count:
            ece += count / n * abs(acc - conf)  # type: ignore[operator]
        out.append(
            {
                "low": round(float(edges[b]), 2),
                "high": round(float(edges[b + 1]), 2),
                "images": count,
                "confidence": None if conf is None else round(conf, 4),
                "accuracy": None if acc is None else round(acc, 4),
            }
        )
    return out, round(ece, 4)


def _vote_rank_of_label(cur: Curation, rank: str, dup: float) -> np.ndarray:
    """Per image: how many distinct names got more neighbour support than its own label (0: the
    vote's top; a large number when the label got none)."""
    ev = cur.evidence
    nb = ev.state.arrays["nbr_ids"]
    sc = ev.state.arrays["nbr_sc"]
    out = np.full(len(ev.state.ids), 10**6, dtype=np.int64)
    for lo in range(0, len(out), 65_536):
        sl = slice(lo, lo + 65_536)
        rows = ev.state.rows(nb[sl].reshape(-1)).reshape(nb[sl].shape)
        codes = np.where(rows >= 0, ev.labels[rank][np.maximum(rows, 0)], -1)
        w = np.where((codes >= 0) & (sc[sl] < dup) & np.isfinite(sc[sl]), np.maximum(sc[sl], 1e-6), 0.0)
        support = np.zeros(w.shape)
        mult = np.zeros(w.shape)
        for j in range(codes.shape[1]):
            same = codes == codes[:, j : j + 1]
            support += same * w[:, j : j + 1]
            mult += same
        own = ev.labels[rank][sl]
        own_support = ((codes == own[:, None]) * w).sum(axis=1)
        valid = (codes >= 0) & (w > 0)
        higher = ((support > own_support[:, None] + 1e-12) & valid) / np.maximum(mult, 1)
        place = np.rint(higher.sum(axis=1)).astype(np.int64)
        out[sl] = np.where(own_support > 0, place, 10**6)
    return out


def evaluate(
    collection: Any, *, rank: str | None = None, duplicate_cosine: float = DUPLICATE_COSINE, model: Any = None
) -> Evaluation:
    """Accuracy per rank and calibration (see the module docstring) of a curated collection."""
    cur = collection if isinstance(collection, Curation) else Curation.open(collection, model=model)
    ev = cur.evidence
    leaf = ev.leaf_rank
    if leaf is None:
        raise CurationError("the collection names no taxa: there is nothing to evaluate the predictions against")
    out = Evaluation(images=len(ev.state.ids), model=cur.model_label())
    ranks = list(RANKS[: RANKS.index(leaf) + 1])
    cal_rank = rank or leaf
    if cal_rank not in ranks:
        raise CurationError(f"rank {cal_rank!r} is not one of {', '.join(ranks)}")
    for r in ranks:
        own = ev.labels[r]
        m = own >= 0
        if not m.any():
            continue
        zs = ev.zs[r]
        z1 = zs[:, 0] == own
        z5 = (zs == own[:, None]).any(axis=1)
        vote = ev.vote(r, duplicate_cosine)
        place = _vote_rank_of_label(cur, r, duplicate_cosine)
        n1 = (vote.top == own) & (vote.voters > 0)
        n5 = place < 5
        out.ranks.append(
            {
                "rank": r,
                "labelled": int(m.sum()),
                "zeroshot_top1": round(float(z1[m].mean()), 4),
                "zeroshot_top5": round(float(z5[m].mean()), 4),
                "neighbours_top1": round(float(n1[m].mean()), 4),
                "neighbours_top5": round(float(n5[m].mean()), 4),
            }
        )
        if r == cal_rank:
            out.calibration_rank = r
            out.calibration["zeroshot"], out.ece["zeroshot"] = calibration(ev.zs_p[r][m, 0].astype(np.float64), z1[m])
            voted = m & (vote.voters > 0)
            out.calibration["neighbours"], out.ece["neighbours"] = calibration(vote.share[voted], n1[voted])
    return out
