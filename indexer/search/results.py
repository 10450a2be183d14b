"""What a search returns: :class:`Hit` (one image with its score and metadata) and :class:`SearchResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.search.taxonomy import TaxonMatch

__all__ = ["Hit", "SearchResult"]

_HIDDEN = {"meta_hash"}


@dataclass(frozen=True)
class Hit:
    """One result: the image's id, similarity score, where its bytes are, and its metadata.

    With grouping (see :class:`indexer.search.query.Grouping`), ``group`` holds the other hits of this
    hit's group, best first (empty otherwise)."""

    id: int
    score: float
    location: str
    metadata: dict[str, Any]
    group: tuple[Hit, ...] = field(default=(), compare=False)

    def get(self, name: str, default: Any = None) -> Any:
        v = self.metadata.get(name)
        return default if v is None else v

    @property
    def scientific_name(self) -> str | None:
        return self.get("scientificName") or _binomial(self.metadata)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: id, score, location, then every non-empty metadata field (and ``group``:
        the other members' id, score and location, when grouped)."""
        out: dict[str, Any] = {"id": self.id, "score": round(float(self.score), 6), "location": self.location}
        for k, v in self.metadata.items():
            if v is None or k in ("id", "location") or k in _HIDDEN:
                continue
            out[k] = v.isoformat() if hasattr(v, "isoformat") else v
        if self.group:
            out["group"] = [{"id": g.id, "score": round(float(g.score), 6), "location": g.location} for g in self.group]
        return out


@dataclass
class SearchResult:
    """Hits plus how the query was understood and anything the user should know."""

    hits: list[Hit]
    interpretation: str = ""
    notices: list[str] = field(default_factory=list)
    candidates: int | None = None  # images passing the filters (None: no filter)
    generation: int = 0
    elapsed_ms: float = 0.0
    prompt: str | None = None  # the (first) text sent to the model, when there was text
    taxon: TaxonMatch | None = None  # the (first) taxon the query was understood as
    query_vector: np.ndarray | None = None  # (1, d) float32, to reuse (facets, paging) without re-encoding
    prompts: list[str] = field(default_factory=list)  # every text sent to the model
    alternatives: list[TaxonMatch] = field(default_factory=list)  # other taxa an ambiguous name names
    has_more: bool = False  # a further page (offset + k) has results
    timings: dict[str, float] = field(default_factory=dict)  # ms: embed, filter, search, metadata
    kind: str = "image"  # the query's kind (image, text, mixed): which tuned index parameters searched it

    def to_dict(self) -> dict[str, Any]:
        return {
            "interpretation": self.interpretation,
            "notices": list(self.notices),
            "candidates": self.candidates,
            "generation": self.generation,
            "prompts": list(self.prompts),
            "alternatives": [m.describe() for m in self.alternatives],
            "has_more": self.has_more,
            "hits": [h.to_dict() for h in self.hits],
        }


def _binomial(meta: dict) -> str | None:
    g, s = meta.get("genus"), meta.get("specificEpithet")
    if g and s:
        return f"{g} {s}"
    return None
