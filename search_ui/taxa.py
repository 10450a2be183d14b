"""The most likely of the collection's own taxa for a picture (zero-shot), at a chosen rank.

The method is pybioclip's at every rank: the picture is scored against the collection's species (its
lowest named taxa), ``softmax(logit_scale * image @ species)``, and a higher rank's score is the sum
of its species' scores, grouped by the whole lineage down to that rank (homonyms in different
families stay apart). Higher-rank names are never embedded as labels of their own. When the
collection has more species than ``max_labels``, only the ``max_labels`` with most images are ranked,
and :attr:`TaxaPredictor.coverage` says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from indexer.errors import QueryError
from indexer.store.schema import RANKS

__all__ = ["TaxonScore", "TaxaPredictor", "Labels"]


@dataclass(frozen=True)
class TaxonScore:
    name: str
    rank: str
    score: float
    images: int
    common_name: str | None = None


@dataclass(frozen=True)
class Labels:
    """The species ranked (``matches``, most images first) of ``total`` in the collection, their
    classifier, and the rank they are at (``species``, or the lowest rank with names)."""

    classifier: Any
    matches: list
    total: int
    rank: str


class TaxaPredictor:
    """Zero-shot scores of a picture against the collection's own species, summed to any rank.

    Label embeddings (BioCLIP's taxonomic + common-name text; through OpenAI's 80 templates as
    pybioclip when there are at most ``ensemble_max`` species, else one caption each, 80 times cheaper)
    are computed once per collection generation and shared by every session and every rank.
    """

    def __init__(self, engine, *, max_labels: int = 2000, ensemble_max: int = 64):
        self.engine = engine
        self.max_labels = max_labels
        self.ensemble_max = ensemble_max
        self._lock = threading.Lock()
        self._cache: dict[int, Labels] = {}
        self.builds = 0  # classifiers built (for tests)

    def labels(self) -> Labels:
        from bioclip.zeroshot import ZeroShotClassifier

        generation = self.engine.generation
        with self._lock:
            hit = self._cache.get(generation)
            if hit is not None:
                return hit
            taxonomy = self.engine.taxonomy
            leaf_rank = next((r for r in reversed(RANKS) if taxonomy.taxa(r)), None)
            if leaf_rank is None:
                raise QueryError("this collection names no taxa")
            candidates = taxonomy.taxa(leaf_rank)
            matches, labels = [], []
            for m in candidates:
                try:
                    labels.append(m.taxon())
                except ValueError:  # a lineage bioclip cannot write (e.g. an epithet without genus)
                    continue
                matches.append(m)
                if len(labels) >= self.max_labels:
                    break
            if not labels:
                raise QueryError(f"this collection names no taxa at rank {leaf_rank} that can be written as text")
            clf = ZeroShotClassifier(self.engine.model, labels, ensemble=len(labels) <= self.ensemble_max)
            self.builds += 1
            entry = Labels(clf, matches, len(candidates), leaf_rank)
            self._cache = {generation: entry}
            return entry

    def coverage(self) -> str | None:
        """A sentence when only part of the collection's taxa are ranked (None when all are)."""
        labels = self.labels()
        notes = []
        if len(labels.matches) < labels.total:
            notes.append(
                f"Ranked among the {len(labels.matches):,} {_plural(labels.rank)} with most images, of the "
                f"collection's {labels.total:,}."
            )
        if labels.rank != "species":
            notes.append(f"The collection names no species: its {_plural(labels.rank)} are scored instead.")
        return " ".join(notes) or None

    def predict(self, vector, rank: str, k: int = 5) -> list[TaxonScore]:
        """The ``k`` most likely taxa at ``rank`` for one image embedding (1, d) or (d,): the species'
        probabilities, summed per lineage down to ``rank`` above the species."""
        import numpy as np

        if rank not in RANKS:
            raise QueryError(f"unknown rank {rank!r}; ranks are {', '.join(RANKS)}")
        labels = self.labels()
        if RANKS.index(rank) > RANKS.index(labels.rank):
            raise QueryError(f"this collection names no taxa at rank {rank}")
        vec = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        probs = labels.classifier.probabilities(vec)[0]
        depth = RANKS.index(rank) + 1
        sums: dict[tuple, float] = {}
        first: dict[tuple, int] = {}
        for j, m in enumerate(labels.matches):
            prefix = m.lineage[:depth]
            if prefix[depth - 1] is None:
                continue  # no name at this rank: its score belongs to no taxon there
            key = tuple(None if v is None else v.casefold() for v in prefix)
            sums[key] = sums.get(key, 0.0) + float(probs[j])
            first.setdefault(key, j)
        counts = {m.key[1][:depth]: m for m in self.engine.taxonomy.taxa(rank)}
        top = sorted(sums, key=lambda key: (-sums[key], first[key]))[: max(1, int(k))]
        out = []
        for key in top:
            own = counts.get(key)
            leaf = labels.matches[first[key]]
            name = own.name if own is not None else _name_at(leaf, rank)
            images = own.count if own is not None else 0
            common = (own.common_name if own is not None else None) if rank != labels.rank else leaf.common_name
            out.append(TaxonScore(name, rank, sums[key], images, common))
        return out


def _name_at(m: Any, rank: str) -> str:
    i = RANKS.index(rank)
    if rank == "species":
        return f"{m.lineage[5] or ''} {m.lineage[6] or ''}".strip()
    return m.lineage[i] or ""


def _plural(rank: str) -> str:
    return {"species": "species", "genus": "genera", "family": "families", "class": "classes", "phylum": "phyla"}.get(
        rank, rank + "s"
    )
