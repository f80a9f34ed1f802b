"""REST endpoints for monitoring under ``/monitor``: areas (CRUD), runs, time series, alerts.

Writes need an admin API key when keys are configured (as the model repository endpoints do).
The database is the server's ``EODEPLOY_DATABASE_URL``; handlers are sync and run in the thread
pool, so database work never blocks inference.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from eodeploy.monitor.alerts import acknowledge, alert_dict
from eodeploy.monitor.areas import (
    AreaSpec,
    AreaUpdate,
    add_area,
    area_dict,
    get_area,
    remove_area,
    update_area,
)
from eodeploy.monitor.db import Database
from eodeploy.monitor.report import list_alerts, list_runs, time_series
from eodeploy.package.repository import ModelRepository
from eodeploy.serve.auth import require_admin
from eodeploy.serve.errors import json_response

router = APIRouter(prefix="/monitor", tags=["Monitoring"])


def _db(request: Request) -> Database:
    state = request.app.state
    if getattr(state, "monitor_db", None) is None:
        state.monitor_db = Database.from_settings(state.settings)
    return state.monitor_db  # type: ignore[no-any-return]


@router.get("/areas", summary="List areas of interest")
def areas(request: Request) -> Response:
    from sqlalchemy import select

    from eodeploy.monitor.db import Area

    with _db(request).session() as s:
        return json_response([area_dict(a) for a in s.scalars(select(Area).order_by(Area.name))])


@router.post(
    "/areas", summary="Add an area of interest", status_code=201, dependencies=[Depends(require_admin)]
)
def create_area(
    request: Request,
    spec: AreaSpec,
    replace: bool = Query(False, description="replace (deletes its history)"),
) -> Response:
    repo = ModelRepository(request.app.state.settings.model_repo)
    with _db(request).session() as s:
        area, notes, created = add_area(s, repo, spec, replace=replace)
        body: dict[str, Any] = {"area": area_dict(area), "notes": notes, "created": created}
    return json_response(body, 201 if created else 200)


@router.get("/areas/{name}", summary="One area of interest")
def read_area(request: Request, name: str) -> Response:
    with _db(request).session() as s:
        return json_response(area_dict(get_area(s, name)))


@router.patch("/areas/{name}", summary="Change thresholds, alerts, schedule, source or state",
              dependencies=[Depends(require_admin)])  # fmt: skip
def patch_area(request: Request, name: str, update: AreaUpdate) -> Response:
    with _db(request).session() as s:
        return json_response(area_dict(update_area(s, name, update)))


@router.delete("/areas/{name}", summary="Remove an area", dependencies=[Depends(require_admin)])
def delete_area(
    request: Request, name: str, purge: bool = Query(False, description="delete its history too")
) -> Response:
    with _db(request).session() as s:
        n = remove_area(s, name, purge)
    return json_response({"removed": name, "observations_deleted": n})


@router.get("/areas/{name}/series", summary="Time series of the target class")
def series(request: Request, name: str) -> Response:
    with _db(request).session() as s:
        return json_response(time_series(s, name))


@router.get("/runs", summary="Latest monitoring runs")
def runs(request: Request, limit: int = Query(20, ge=1, le=1000)) -> Response:
    with _db(request).session() as s:
        return json_response(list_runs(s, limit))


@router.get("/alerts", summary="Alerts, newest first")
def alerts(
    request: Request,
    area: str | None = None,
    acknowledged: bool | None = Query(None, description="true/false; all when absent"),
    limit: int = Query(200, ge=1, le=5000),
) -> Response:
    with _db(request).session() as s:
        return json_response(list_alerts(s, area, acknowledged, limit))


@router.post("/alerts/{alert_id}/ack", summary="Acknowledge an alert", dependencies=[Depends(require_admin)])
def ack(request: Request, alert_id: int, by: str | None = Query(None, max_length=200)) -> Response:
    with _db(request).session() as s:
        return json_response(alert_dict(acknowledge(s, alert_id, by)))
