"""Canary rollouts over HTTP: ``POST /models/{name}/rollout`` starts the controller inside this
server (a background thread reading this server's own metrics), approves its gate or aborts it;
``GET /models/{name}/rollout`` tells where it stands; ``GET /models/{name}/history`` lists every
routing decision. Admin key required. Several replicas: run ``eodeploy models rollout --server``
beside them instead (one controller summing every replica's metrics)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, Query
from prometheus_client import generate_latest
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response

from eodeploy.errors import ConflictError, ModelNotFoundError
from eodeploy.mlops import history
from eodeploy.mlops.analysis import Thresholds, text_source
from eodeploy.mlops.rollout import Controller, RolloutOptions, ask, parse_steps
from eodeploy.package.repository import ModelRepository
from eodeploy.serve.auth import require_admin
from eodeploy.serve.errors import json_response
from eodeploy.serve.policy import VersionPolicy
from eodeploy.web.monitor_api import app_database

log = logging.getLogger("eodeploy.mlops.rollout")


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    app.state.rollouts = {}
    try:
        yield
    finally:  # each running controller rolls back (no canary left unwatched) and stops
        runs = list(app.state.rollouts.values())
        for _, _, stop in runs:
            stop.set()
        for _, thread, _ in runs:
            thread.join(10)


router = APIRouter(
    prefix="/models", tags=["Rollouts"], dependencies=[Depends(require_admin)], lifespan=_lifespan
)


class RolloutRequest(BaseModel):
    """Start a rollout (``candidate``), or act on the running one (``approve`` / ``abort``)."""

    model_config = ConfigDict(extra="forbid")
    candidate: int | None = Field(None, ge=0, le=2**31 - 1, description="version to roll out")
    steps: list[float] = Field([10, 25, 50, 100], min_length=1, max_length=100)
    window_s: float = Field(30.0, gt=0, le=86400)
    window_requests: int = Field(0, ge=0, description="close a window after this many candidate requests")
    min_requests: int = Field(20, ge=1, description="fewer in a window: inconclusive, the share holds")
    require_agreement: bool = Field(
        True, description="hold a window whose agreement with the champion could not be judged"
    )
    max_failures: int = Field(3, ge=1, le=1000)
    max_inconclusive: int = Field(
        20,
        ge=0,
        le=100000,
        description="inconclusive windows in a row before rolling back (0: hold for ever)",
    )
    gate: bool = Field(False, description="hold before 100 % until approved")
    approve: bool = False
    abort: bool = False

    @model_validator(mode="after")
    def _one_action(self) -> RolloutRequest:
        if sum((self.candidate is not None, self.approve, self.abort)) != 1:
            raise ValueError("give exactly one of candidate, approve or abort")
        return self


def _known(request: Request, name: str) -> ModelRepository:
    repo = ModelRepository(request.app.state.settings.model_repo)
    if not repo.versions(name):
        raise ModelNotFoundError(f"no model named {name!r} in the repository")
    return repo


def _running(request: Request, name: str) -> Controller | None:
    entry = request.app.state.rollouts.get(name)
    if entry is None:
        return None
    controller, thread, _ = entry
    return controller if thread.is_alive() and not controller.finished else None


@router.post(
    "/{name}/rollout", summary="Start a canary rollout, approve its gate or abort it", status_code=202
)
def start_rollout(request: Request, name: str, body: RolloutRequest) -> Response:
    repo = _known(request, name)
    state = request.app.state
    db = app_database(state)
    running = _running(request, name)
    if body.approve or body.abort:
        request_id = ask(db, name, "approve" if body.approve else "abort", "user (api)")
        return json_response(
            {"rollout_id": request_id, "recorded": "approve" if body.approve else "abort"}, 202
        )
    assert body.candidate is not None
    if running is not None:
        if running.candidate == body.candidate:
            raise ConflictError(f"v{body.candidate} of {name!r} is already being rolled out here")
        running.retarget(body.candidate)
        return json_response({**running.status(), "retargeted": body.candidate}, 202)
    options = RolloutOptions(
        body.candidate, parse_steps(body.steps), body.window_s, body.window_requests, body.max_failures,
        body.gate, Thresholds(min_requests=body.min_requests, min_labels=state.settings.feedback_min_labels,
                              require_agreement=body.require_agreement),
        max_inconclusive=body.max_inconclusive,
    )  # fmt: skip
    registry = state.metrics.exposition
    controller = Controller(
        repo.root, name, options, text_source(lambda: generate_latest(registry).decode()), db,
        VersionPolicy.parse(state.settings.version_policy), actor="controller",
    )  # fmt: skip
    controller.start()  # refusals (unknown version, one already running elsewhere) answer here
    stop = threading.Event()
    thread = threading.Thread(target=_loop, args=(controller, stop), name=f"rollout {name}", daemon=True)
    state.rollouts[name] = (controller, thread, stop)
    thread.start()
    return json_response(controller.status(), 202)


def _loop(controller: Controller, stop: threading.Event) -> None:
    try:
        controller.loop(stop)
    except Exception:  # noqa: BLE001 - recorded as a rollback by the controller; logged here
        log.exception("the rollout of %s stopped on an error", controller.model)


@router.get("/{name}/rollout", summary="Where the model's rollout stands")
def rollout_status(request: Request, name: str) -> Response:
    _known(request, name)
    entry = request.app.state.rollouts.get(name)
    if entry is not None:
        return json_response({**entry[0].status(), "controller": "this server"})
    with app_database(request.app.state).session() as s:
        rows = history.latest_rollout(s, name)
        if not rows:
            return json_response({"model": name, "state": "none"})
        return json_response(_summary(name, rows))


def _summary(name: str, rows: list[history.Decision]) -> dict[str, Any]:
    """A rollout run elsewhere (a CLI controller), as far as its recorded decisions tell."""
    last = rows[-1]
    state = {"promote": "promoted", "rollback": "rolled_back", "gate": "waiting_gate"}.get(
        last.action, "running"
    )
    if last.action == "abort" and last.actor == "controller":
        state = "aborted"
    windows = [r for r in rows if r.action == "window"]
    return {
        "model": name, "rollout_id": rows[0].id, "state": state, "champion": last.champion,
        "candidate": last.candidate, "share": last.to_share,
        "failures": sum(1 for r in rows if r.verdict == "fail"),
        "last_window": history.decision_dict(windows[-1]) if windows else None,
        "controller": "elsewhere (from the recorded decisions)",
    }  # fmt: skip


@router.get("/{name}/history", summary="Every routing decision about the model")
def model_history(
    request: Request, name: str, limit: int = Query(200, ge=1, le=10000, description="newest decisions")
) -> Response:
    with app_database(request.app.state).session() as s:
        rows = [history.decision_dict(r) for r in history.history(s, name, limit)]
    if not rows:
        _known(request, name)
    return json_response(rows)
