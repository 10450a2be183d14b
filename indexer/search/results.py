"""What a search returns: :class:`Hit` (one image with its score and metadata) and :class:`SearchResult`.

``to_dict`` of each is the one JSON shape of results, which ``bioclip-search --json`` prints and
the HTTP API serves (see :mod:`indexer.search.output`, which also has the CSV shape).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from indexer.search.taxonomy import TaxonMatch
from indexer.store.schema import HIDDEN_COLUMNS

__all__ = ["Hit", "SearchResult", "searched_as"]

#: Metadata that is internal to the indexer (digests, normalisation bookkeeping, folded copies for
#: filters), never shown.
HIDDEN_FIELDS: Final = HIDDEN_COLUMNS
#: Bumped when a field of ``SearchResult.to_dict`` changes meaning or goes away (fields may be added:
#: ``query_kind``, ``recall`` and ``searched_as`` were, in version 1).
JSON_VERSION: Final = 1


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
        """JSON-able: ``id``, ``score``, ``location``, then every metadata field that has a value
        (timestamps as ISO 8601 text; ``extra``, the source's other columns, as an object), and
        ``group`` (the other members' id, score and location) when grouped."""
        out: dict[str, Any] = {"id": int(self.id), "score": round(float(self.score), 6), "location": self.location}
        for k, v in self.metadata.items():
            if v is None or k in ("id", "location") or k in HIDDEN_FIELDS:
                continue
            out[k] = extra_object(v) if k in ("extra", "verbatim") else plain_value(v)
        if self.group:
            out["group"] = [
                {"id": int(g.id), "score": round(float(g.score), 6), "location": g.location} for g in self.group
            ]
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
    kind: str | None = None  # the query's kind (image, text, mixed): which tuned parameters searched it; None: no query
    recall: dict[str, Any] | None = None  # what applied to that kind (indexer.ann.info.applied_recall); None: no query
    offset: int = 0  # results (groups, when grouped) skipped before this page
    k: int = 0  # the page size asked for

    @property
    def next_offset(self) -> int | None:
        """The ``offset`` of the next page, None when there is none."""
        return self.offset + self.k if self.has_more and self.k else None

    @property
    def searched_as(self) -> str:
        """One line for people: the query's kind and the recall figure and parameters that applied
        (see :func:`searched_as`)."""
        return searched_as(self.kind, self.recall)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this result: ``version``, ``interpretation``, ``query_kind`` (image,
        text or mixed; null when browsing without a query), ``recall`` (what applied to that kind:
        see :func:`indexer.ann.info.applied_recall`; null without a query), ``searched_as`` (the two
        in words), ``notices``, ``prompts``, ``taxon``, ``alternatives``, ``candidates`` (null
        without filters), ``generation``, ``offset``, ``k``, ``has_more``, ``next_offset`` and
        ``hits`` (see :meth:`Hit.to_dict`)."""
        return {
            "version": JSON_VERSION,
            "interpretation": self.interpretation,
            "query_kind": self.kind,
            "recall": _recall_object(self.recall),
            "searched_as": self.searched_as,
            "notices": list(self.notices),
            "prompts": list(self.prompts),
            "taxon": self.taxon.describe() if self.taxon is not None else None,
            "alternatives": [m.describe() for m in self.alternatives],
            "candidates": self.candidates,
            "generation": self.generation,
            "offset": self.offset,
            "k": self.k,
            "has_more": bool(self.has_more),
            "next_offset": self.next_offset,
            "hits": [h.to_dict() for h in self.hits],
        }


def searched_as(kind: str | None, recall: Mapping[str, Any] | None) -> str:
    """The query's kind and what applied to it, in one line: "searched as a text query (recall@10
    0.950 on text queries, nprobe 62)"; "no query: ..." when there was none (a listing by filters)."""
    if kind is None:
        return "no query: the images passing the filters, in id order, not ranked"
    head = f"searched as {'an' if kind == 'image' else 'a'} {kind} query"
    if not recall:
        return head
    params = ", ".join(f"{k} {v}" for k, v in (recall.get("params") or {}).items())
    figure = recall.get("recall_at_10")
    if recall.get("index") is None:
        return f"{head} (exact search: every image compared)"
    if not params and figure == 1.0:
        return f"{head} (exact search, a {recall['index']} index: recall@10 1 by definition)"
    if figure is None:
        return f"{head} (recall not measured on {kind} queries; the image parameters: {params or 'defaults'})"
    missed = recall.get("met") is False and recall.get("target") is not None
    return (
        f"{head} (recall@10 {figure:.3f} on {kind} queries"
        + (f", below the target {recall['target']:g}" if missed else "")
        + (f", {params}" if params else "")
        + ")"
    )


def _recall_object(recall: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if recall is None:
        return None
    out = dict(recall)
    out["params"] = {str(k): int(v) for k, v in (recall.get("params") or {}).items()}
    return out


def plain_value(value: Any) -> Any:
    """A JSON-able value: timestamps as ISO 8601 text, numpy scalars as Python numbers."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def extra_object(value: Any) -> Any:
    """``extra`` is stored as JSON text; the object it holds (the text itself if it does not parse)."""
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return value
    return parsed if isinstance(parsed, dict) else value


def _binomial(meta: dict) -> str | None:
    g, s = meta.get("genus"), meta.get("specificEpithet")
    if g and s:
        return f"{g} {s}"
    return None
