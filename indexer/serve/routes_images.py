"""Routes of one image: its metadata, similar images, a thumbnail and the file itself.

Bytes come only from the collection's own sources, through :class:`indexer.media.library.MediaLibrary`
(the app's safe media layer): the recorded location of the image, never a path from the request,
and only when its real path lies under its source's folder. Thumbnails and files carry an ETag
(from the file's recorded size, time and content hash) and Cache-Control; ``If-None-Match``
answers 304 without reading anything.
"""

from __future__ import annotations

import io
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from indexer.serve.errors import ApiError
from indexer.serve.models import SearchResponse, errors_doc
from indexer.serve.payload import hit_payload
from indexer.serve.queries import parse_request, run_search
from indexer.serve.registry import Served
from indexer.serve.routes_search import answer, registry_of, search_answer, with_links

__all__ = ["router"]

router = APIRouter()

_IMAGE = "/v1/collections/{name}/images/{image_id}"
_MAX_ID = 2**63 - 1
_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp"}
_MIME.update({"GIF": "image/gif", "BMP": "image/bmp"})


def _hit(served: Served, image_id: int) -> Any:
    if not 0 <= image_id <= _MAX_ID:
        raise ApiError(404, "unknown_image", f"no image with id {image_id} in {served.name}")
    hits = served.engine.get([image_id])
    if not hits:
        raise ApiError(404, "unknown_image", f"no image with id {image_id} in {served.name}")
    return hits[0]


def _cache_headers(request: Request, etag: str) -> dict[str, str]:
    scope = "private" if request.app.state.config.api_key_file else "public"
    return {"etag": etag, "cache-control": f"{scope}, max-age=86400"}


def _not_modified(request: Request, etag: str) -> bool:
    wanted = request.headers.get("if-none-match")
    if not wanted:
        return False
    tags = [t.strip() for t in wanted.split(",")]
    return "*" in tags or etag in tags or f"W/{etag}" in tags


def _not_available(served: Served, hit: Any, what: str) -> ApiError:
    return ApiError(
        404, "image_not_available", f"the {what} of image {hit.id} cannot be served from this server ({served.name})"
    )


@router.get(_IMAGE, tags=["images"], responses=errors_doc(400, 404), summary="An image's metadata")
def image(request: Request, name: str, image_id: int) -> Response:
    s = registry_of(request).get(name)
    hit = _hit(s, image_id)
    out = hit_payload(hit)
    out.pop("score", None)
    out = with_links(request, s, out)
    out["record_images"] = [h.id for h in s.engine.records_of(hit)]
    return answer(out)


@router.get(
    _IMAGE + "/similar",
    tags=["images"],
    response_model=SearchResponse,
    responses=errors_doc(400, 404, 429),
    summary="Images most like this one (itself left out)",
)
def similar(
    request: Request,
    name: str,
    image_id: int,
    *,
    k: int = 10,
    offset: int = 0,
    where: Annotated[list[str], Query()] = [],  # noqa: B006
    taxon: Annotated[list[str], Query()] = [],  # noqa: B006
    group: Literal["record", "similar", "both"] | None = None,
    group_similarity: float = 0.95,
    min_score: float | None = None,
) -> Response:
    from indexer.search.query import Term

    s = registry_of(request).get(name)
    _hit(s, image_id)
    req = parse_request(
        {
            "k": k,
            "offset": offset,
            "where": where,
            "taxon": taxon,
            "group": group,
            "group_similarity": group_similarity,
            "min_score": min_score,
        }
    )
    payload = run_search(s.engine, req, request.app.state.config.limits, leading=(Term.id(image_id),))
    return search_answer(request, s, payload)


@router.get(
    _IMAGE + "/thumbnail",
    tags=["images"],
    responses={200: {"content": {"image/jpeg": {}}}, 304: {"description": "Not modified"}, **errors_doc(400, 404)},
    response_class=Response,
    summary="A JPEG of at most `size` pixels on its longer side",
)
async def thumbnail(
    request: Request, name: str, image_id: int, size: Annotated[int, Query(ge=16, le=4096)] = 256
) -> Response:
    s = registry_of(request).get(name)
    limit = request.app.state.config.limits.max_thumbnail
    if size > limit:
        raise ApiError(400, "limit_exceeded", f"thumbnails are at most {limit} pixels on this server")
    hit = await run_in_threadpool(_hit, s, image_id)
    etag = f'"t{size}-{s.library.thumb_key(hit, size)[:32]}"'
    headers = _cache_headers(request, etag)
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    data = await run_in_threadpool(s.library.thumbnail, hit, size)
    if not isinstance(data, bytes):  # None: not servable; str: only at a remote URL
        raise _not_available(s, hit, "thumbnail")
    return Response(data, media_type="image/jpeg", headers=headers)


def _file_etag(served: Served, hit: Any) -> str:
    digest = hit.metadata.get("sha256")
    return f'"{digest}"' if digest else f'"f-{served.library.thumb_key(hit, 0)[:32]}"'


def _read_file(served: Served, hit: Any) -> tuple[bytes, str] | None:
    from PIL import Image, UnidentifiedImageError

    data = served.library.read(hit)
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            mime = _MIME.get(im.format or "")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        mime = None
    if mime is None:  # only pictures leave the server, whatever else a source folder holds
        return None
    return data, mime


@router.get(
    _IMAGE + "/file",
    tags=["images"],
    responses={200: {"content": {"image/*": {}}}, 304: {"description": "Not modified"}, **errors_doc(400, 404)},
    response_class=Response,
    summary="The image file, from the collection's own sources only",
)
async def file(request: Request, name: str, image_id: int) -> Response:
    s = registry_of(request).get(name)
    hit = await run_in_threadpool(_hit, s, image_id)
    etag = _file_etag(s, hit)
    headers = _cache_headers(request, etag)
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    got = await run_in_threadpool(_read_file, s, hit)
    if got is None:
        raise _not_available(s, hit, "file")
    data, mime = got
    ext = mime.split("/")[1].replace("jpeg", "jpg")
    headers["content-disposition"] = f'inline; filename="{image_id}.{ext}"'
    return Response(data, media_type=mime, headers=headers)
