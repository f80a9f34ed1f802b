"""The REST API as an AWS Lambda function (API Gateway REST v1 or HTTP API v2 events, through
Mangum), with the models loaded once per execution environment.

Mangum runs the ASGI lifespan on *every* invocation (Kludex/mangum#342), so the lifespan is off
and the registry loads and warms every served version when the handler is made, at import time
(``eodeploy.serve.lambda_handler``), during Lambda's init phase. Mangum keeps one event loop for
the environment's life: the dynamic batcher's tasks, started on it here, resume on each
invocation. Inference only — no gRPC (API Gateway speaks HTTP), no repository polling (an image
is immutable), no monitoring API or dashboard — and bodies are capped at Lambda's 6 MB
synchronous payload, so anything larger is a clear 413 from the app, not a runtime error.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from eodeploy._lazy import lazy_import
from eodeploy.errors import ModelNotFoundError
from eodeploy.settings import Settings

log = logging.getLogger("eodeploy.serve.lambda")

#: Lambda's limit on a synchronous request payload.
LAMBDA_PAYLOAD_MIB = 6.0


def lambda_settings(settings: Settings | None = None) -> Settings:
    cfg = settings or Settings()
    return cfg.model_copy(
        update={
            "grpc_port": 0,
            "poll_interval_s": 0.0,
            "max_body_mib": min(cfg.max_body_mib, LAMBDA_PAYLOAD_MIB),
        }
    )


def make_handler(settings: Settings | None = None) -> Any:
    """A Mangum handler over the inference app, its models already loaded and warmed."""
    mangum = lazy_import("mangum", "lambda")
    from eodeploy.serve.app import create_inference_app
    from eodeploy.serve.middleware import configure_logging

    cfg = lambda_settings(settings)
    configure_logging(cfg.log_json)
    if not cfg.model_repo.is_dir():
        raise ModelNotFoundError(
            f"model repository {cfg.model_repo} does not exist: set EODEPLOY_MODEL_REPO to the folder "
            "of models inside the function (the image puts the bundled ones in /var/task/models)"
        )
    app = create_inference_app(cfg, grpc=False)
    handler = mangum.Mangum(app, lifespan="off")
    loop = asyncio.get_event_loop()  # the loop Mangum made current and runs every invocation on
    loop.run_until_complete(app.state.registry.start(wait=True))
    if not app.state.registry.ready:
        log.error("not every model loaded: readiness will answer 503 (%s)", app.state.registry.state)
    handler.app_state = app.state  # for tests and diagnostics
    return handler
