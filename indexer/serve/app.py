"""The FastAPI application: :func:`create_app` for a :class:`ServeConfig`, and
:func:`app_from_environment`, the factory uvicorn's worker processes call.

Each worker opens its collections and starts loading their models once, in the app's lifespan
(:class:`indexer.serve.registry.Registry`); requests share them. The routes are in
:mod:`indexer.serve.routes_search` and :mod:`indexer.serve.routes_images`; the middleware in
:mod:`indexer.serve.guards`; the errors in :mod:`indexer.serve.errors`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from indexer._version import __version__
from indexer.serve.config import ServeConfig
from indexer.serve.errors import install_handlers
from indexer.serve.guards import AccessLog, Activity, ApiKeys, BodyLimit, RateLimit
from indexer.serve.registry import Registry

__all__ = ["create_app", "app_from_environment", "DESCRIPTION"]

log = logging.getLogger("indexer.serve")

DESCRIPTION = """Search biological image collections (BioCLIP embeddings, FAISS, DuckDB metadata)
by text, taxon name, picture or indexed image, with metadata filters.

Every error is JSON, `{"error": {"code": ..., "message": ...}}`, with a stable code:
400 `bad_request` / `bad_query` / `bad_filter` / `limit_exceeded` / `bad_json`,
401 `unauthorized`, 404 `not_found` / `unknown_collection` / `unknown_image` / `image_not_available`,
413 `body_too_large` / `image_too_large`, 415 `not_an_image` / `unsupported_media_type`,
429 `rate_limited` (with `Retry-After`), 500 `internal_error`, 503 `not_ready`.
When the server has API keys, send one as `X-API-Key: KEY` (or `Authorization: Bearer KEY`)."""


def create_app(config: ServeConfig) -> Any:
    """The ASGI app serving ``config``'s collections (opened when the app starts)."""
    from fastapi_offline import FastAPIOffline
    from starlette.middleware.cors import CORSMiddleware

    from indexer.serve import routes_images, routes_search

    registry = Registry(config)
    activity = Activity()

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        from starlette.concurrency import run_in_threadpool

        await run_in_threadpool(registry.open)
        log.info("bioclip-serve %s ready in process %d: %s", __version__, os.getpid(), ", ".join(registry.collections))
        try:
            yield
        finally:
            registry.close()
            for cleanup in app.state.on_shutdown:  # the runner's: socket and state files
                cleanup()

    app = FastAPIOffline(
        title="bioclip-search",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "collections", "description": "What is served."},
            {"name": "search", "description": "Search by text, taxon, picture, image id or a weighted mix."},
            {"name": "images", "description": "One image: metadata, similar images, thumbnail, file."},
            {"name": "health", "description": "Probes for load balancers and process managers."},
        ],
    )
    app.state.registry = registry
    app.state.config = config
    app.state.activity = activity
    app.state.on_shutdown = []
    install_handlers(app)
    app.include_router(routes_search.router)
    app.include_router(routes_images.router)
    _describe_request_bodies(app)

    # Middleware: the last added is the outermost.
    limits = config.limits
    if limits.rate:
        app.add_middleware(RateLimit, rate=limits.rate)
    if config.api_key_file:
        app.add_middleware(ApiKeys, key_file=config.api_key_file)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "If-None-Match"],
            expose_headers=["ETag", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(AccessLog, activity=activity, enabled=config.access_log)
    return app


def _describe_request_bodies(app: Any) -> None:
    """Put the JSON search request's schema into /openapi.json (the POST route reads its body
    itself, to take JSON or multipart, so FastAPI does not see the model)."""
    from pydantic.json_schema import models_json_schema

    from indexer.serve.models import SearchRequest

    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema([(SearchRequest, "validation")], ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi


def app_from_environment() -> Any:
    """The app of the :class:`ServeConfig` in ``BIOCLIP_SERVE_CONFIG`` (uvicorn's workers call this)."""
    from indexer.serve.guards import setup_worker_logging

    setup_worker_logging()
    return create_app(ServeConfig.from_environment())
