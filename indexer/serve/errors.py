"""Errors of the HTTP API: JSON with a stable code and a message, never a stack trace.

Every error answer is ``{"error": {"code": CODE, "message": TEXT}}`` (plus ``retry_after`` on a 429)
with one of these statuses and codes:

=====  ===========================================================================================
400    ``bad_request`` (a parameter of the wrong type or out of range), ``bad_query`` (a query the
       engine cannot answer: empty text, terms that cancel out, ...), ``bad_filter`` (an unknown
       field, a value of the wrong type), ``limit_exceeded`` (k, depth, text, terms over the
       server's limits), ``bad_json`` (a body that is not the JSON asked for)
401    ``unauthorized`` (an API key is required, or the one given is not known)
404    ``not_found`` (no such path), ``unknown_collection``, ``unknown_image``,
       ``image_not_available`` (the image cannot be served from this server: not under its
       source's folder, unreadable, or only at a remote URL)
405    ``method_not_allowed``
413    ``body_too_large`` (the request body is over the limit), ``image_too_large`` (an uploaded
       picture over the byte or pixel limit: decompression bombs land here)
415    ``not_an_image`` (an upload that is not a picture of an accepted kind),
       ``unsupported_media_type`` (a body that is neither JSON nor multipart)
429    ``rate_limited`` (with a ``Retry-After`` header)
500    ``internal_error`` (the details are in the server's log, never in the answer)
503    ``not_ready`` (the collection or model is still loading)
=====  ===========================================================================================
"""

from __future__ import annotations

import logging
from typing import Any

from indexer.errors import CollectionError, FilterError, QueryError

__all__ = ["ApiError", "error_body", "install_handlers", "STATUS_CODES"]

log = logging.getLogger("indexer.serve")

#: The default code of each status.
STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "not_ready",
}


class ApiError(QueryError):
    """A request the API refuses: ``status`` (HTTP), ``code`` (stable, see the module docstring)
    and the message. A QueryError, so that the command line shows the message as it is."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
        msg = str(e.get("msg", "invalid"))
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "the request is not valid"


def install_handlers(app: Any) -> None:
    """Every error becomes the JSON above; unexpected ones are logged with their trace."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    def answer(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(error_body(code, message), status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return answer(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(FilterError)
    async def _filter(request: Request, exc: FilterError) -> JSONResponse:
        return answer(400, "bad_filter", str(exc))

    @app.exception_handler(QueryError)
    async def _query(request: Request, exc: QueryError) -> JSONResponse:
        return answer(400, "bad_query", str(exc))

    @app.exception_handler(CollectionError)
    async def _collection(request: Request, exc: CollectionError) -> JSONResponse:
        log.warning("collection problem answering %s: %s", request.url.path, exc)
        return answer(503, "not_ready", f"the collection cannot be read right now: {exc}")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return answer(400, "bad_request", _validation_message(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = getattr(exc, "code", None) or STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such path: {request.url.path} (see /docs)"
        return answer(exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected error answering %s %s", request.method, request.url.path, exc_info=exc)
        return answer(500, "internal_error", "something went wrong on the server; the details are in its log")
