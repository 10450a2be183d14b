"""The API's typed request and answer models (pydantic): what FastAPI validates and what
``/openapi.json`` describes. The command line builds the same request as a plain dict and
validates it with :class:`SearchRequest` when it searches without a server."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "TermIn",
    "SearchRequest",
    "HitOut",
    "RecallOut",
    "SearchResponse",
    "ErrorOut",
    "ErrorResponse",
    "CollectionSummary",
    "TaxonOut",
    "FacetValue",
    "FacetsResponse",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TermIn(_Strict):
    """One weighted term, as the command line's ``--term KIND[:WEIGHT]=VALUE``."""

    kind: Literal["text", "taxon", "image", "id", "vector"]
    weight: float = Field(1.0, description="Negative to move away from the term; not 0.")
    value: str | int | list[float] | None = Field(
        None, description="text and taxon: the text; id: an image id; vector: the numbers."
    )
    data: str | None = Field(
        None, description="Base64: image, the picture's bytes (JPEG, PNG, TIFF, WebP); vector, a .npy file."
    )
    label: str | None = Field(None, description="How an image or vector term is named in the interpretation.")


class SearchRequest(_Strict):
    """A search: ``q`` (text or a taxon name) and/or ``terms``, with filters and a page."""

    q: str | None = Field(None, description="Free text or a taxon name at any rank (weight 1).")
    terms: list[TermIn] = Field(default_factory=list)
    k: int = Field(10, description="Results per page.")
    offset: int = Field(0, description="Results (groups, when grouping) to skip.")
    where: list[str] = Field(default_factory=list, description="Filters FIELD=VALUE, FIELD>VALUE, FIELD=LO..HI ...")
    taxon: list[str] = Field(default_factory=list, description="Only these taxa (any of them), any rank.")
    group: Literal["record", "similar", "both"] | None = None
    group_similarity: float = Field(0.95, ge=-1.0, le=1.0)
    min_score: float | None = Field(None, description="Leave out results scoring below this cosine.")


class HitOut(BaseModel):
    """One result: its id and score, every non-empty metadata field (Darwin Core names), and links."""

    model_config = ConfigDict(extra="allow")

    id: int
    score: float
    links: dict[str, str] = Field(default_factory=dict)


class RecallOut(BaseModel):
    """The recall figure and search parameters that applied to the query's kind, as the collection
    stored them when its index was tuned."""

    kind: Literal["image", "text", "mixed"]
    index: str | None = Field(description="The index type (FAISS factory); null: no index, exact search.")
    recall_at_10: float | None = Field(
        description="Recall@10 against exact search stored for this kind; null: this kind was not measured."
    )
    target: float | None = Field(description="The recall target the index was tuned to.")
    measured_on: str | None = Field(description="The queries the figure was measured on, in words.")
    params: dict[str, int] = Field(description="The search parameters used (nprobe, efSearch, rerank, ...).")
    met: bool | None = Field(description="Whether tuning reached the target within the latency budget.")
    note: str = ""


class SearchResponse(BaseModel):
    interpretation: str
    query_kind: Literal["image", "text", "mixed"] | None = Field(
        description="What kind of query it was searched as (text and taxon terms: text; pictures, "
        "indexed images and vectors: image; both: mixed)."
    )
    recall: RecallOut | None = Field(description="The recall figure and parameters that applied to that kind.")
    searched_as: str = Field(description="query_kind and recall in one line for people.")
    notices: list[str]
    prompts: list[str]
    alternatives: list[str]
    candidates: int | None = Field(None, description="Images passing the filters (null without filters).")
    generation: int
    k: int
    offset: int
    has_more: bool
    next_offset: int | None
    fields: list[str] = Field(description="The metadata fields the hits have, in schema order.")
    hits: list[HitOut]
    collection: str


class ErrorOut(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorOut


class CollectionSummary(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    images: int
    model: str | None
    generation: int
    links: dict[str, str]


class TaxonOut(BaseModel):
    name: str
    rank: str
    lineage: dict[str, str | None]
    common_name: str | None
    images: int


class FacetValue(BaseModel):
    value: Any
    images: int


class FacetsResponse(BaseModel):
    field: str
    images: int = Field(description="Images passing the filters.")
    values: list[FacetValue]


def errors_doc(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: its error statuses, each with the error model."""
    return {s: {"model": ErrorResponse} for s in statuses}
