"""AWS Lambda entry point: the REST inference app behind Mangum, its models loaded once per container.

Lambda runs ``CMD ["eodeploy.serve.aws_lambda.handler"]``: looking ``handler`` up builds the app and
loads and warms every served model, during the function's init phase (see ``__getattr__``). The ASGI lifespan is off
because Mangum runs it on every invocation (Kludex/mangum#342), which would reload the models per
request.

What a stateless function keeps of the server, and why (``lambda_settings``):

- no gRPC port and no repository poller: nothing listens, and an image never changes under a
  running container; a new model is a new image (function version);
- no in-process response cache, no serving-drift sampling and no canary mirroring unless set
  explicitly (``EODEPLOY_CACHE_MIB``, ``EODEPLOY_REDIS_URL``, ``EODEPLOY_DRIFT_SAMPLE_EVERY``,
  ``EODEPLOY_CANARY_MIRROR_SHARE``): traffic is spread over many short-lived containers, so a
  per-container cache rarely hits and costs billed memory, drift windows are never scraped or
  stored, and a mirrored run would only progress inside a later invocation;
- model load/unload through the repository API answers 501: it would change one container of many;
- no monitoring API or dashboard (the inference app alone) and so no database writes.

One inference path: the same app, registry and dynamic batcher as ``eodeploy serve``. Lambda hands
a container one request at a time, so the batcher never batches here; it stays for the single path.
Its worker task lives on one event loop, made here and pinned as the current loop before each
invocation (Mangum runs each request with ``get_event_loop().run_until_complete``), so a warm
invocation never meets a batcher bound to another loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import Response

from eodeploy._lazy import lazy_import
from eodeploy.errors import ModelNotReadyError
from eodeploy.serve.app import create_inference_app
from eodeploy.serve.middleware import configure_logging
from eodeploy.settings import Settings

log = logging.getLogger("eodeploy.serve.lambda")

#: AWS Lambda's limit on a synchronous invocation's request and response payloads ("6 MB"; the
#: runtime's own error names 6291556 bytes). API Gateway answers 502 for a larger response.
PAYLOAD_LIMIT_BYTES = 6 * 2**20

#: Fields a stateless function turns off unless they were set explicitly (see the module docstring).
_OFF_UNLESS_SET: dict[str, Any] = {"cache_mib": 0.0, "drift_sample_every": 0, "canary_mirror_share": 0.0}

_REPOSITORY_CHANGES = ("/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload")


def lambda_settings(settings: Settings | None = None) -> Settings:
    """The server's settings for a function: no gRPC, no poller, stateless defaults."""
    settings = settings or Settings()
    explicit = settings.model_fields_set
    if settings.poll_interval_s > 0 and "poll_interval_s" in explicit:
        log.warning(
            "EODEPLOY_POLL_INTERVAL_S is ignored on AWS Lambda: a container's models never change; "
            "publish a new image to serve new ones"
        )
    update: dict[str, Any] = {"grpc_port": 0, "poll_interval_s": 0.0}
    update.update({k: v for k, v in _OFF_UNLESS_SET.items() if k not in explicit})
    return settings.model_copy(update=update)


def create_lambda_app(settings: Settings) -> FastAPI:
    """The inference app without gRPC, with repository changes refused (one container of many)."""
    app = create_inference_app(settings, grpc=False)

    async def refuse(name: str) -> Response:
        raise HTTPException(
            501,
            f"loading or unloading models (here {name!r}) is not available on AWS Lambda: each "
            "container loads the image's models once and serves them; publish a new image (a new "
            "function version) to change them",
        )

    before = len(app.router.routes)
    for path in _REPOSITORY_CHANGES:
        app.add_api_route(path, refuse, methods=["POST"], tags=["Repository"], summary="Not on AWS Lambda")
    # First match wins: ahead of the server's own routes (an included router is one entry here).
    routes = app.router.routes
    routes[:] = routes[before:] + routes[:before]
    return app


class LambdaHandler:
    """``handler(event, context)`` for API Gateway REST (v1) and HTTP API (v1/v2 payload) events.

    Bodies over Lambda's payload limit get a 413 in the server's error shape here rather than a
    failed invocation (which API Gateway turns into a bare 502)."""

    def __init__(self, adapter: Any, app: FastAPI, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self.adapter, self.app, self.loop, self.limit = adapter, app, loop, limit

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        # The loop the batchers' worker tasks live on; code run since (asyncio.run()) may have
        # replaced or cleared the current loop, and Mangum runs the request on the current one.
        asyncio.set_event_loop(self.loop)
        event = _with_request_id(event)
        body = event.get("body") or ""
        size = len(body.encode() if isinstance(body, str) else body)
        if size > self.limit:
            return self._too_large(
                event, context,
                f"request body of {size} bytes (as it arrives in the Lambda event"
                f"{', base64-encoded' if event.get('isBase64Encoded') else ''}) exceeds AWS Lambda's "
                f"limit of {self.limit} bytes for a synchronous invocation; send fewer patches per "
                "request, or send larger requests to the container server (eodeploy serve)",
            )  # fmt: skip
        response: dict[str, Any] = self.adapter(event, context)
        out = len(response.get("body") or "")
        if out > self.limit - 64 * 1024 and (out := len(json.dumps(response))) > self.limit:
            return self._too_large(
                event, context,
                f"the response ({out} bytes) would exceed AWS Lambda's limit of {self.limit} bytes for "
                "a synchronous invocation; send fewer patches per request",
            )  # fmt: skip
        return response

    def warm_up(self) -> None:
        """One readiness request through Mangum and the app during init: the first real request
        would otherwise pay for FastAPI's lazily built routing (about 0.25 s here)."""
        path = "/v2/health/ready"
        event = {
            "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
            "headers": {"x-request-id": "lambda-init-warm-up"},
            "requestContext": {"http": {"method": "GET", "path": path, "sourceIp": "127.0.0.1"}},
            "isBase64Encoded": False,
        }  # fmt: skip
        status = self.adapter(event, None)["statusCode"]
        if status != 200:
            raise ModelNotReadyError(f"the app answered {status} to its own readiness check at init")

    def close(self) -> None:
        """Unload the models and close the loop: for tests and benchmarks (Lambda just freezes and
        later discards a container)."""
        self.loop.run_until_complete(self.app.state.registry.stop())
        self.loop.close()
        asyncio.set_event_loop(None)

    def _too_large(self, event: dict[str, Any], context: Any, message: str) -> dict[str, Any]:
        """A 413 in the event's own response format (v1 or v2), built by Mangum like any other."""
        rid = _header(event, "x-request-id") or "-"
        log.warning("413 on AWS Lambda (request %s): %s", rid, message)
        body = json.dumps({"error": message}).encode()
        headers = [[b"content-type", b"application/json"], [b"x-request-id", rid.encode("latin-1")]]
        handler = self.adapter.infer(event, context)
        result: dict[str, Any] = handler({"status": 413, "headers": headers, "body": body})
        return result


def make_handler(
    settings: Settings | None = None,
    *,
    api_gateway_base_path: str = "/",
    payload_limit_bytes: int = PAYLOAD_LIMIT_BYTES,
) -> LambdaHandler:
    """Build the app and load and warm every served model now, synchronously.

    ``api_gateway_base_path``: a custom domain's base-path mapping (or an HTTP API stage other than
    ``$default``) that prefixes every path. Raises when a wanted model fails to load, so the
    function's init fails with the reason in its log instead of answering 503 forever."""
    mangum = lazy_import("mangum", "lambda")
    settings = lambda_settings(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # before Mangum, which keeps the current loop for its requests
    app = create_lambda_app(settings)
    adapter = mangum.Mangum(app, lifespan="off", api_gateway_base_path=api_gateway_base_path)
    handler = LambdaHandler(adapter, app, loop, payload_limit_bytes)
    try:
        registry = app.state.registry
        loop.run_until_complete(registry.start(wait=True))
        if not registry.ready or not registry.names():
            problems = [
                f"{r['name']} v{r['version']}: {r['reason']}" for r in registry.index() if r["reason"]
            ]
            raise ModelNotReadyError(
                f"the model repository {settings.model_repo} has "
                + (f"models that failed to load ({'; '.join(problems)})" if problems else "no model to serve")
                + "; set EODEPLOY_MODEL_REPO to the folder the image copies the model packages to"
            )
        handler.warm_up()
    except BaseException:
        handler.close()
        raise
    return handler


def _header(event: dict[str, Any], name: str) -> str | None:
    for key in ("headers", "multiValueHeaders"):
        for k, v in (event.get(key) or {}).items():
            if k.lower() == name:
                return (v[0] if v else None) if isinstance(v, list) else v
    return None


def _with_request_id(event: dict[str, Any]) -> dict[str, Any]:
    """API Gateway's request id as ours when the client sent none: one id in both services' logs."""
    rid = (event.get("requestContext") or {}).get("requestId")
    if not rid or _header(event, "x-request-id"):
        return event
    return {**event, "headers": {**(event.get("headers") or {}), "x-request-id": rid}}


def __getattr__(name: str) -> Any:
    """``handler``, built on first access. Lambda's runtime imports this module and looks the
    handler up during the function's init phase, so the models still load once per container,
    before the first request, while importing ``make_handler`` (tests, other entry points) builds
    nothing: the one object made at import time, as the house rule allows for Lambda."""
    if name == "handler":
        settings = Settings()
        configure_logging(settings.log_json)  # to stdout/stderr, which Lambda sends to CloudWatch
        built = globals()["handler"] = make_handler(settings)
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
