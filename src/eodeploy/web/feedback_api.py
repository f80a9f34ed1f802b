"""``POST /feedback`` (the true label of a served prediction, by its request id) and
``GET /feedback/accuracy`` (rolling accuracy per model version with its Wilson 95 % interval).

Both need an API key once keys are configured (like every admin write and the monitoring reads).
Recent predictions are remembered in this process only: with several replicas, feedback must
reach the replica that answered (route on ``X-Request-ID`` or send it to each)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from eodeploy.errors import NotFoundError
from eodeploy.serve.auth import require_admin
from eodeploy.serve.errors import json_response
from eodeploy.web.monitor_api import _no_nul, app_database


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    from eodeploy.mlops.feedback import RecentPredictions

    if app.state.settings.feedback:
        app.state.inference.recent = RecentPredictions.from_settings(app.state.settings)
    yield


router = APIRouter(
    tags=["Feedback"], dependencies=[Depends(require_admin), Depends(_no_nul)], lifespan=_lifespan
)


class FeedbackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(
        min_length=1, max_length=128, description="X-Request-ID of the prediction's response"
    )
    label: str = Field(min_length=1, max_length=100, description="the true class name")
    index: int | None = Field(default=None, ge=0, description="which patch, when the request carried several")
    by: str | None = Field(default=None, max_length=200, description="who labelled it")


def _db(request: Request) -> Any:
    return app_database(request.app.state)


@router.post("/feedback", summary="The true label of a served prediction", status_code=201)
def post_feedback(request: Request, body: FeedbackIn) -> Response:
    from eodeploy.mlops.feedback import check_feedback, store_feedback

    settings = request.app.state.settings
    if not settings.feedback:
        raise NotFoundError("feedback is off on this server (EODEPLOY_FEEDBACK=false)")
    # Checked against what was served before the database is opened: a bad request costs nothing.
    fb = check_feedback(request.app.state.inference.recent, settings, body.request_id, body.label, body.index)
    with _db(request).session() as s:
        out = store_feedback(s, fb, settings, body.by)
    return json_response(out, 201)


@router.get("/feedback/accuracy", summary="Rolling accuracy per model version (Wilson 95 % interval)")
def get_accuracy(
    request: Request,
    model: str = Query(min_length=1, max_length=200, description="model name"),
    last: int | None = Query(None, ge=1, le=1_000_000, description="only the latest N labels per version"),
    days: float | None = Query(None, gt=0, le=36500, description="only the labels of the last N days"),
) -> Response:
    from eodeploy.mlops.feedback import accuracy_by_version

    settings = request.app.state.settings
    window: int | timedelta | None = last if last is not None else timedelta(days=days) if days else None
    with _db(request).session() as s:
        by_version = accuracy_by_version(s, model, window, min_labels=settings.feedback_min_labels)
    return json_response({
        "model": model, "min_labels": settings.feedback_min_labels,
        "versions": [{"version": v, **a.as_dict()} for v, a in by_version.items()],
    })  # fmt: skip
