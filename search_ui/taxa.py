"""The most likely of the collection's own taxa for a picture (zero-shot), at a chosen rank."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from indexer.errors import QueryError
from indexer.store.schema import RANKS

__all__ = ["TaxonScore", "TaxaPredictor"]


@dataclass(frozen=True)
class TaxonScore:
    name: str
    rank: str
    score: float
    images: int
    common_name: str | None = None


class TaxaPredictor:
    """Zero-shot scores of a picture against the collection's own taxa at a chosen rank.

    Labels are the collection's taxa at that rank (the ``max_labels`` with most images), embedded
    as BioCLIP's taxonomic + common-name text; with at most ``ensemble_max`` labels through OpenAI's
    80 templates (as pybioclip), else as one caption each (80 times cheaper). The label embeddings
    are computed once per collection generation and rank, and shared by every session.
    """

    def __init__(self, engine, *, max_labels: int = 2000, ensemble_max: int = 64):
        self.engine = engine
        self.max_labels = max_labels
        self.ensemble_max = ensemble_max
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, str], tuple[Any, list]] = {}
        self.builds = 0  # classifiers built (for tests)

    def _classifier(self, rank: str):
        from bioclip.zeroshot import ZeroShotClassifier

        key = (self.engine.generation, rank)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            matches, labels = [], []
            for m in self.engine.taxonomy.taxa(rank):
                try:
                    labels.append(m.taxon())
                except ValueError:  # a lineage bioclip cannot write (e.g. an epithet without genus)
                    continue
                matches.append(m)
                if len(labels) >= self.max_labels:
                    break
            if not labels:
                raise QueryError(f"this collection names no taxa at rank {rank}")
            clf = ZeroShotClassifier(self.engine.model, labels, ensemble=len(labels) <= self.ensemble_max)
            self.builds += 1
            # Keep only the current generation's classifiers.
            self._cache = {k: v for k, v in self._cache.items() if k[0] == key[0]}
            self._cache[key] = (clf, matches)
            return clf, matches

    def predict(self, vector, rank: str, k: int = 5) -> list[TaxonScore]:
        """The ``k`` most likely taxa at ``rank`` for one image embedding (1, d) or (d,)."""
        import numpy as np

        if rank not in RANKS:
            raise QueryError(f"unknown rank {rank!r}; ranks are {', '.join(RANKS)}")
        clf, matches = self._classifier(rank)
        vec = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        probs = clf.probabilities(vec)[0]
        order = np.argsort(-probs, kind="stable")[: max(1, int(k))]
        return [
            TaxonScore(matches[i].name, rank, float(probs[i]), matches[i].count, matches[i].common_name) for i in order
        ]
