"""A search request (:class:`indexer.serve.models.SearchRequest`) -> the engine's query, filters and
grouping -> its answer as JSON. The HTTP API and ``bioclip-search`` without a server both run
requests through :func:`run_search`, so both give the same answer to the same request."""

from __future__ import annotations

import io
from typing import Any

from indexer.serve.config import Limits
from indexer.serve.errors import ApiError
from indexer.serve.models import SearchRequest, TermIn
from indexer.serve.payload import search_payload
from indexer.serve.uploads import check_picture, decode_base64

__all__ = ["run_search", "build_query", "build_filters", "check_page", "parse_request"]


def parse_request(data: Any) -> SearchRequest:
    """A request dict (JSON) -> :class:`SearchRequest`; ApiError 400 naming the bad field."""
    from pydantic import ValidationError

    try:
        return SearchRequest.model_validate(data)
    except ValidationError as exc:
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()))
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        raise ApiError(400, "bad_request", "; ".join(parts)) from None


def check_page(k: int, offset: int, limits: Limits) -> None:
    if k < 1:
        raise ApiError(400, "bad_request", "k must be at least 1")
    if offset < 0:
        raise ApiError(400, "bad_request", "offset must not be negative")
    if k > limits.max_k:
        raise ApiError(400, "limit_exceeded", f"k is at most {limits.max_k} on this server")
    if limits.max_depth is not None and offset + k > limits.max_depth:
        raise ApiError(
            400, "limit_exceeded", f"offset + k is at most {limits.max_depth:,} on this server; narrow the search"
        )


def _text(value: Any, what: str, limits: Limits) -> str:
    if not isinstance(value, str):
        raise ApiError(400, "bad_request", f"a {what} term needs text as its value")
    if len(value) > limits.max_text_chars:
        raise ApiError(
            400, "limit_exceeded", f"a {what} is at most {limits.max_text_chars:,} characters on this server"
        )
    return value


def _term(t: TermIn, limits: Limits) -> Any:
    from indexer.search.query import Term

    if t.kind in ("text", "taxon"):
        return Term(t.kind, _text(t.value, t.kind, limits), t.weight)
    if t.kind == "id":
        if isinstance(t.value, bool) or not isinstance(t.value, (int, str)):
            raise ApiError(400, "bad_request", "an id term needs an image id as its value")
        return Term("id", t.value, t.weight)
    if t.kind == "image":
        if t.data is None:
            raise ApiError(400, "bad_request", "an image term needs the picture's bytes as base64 in 'data'")
        data = check_picture(decode_base64(t.data, "the picture"), limits, t.label)
        return Term.image(data, t.weight, label=t.label)
    return Term.vector(_vector(t), t.weight, label=t.label)


def _vector(t: TermIn) -> Any:
    import numpy as np

    from indexer.errors import QueryError

    name = t.label or "the vector"
    if t.data is not None:
        try:
            arr = np.load(io.BytesIO(decode_base64(t.data, name)), allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise QueryError(f"cannot read {name}: {exc}") from None
    elif isinstance(t.value, list):
        arr = np.asarray(t.value, dtype=np.float32)
    else:
        raise ApiError(400, "bad_request", "a vector term needs numbers in 'value' or a .npy file in 'data'")
    if not np.issubdtype(arr.dtype, np.number):
        raise QueryError(f"{name} does not hold numbers")
    return arr


def build_query(
    req: SearchRequest, limits: Limits, *, leading: tuple[Any, ...] = (), extra: tuple[Any, ...] = ()
) -> Any:
    """The engine's :class:`indexer.search.Query`: the ``leading`` terms, ``q`` (weight 1), the
    ``extra`` terms, then the request's ``terms``."""
    from indexer.search.query import Query, Term

    terms = list(leading)
    if req.q is not None:
        terms.append(Term("text", _text(req.q, "text", limits)))
    terms += list(extra)
    if len(terms) + len(req.terms) > limits.max_terms:
        raise ApiError(400, "limit_exceeded", f"a query has at most {limits.max_terms} terms on this server")
    terms += [_term(t, limits) for t in req.terms]
    if not terms:
        raise ApiError(400, "bad_query", "give q (text or a taxon name) or terms")
    return Query(tuple(terms))


def build_filters(where: list[str], taxa: list[str], limits: Limits) -> Any:
    """The filter of ``where`` strings and ``taxa``, or None."""
    from indexer.search.filters import Filter, parse_where

    if len(where) + len(taxa) > limits.max_conditions:
        raise ApiError(
            400, "limit_exceeded", f"a query has at most {limits.max_conditions} filter conditions on this server"
        )
    for w in [*where, *taxa]:
        _text(w, "filter", limits)
    flt = parse_where(where)
    if taxa:
        flt = flt & Filter.taxon(*taxa)
    return flt or None


def _grouping(req: SearchRequest) -> Any:
    from indexer.search.query import Grouping

    if req.group is None:
        return None
    return Grouping(
        by_record=req.group in ("record", "both"),
        similarity=req.group_similarity if req.group in ("similar", "both") else None,
    )


def run_search(
    engine: Any, req: SearchRequest, limits: Limits, *, leading: tuple[Any, ...] = (), extra: tuple[Any, ...] = ()
) -> dict[str, Any]:
    """Answer ``req`` with ``engine``: the JSON answer (:func:`indexer.serve.payload.search_payload`).

    Raises ApiError for requests over ``limits`` or malformed, QueryError / FilterError for
    queries the engine cannot answer."""
    check_page(req.k, req.offset, limits)
    query = build_query(req, limits, leading=leading, extra=extra)
    filters = build_filters(req.where, req.taxon, limits)
    result = engine.search(
        query=query, k=req.k, offset=req.offset, filters=filters, min_score=req.min_score, group=_grouping(req)
    )
    return search_payload(result, k=req.k, offset=req.offset)
