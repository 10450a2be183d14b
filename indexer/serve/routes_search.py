"""Routes: the probes, the collections, search (GET and POST), taxon suggestions and facets."""

from __future__ import annotations

import json
import os
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse

from indexer.serve.errors import ApiError
from indexer.serve.models import (
    CollectionSummary,
    FacetsResponse,
    SearchRequest,
    SearchResponse,
    TaxonOut,
    errors_doc,
)
from indexer.serve.payload import jsonable, redact, redact_hit
from indexer.serve.queries import build_filters, parse_request, run_search
from indexer.serve.registry import Registry, Served
from indexer.serve.uploads import check_picture

__all__ = ["router", "collection_base", "with_links", "answer"]

router = APIRouter()

_COLLECTION = "/v1/collections/{name}"


def registry_of(request: Request) -> Registry:
    return request.app.state.registry


def collection_base(request: Request, name: str) -> str:
    return f"{request.scope.get('root_path', '')}/v1/collections/{name}"


def with_links(request: Request, served: Served, hit: dict[str, Any]) -> dict[str, Any]:
    """The hit as the API shows it: redacted on a public server, with links to its resources."""
    out = hit if request.app.state.config.show_paths else redact_hit(hit)
    base = f"{collection_base(request, served.name)}/images/{hit['id']}"
    out["links"] = {
        "self": base,
        "similar": f"{base}/similar",
        "thumbnail": f"{base}/thumbnail",
        "file": f"{base}/file",
    }
    return out


def model_name(request: Request, model: dict[str, Any]) -> str | None:
    """The model's name; a public server shows a ``local-dir:`` model by its folder's name only."""
    name = model.get("name") or model.get("source")
    if isinstance(name, str) and name.startswith("local-dir:") and not request.app.state.config.show_paths:
        return "local-dir:" + os.path.basename(name[len("local-dir:") :].rstrip("/"))
    return name


def answer(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(jsonable(content), status_code=status, headers={"cache-control": "no-store", **(headers or {})})


def search_answer(request: Request, served: Served, payload: dict[str, Any]) -> JSONResponse:
    if not request.app.state.config.show_paths:
        payload = redact(payload)
    payload["hits"] = [with_links(request, served, h) for h in payload["hits"]]
    payload["collection"] = served.name
    return answer(payload)


# -- probes --------------------------------------------------------------------------------


@router.get("/healthz", tags=["health"], summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], summary="Collections open and models loaded", responses=errors_doc(503))
def readyz(request: Request) -> JSONResponse:
    reg = registry_of(request)
    body: dict[str, Any] = {
        "status": "ready" if reg.ready else ("error" if reg.model_error else "loading"),
        "collections": {s.name: {"generation": s.engine.generation} for s in reg.collections.values()},
        "uptime_s": round(time.time() - reg.started, 1),
        "requests": request.app.state.activity.requests,
    }
    if request.app.state.config.show_paths:  # a user's own background server: what its status shows
        body["pid"] = os.getpid()
        body["idle_s"] = round(request.app.state.activity.idle_for(), 1)
        body["idle_timeout_s"] = request.app.state.config.idle_timeout
        for s in reg.collections.values():
            body["collections"][s.name]["path"] = s.path
    if reg.model_error:
        body["error"] = f"cannot load the model: {reg.model_error}"
    return answer(body, 200 if reg.ready else 503)


# -- collections ---------------------------------------------------------------------------


@router.get("/v1/collections", tags=["collections"], response_model=list[CollectionSummary])
def list_collections(request: Request) -> JSONResponse:
    out = []
    for s in registry_of(request).collections.values():
        base = collection_base(request, s.name)
        out.append(
            {
                "name": s.name,
                "images": s.engine.count(),
                "model": model_name(request, s.engine.collection.model),
                "generation": s.engine.generation,
                "links": {"self": base, "search": f"{base}/search"},
            }
        )
    return answer(out)


@router.get(_COLLECTION, tags=["collections"], responses=errors_doc(404))
def collection_info(request: Request, name: str) -> JSONResponse:
    """Model, counts, the index and its measured recall, the fields filters can use, images per rank."""
    s = registry_of(request).get(name)
    info = s.engine.info()
    model = info.get("model_info") or {}
    out = {
        "name": s.name,
        "generation": info["generation"],
        "images": info["images"],
        "failures": info["failures"],
        "retired": info["retired"],
        "unindexed_images": info["unindexed_images"],
        "model": {
            "name": model_name(request, model),
            "source": model_name(request, {"source": model.get("source")}),
            "revision": model.get("revision"),
            "dimension": info["dimension"],
            "preprocess": info.get("preprocess"),
        },
        "index": {"type": info["index"], "info": info.get("index_info")},
        "fields": [{"field": f, "type": t} for f, t in s.engine.fields()],
        "ranks": info["ranks"],
        "extra_fields": info["extra_fields"],
        "created": info["created"],
        "updated": info["updated"],
        "links": {"search": f"{collection_base(request, name)}/search"},
    }
    if request.app.state.config.show_paths:
        out["path"] = info["path"]
        out["sources"] = info["sources"]
    return answer(out)


# -- search --------------------------------------------------------------------------------


def _spec_terms(specs: list[str]) -> tuple[Any, ...]:
    from indexer.search.query import parse_term

    out = []
    for spec in specs:
        kind = spec.partition("=")[0].partition(":")[0].strip().lower()
        if kind in ("image", "vector"):
            raise ApiError(400, "bad_request", f"{kind} terms need POST .../search (a picture or numbers in the body)")
        out.append(parse_term(spec))
    return tuple(out)


@router.get(
    _COLLECTION + "/search",
    tags=["search"],
    response_model=SearchResponse,
    responses=errors_doc(400, 404, 429),
    summary="Search by text or taxon name, with filters",
)
def search_get(
    request: Request,
    name: str,
    *,
    q: str | None = None,
    k: int = 10,
    offset: int = 0,
    where: Annotated[list[str], Query(description="FIELD=VALUE, FIELD>VALUE, FIELD=LO..HI, ... (repeat)")] = [],  # noqa: B006
    taxon: Annotated[list[str], Query(description="Only these taxa, any rank (repeat: any of them)")] = [],  # noqa: B006
    term: Annotated[list[str], Query(description="KIND[:WEIGHT]=VALUE as the CLI's --term (text, taxon, id)")] = [],  # noqa: B006
    group: Literal["record", "similar", "both"] | None = None,
    group_similarity: float = 0.95,
    min_score: float | None = None,
) -> JSONResponse:
    s = registry_of(request).get(name)
    limits = request.app.state.config.limits
    req = parse_request(
        {
            "q": q,
            "k": k,
            "offset": offset,
            "where": where,
            "taxon": taxon,
            "group": group,
            "group_similarity": group_similarity,
            "min_score": min_score,
        }
    )
    if len(term) > limits.max_terms:
        raise ApiError(400, "limit_exceeded", f"a query has at most {limits.max_terms} terms on this server")
    payload = run_search(s.engine, req, limits, extra=_spec_terms(term))
    return search_answer(request, s, payload)


_POST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SearchRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "q": {"type": "string"},
                        "k": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "where": {"type": "array", "items": {"type": "string"}},
                        "taxon": {"type": "array", "items": {"type": "string"}},
                        "group": {"type": "string", "enum": ["record", "similar", "both"]},
                        "min_score": {"type": "number"},
                    },
                    "required": ["image"],
                }
            },
        },
    }
}


async def _multipart(request: Request) -> tuple[SearchRequest, tuple[Any, ...]]:
    from indexer.search.query import Term

    limits = request.app.state.config.limits
    form = await request.form(max_files=limits.max_terms, max_fields=100, max_part_size=256 * 1024)
    images = []
    for part in form.getlist("image"):
        if isinstance(part, str):
            raise ApiError(400, "bad_request", "the field 'image' must be a file upload")
        data = await part.read()
        label = os.path.basename(part.filename or "") or None
        images.append(Term.image(check_picture(data, limits, label), label=label))
    if not images:
        raise ApiError(400, "bad_request", "a multipart search needs a picture in the field 'image'")
    fields: dict[str, Any] = {}
    for key in ("q", "k", "offset", "group", "group_similarity", "min_score"):
        value = form.get(key)
        if isinstance(value, str) and value != "":
            fields[key] = value
    for key in ("where", "taxon"):
        fields[key] = [v for v in form.getlist(key) if isinstance(v, str)]
    unknown = sorted(set(form.keys()) - {"image", "where", "taxon", *fields})
    if unknown:
        raise ApiError(400, "bad_request", f"unknown form fields: {', '.join(unknown)}")
    return parse_request(fields), tuple(images)


@router.post(
    _COLLECTION + "/search",
    tags=["search"],
    response_model=SearchResponse,
    responses=errors_doc(400, 404, 413, 415, 429),
    openapi_extra=_POST_BODY,
    summary="Search by weighted terms (JSON) or by an uploaded picture (multipart, field 'image')",
)
async def search_post(request: Request, name: str) -> JSONResponse:
    s = registry_of(request).get(name)
    limits = request.app.state.config.limits
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        req, leading = await _multipart(request)
    elif kind in ("application/json", ""):
        body = await request.body()
        try:
            data = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "bad_json", "the body is not JSON") from None
        if not isinstance(data, dict):
            raise ApiError(400, "bad_json", "the body must be a JSON object (see SearchRequest in /docs)")
        req, leading = parse_request(data), ()
    else:
        raise ApiError(415, "unsupported_media_type", "send application/json or multipart/form-data")
    payload = await run_in_threadpool(run_search, s.engine, req, limits, leading=leading)
    return search_answer(request, s, payload)


# -- taxa and facets -----------------------------------------------------------------------


@router.get(
    _COLLECTION + "/taxa",
    tags=["search"],
    response_model=list[TaxonOut],
    responses=errors_doc(400, 404),
    summary="Taxon names that start with a prefix (search-box suggestions)",
)
def taxa(
    request: Request,
    name: str,
    prefix: Annotated[str, Query(min_length=1, max_length=200)],
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> JSONResponse:
    from indexer.store.schema import RANKS

    s = registry_of(request).get(name)
    out = [
        {
            "name": m.name,
            "rank": m.rank,
            "lineage": {r: v for r, v in zip(RANKS, m.lineage) if v is not None},
            "common_name": m.common_name,
            "images": m.count,
        }
        for m in s.engine.taxonomy.suggest(prefix, limit)
    ]
    return answer(out)


@router.get(
    _COLLECTION + "/facets",
    tags=["search"],
    response_model=FacetsResponse,
    responses=errors_doc(400, 404),
    summary="Values of a metadata field and their image counts, among the images passing the filters",
)
def facets(
    request: Request,
    name: str,
    *,
    field: str,
    where: Annotated[list[str], Query()] = [],  # noqa: B006
    taxon: Annotated[list[str], Query()] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> JSONResponse:
    from indexer.store.schema import METADATA_COLUMNS, canonical_column

    s = registry_of(request).get(name)
    column = field if field in METADATA_COLUMNS else canonical_column(field)
    if column is None or column not in METADATA_COLUMNS or column == "extra":
        raise ApiError(400, "bad_filter", f"no field {field!r} to count by; see the collection's fields")
    flt = build_filters(where, taxon, request.app.state.config.limits)
    values = s.engine.facet(column, flt, limit)
    return answer(
        {"field": column, "images": s.engine.count(flt), "values": [{"value": v, "images": n} for v, n in values]}
    )
