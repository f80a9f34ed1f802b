"""``create_inference_app(settings)``: wires the registry, batchers, cache and protocols into one
ASGI app. Inference only: ``eodeploy.web.app`` composes it with the monitoring API and the
dashboard."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from eodeploy import __version__
from eodeploy.errors import EodeployError
from eodeploy.mlops.sketch import ServingDrift
from eodeploy.serve import errors, oip_rest, tfserving, upload
from eodeploy.serve.cache import LRUCache, RedisCache, ResponseCache
from eodeploy.serve.inference import InferenceService
from eodeploy.serve.metrics import ServerMetrics
from eodeploy.serve.middleware import RequestContextMiddleware
from eodeploy.serve.registry import ModelRegistry
from eodeploy.settings import Settings

log = logging.getLogger("eodeploy.serve")


def make_cache(settings: Settings) -> ResponseCache | None:
    if settings.redis_url:
        return RedisCache(settings.redis_url, settings.cache_ttl_s, prefix=settings.redis_prefix)
    if settings.cache_mib > 0:
        return LRUCache(int(settings.cache_mib * 2**20))
    return None


def create_inference_app(settings: Settings | None = None, grpc: bool = True) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        # One of several workers on a shared port (serve.workers) waits for its models before
        # uvicorn listens, so the kernel never hands it a connection it would answer "not ready".
        workers = settings.workers > 1
        await state.registry.start(wait=workers)
        grpc_server: Any = None
        if grpc and settings.grpc_port:
            from eodeploy.serve.oip_grpc import start_grpc_server

            grpc_server = await start_grpc_server(
                state, settings.host, settings.grpc_port, int(settings.max_body_mib * 2**20), workers
            )
        state.grpc_server = grpc_server
        try:
            yield
        finally:
            if grpc_server is not None:  # already stopping when the drain began (serve.lifecycle)
                await (getattr(state, "grpc_stop", None) or grpc_server.stop(grace=settings.drain_timeout_s))
            await state.registry.stop()
            if state.inference.cache is not None:
                await state.inference.cache.close()

    app = FastAPI(
        title="eodeploy inference server",
        version=__version__,
        description=(
            "Serves the model repository over TensorFlow Serving REST, the Open Inference Protocol v2 "
            "(REST; gRPC on its own port) and a simple upload endpoint. Inputs are raw band values; "
            "each model package's own preprocessing is applied on the server."
        ),
        lifespan=lifespan,
        # /docs is served below from Swagger UI files installed with the server, not from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    _local_docs(app)
    metrics = ServerMetrics()
    cache = make_cache(settings)
    registry = ModelRegistry(settings, metrics, cache)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.inference = InferenceService(registry, metrics, cache, settings.max_request_patches)
    app.state.inference.drift = ServingDrift.from_settings(settings, metrics.registry)

    app.add_exception_handler(EodeployError, errors.domain_error_handler)
    app.add_exception_handler(HTTPException, errors.http_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_error_handler)
    # Unexpected exceptions become the generic 500 in RequestContextMiddleware, with the request id.
    app.add_middleware(RequestContextMiddleware, max_body_bytes=int(settings.max_body_mib * 2**20))

    app.include_router(upload.router)
    app.include_router(tfserving.router)
    app.include_router(oip_rest.router)

    @app.get(
        "/metrics",
        tags=["Operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"description": "Prometheus text format", "content": {"text/plain": {}}}},
    )
    async def prometheus_metrics(request: Request) -> Response:
        # In the thread pool: the monitoring collector reads the database.
        body = await run_in_threadpool(generate_latest, request.app.state.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return app


def _local_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the ``swagger-ui-bundle-v2`` package's files: a field office without
    internet (or a locked-down cluster) still gets a working page."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from starlette.responses import HTMLResponse
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_path), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/swagger-ui/favicon-32x32.png",
        )
