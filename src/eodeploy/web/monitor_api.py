"""REST endpoints for monitoring under ``/monitor``: areas (CRUD), runs, time series, alerts.

Every endpoint, reads included, needs an API key when keys are configured (responses show areas,
alerts and runs), and every response goes through ``public`` (webhook URLs, e-mail addresses and
server paths masked). The database is the server's ``EODEPLOY_DATABASE_URL``, connected and
migrated once at start-up (under the migration lock); handlers are sync and run in the thread pool,
so database work never blocks inference.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from eodeploy.errors import (
    ConflictError,
    DatabaseUnavailableError,
    EodeployError,
    InvalidInputError,
    NotFoundError,
)
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
from eodeploy.monitor.public import public, scrub
from eodeploy.monitor.report import list_alerts, list_runs, time_series
from eodeploy.package.repository import ModelRepository
from eodeploy.serve.auth import require_admin
from eodeploy.serve.errors import error_response, json_response, status_of

log = logging.getLogger("eodeploy.monitor")


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """Open and migrate the monitoring database at start-up, off the event loop; a database that
    is down now is connected later, on first use (the server still serves inference)."""
    from starlette.concurrency import run_in_threadpool

    try:
        db = app_database(app.state)
        await run_in_threadpool(db.ensure, 1)
    except DatabaseUnavailableError as exc:
        log.warning("monitoring database not ready at start-up: %s", exc)
    except Exception:  # noqa: BLE001 - a broken database must not keep inference from starting
        log.exception("monitoring database could not be opened at start-up")
    try:
        yield
    finally:
        if getattr(app.state, "monitor_db", None) is not None:
            app.state.monitor_db.dispose()


class _MaskedErrors(APIRoute):
    """Error bodies of ``/monitor`` masked like its responses: a domain error's message may name a
    folder, a database file or a webhook URL."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def masked(request: Request) -> Response:
            try:
                return await handler(request)
            except EodeployError as exc:
                return error_response(status_of(exc), scrub(str(exc)))

        return masked


async def _no_nul(request: Request) -> None:
    """NUL characters are refused (400) in paths, queries and bodies: PostgreSQL text cannot hold
    them, and the driver's DataError would otherwise read as the database being unusable (503).
    JSON can carry one only escaped, so the raw body is searched for the escape."""
    query = request.query_params.multi_items()
    if (
        "\x00" in request.scope["path"]
        or any("\x00" in k or "\x00" in v for k, v in query)
        or b"\\u0000" in await request.body()
    ):
        raise InvalidInputError("NUL characters (\\u0000) are not accepted in monitoring requests")


router = APIRouter(
    prefix="/monitor",
    tags=["Monitoring"],
    dependencies=[Depends(require_admin), Depends(_no_nul)],
    lifespan=_lifespan,
    route_class=_MaskedErrors,
)


def _link_name(method: str, path: str) -> str:
    """``getAreasName`` for GET /areas/{name}: link names allow letters, digits, '.', '-', '_'."""
    words = re.findall(r"[A-Za-z0-9]+", path)
    return method + "".join(w[:1].upper() + w[1:] for w in words)


def _ref(path: str, method: str) -> str:
    """An OpenAPI ``operationRef`` to one of these operations (for response ``links``)."""
    return "#/paths/" + ("/monitor" + path).replace("~", "~0").replace("/", "~1") + "/" + method


def _links(value: str, param: str, *targets: tuple[str, str]) -> dict[str, Any]:
    """Response ``links`` from a created resource to the operations on it (stateful API tests)."""
    return {
        _link_name(method, path): {
            "operationRef": _ref(path, method),
            "parameters": {param: value},
        }
        for path, method in targets
    }


_AREA_LINKS = _links(
    "$response.body#/area/name",
    "name",
    ("/areas/{name}", "get"),
    ("/areas/{name}", "patch"),
    ("/areas/{name}", "delete"),
    ("/areas/{name}/series", "get"),
)
_RUN_LINKS = _links("$response.body#/run_id", "run_id", ("/runs/{run_id}", "get"))


def _respond(content: Any, status_code: int = 200) -> Response:
    return json_response(public(content), status_code)


# Ids are INTEGER columns (32-bit on PostgreSQL, 64-bit in SQLite): a larger one is a 400 here, not
# an overflow in the driver (500 from SQLite, "integer out of range" as 503 from PostgreSQL).
_ID_MAX = 2**31 - 1
RunId = Annotated[int, Path(ge=1, le=_ID_MAX, description="a run id from GET /monitor/runs")]
AlertId = Annotated[int, Path(ge=1, le=_ID_MAX, description="an alert id from GET /monitor/alerts")]

_opening = threading.Lock()  # request threads and metrics scrapes may ask at the same moment


def app_database(state: Any) -> Database:
    """The server's monitoring database: opened at start-up (``_lifespan``), or on first use when
    it was down then; one per app, whichever thread asks first."""
    if getattr(state, "monitor_db", None) is None:
        with _opening:
            if getattr(state, "monitor_db", None) is None:
                state.monitor_db = Database.from_settings(state.settings)
    return state.monitor_db  # type: ignore[no-any-return]


def _db(request: Request) -> Database:
    return app_database(request.app.state)


def _check_webhook(request: Request, url: str | None) -> None:
    """A webhook the URL guard would refuse at delivery is refused now, with the reason (400)."""
    if url:
        from eodeploy.netguard import BlockedURLError, URLPolicy, check_url

        try:
            check_url(url, URLPolicy.from_settings(request.app.state.settings))
        except UnicodeError as exc:  # the resolver's IDNA encoding of a host no DNS name can be
            raise BlockedURLError(f"webhook_url has no valid host name ({exc})") from None


@router.get("/areas", summary="List areas of interest")
def areas(request: Request) -> Response:
    from sqlalchemy import select

    from eodeploy.monitor.db import Area

    with _db(request).session() as s:
        return _respond([area_dict(a) for a in s.scalars(select(Area).order_by(Area.name))])


@router.post(
    "/areas",
    summary="Add an area of interest",
    status_code=201,
    responses={
        201: {"description": "Added", "links": _AREA_LINKS},
        200: {"description": "Replaced (replace=true)", "links": _AREA_LINKS},
    },
)
def create_area(
    request: Request,
    spec: AreaSpec,
    replace: bool = Query(False, description="replace (deletes its history)"),
) -> Response:
    _check_webhook(request, spec.webhook_url)
    repo = ModelRepository(request.app.state.settings.model_repo)
    with _db(request).session() as s:
        area, notes, created = add_area(s, repo, spec, replace=replace)
        body: dict[str, Any] = {"area": area_dict(area), "notes": notes, "created": created}
    return _respond(body, 201 if created else 200)


@router.get("/areas/{name}", summary="One area of interest")
def read_area(request: Request, name: str) -> Response:
    with _db(request).session() as s:
        return _respond(area_dict(get_area(s, name)))


@router.patch("/areas/{name}", summary="Change thresholds, alerts, schedule, source or state")
def patch_area(request: Request, name: str, update: AreaUpdate) -> Response:
    _check_webhook(request, update.webhook_url)
    with _db(request).session() as s:
        return _respond(area_dict(update_area(s, name, update)))


@router.delete("/areas/{name}", summary="Remove an area")
def delete_area(
    request: Request, name: str, purge: bool = Query(False, description="delete its history too")
) -> Response:
    with _db(request).session() as s:
        n = remove_area(s, name, purge)
    return _respond({"removed": name, "observations_deleted": n})


@router.get("/areas/{name}/series", summary="Time series of the target class")
def series(request: Request, name: str) -> Response:
    with _db(request).session() as s:
        return _respond(time_series(s, name))


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    area: str | None = Field(default=None, description="only this area, due or not")
    all: bool = Field(default=False, description="every active area, due or not")
    date: datetime | None = Field(default=None, description="take scenes acquired up to then (UTC)")


@router.post(
    "/runs",
    summary="Start a monitoring run in the background",
    status_code=202,
    responses={202: {"description": "Started", "links": _RUN_LINKS}},
)
def start_run(request: Request, body: RunRequest | None = None) -> Response:
    """One pass, as ``eodeploy monitor run``, on a background thread of this server (it shares the
    CPU with inference: schedule heavy monitoring as its own job). One at a time per server; poll
    ``GET /monitor/runs/{id}``. Runs elsewhere (CLI, cron, replicas) are kept off the same areas
    by the areas' leases."""
    from eodeploy.monitor.areas import get_area, naive_utc
    from eodeploy.monitor.run import run_monitoring

    body = body or RunRequest()
    state, db = request.app.state, _db(request)
    if body.area:
        with db.session() as s:
            get_area(s, body.area)  # 404 now, not in the background
    lock: threading.Lock = state.monitor_lock
    if not lock.acquire(blocking=False):
        raise ConflictError("a monitoring run started here is still going; wait for it (GET /monitor/runs)")
    started = threading.Event()
    run_id: dict[str, int] = {}

    def on_event(kind: str, info: dict[str, Any]) -> None:
        if kind == "run":
            run_id["id"] = info["run_id"]
            started.set()

    def work() -> None:
        try:
            run_monitoring(db, state.settings, as_of=naive_utc(body.date) if body.date else None,
                           area=body.area, force=body.all, trigger="api", on_event=on_event)  # fmt: skip
        except Exception:  # noqa: BLE001 - recorded in the run row; the server keeps serving
            log.exception("monitoring run failed")
        finally:
            started.set()
            lock.release()

    threading.Thread(target=work, name="monitor-run", daemon=True).start()
    started.wait(60)
    if "id" not in run_id:
        raise DatabaseUnavailableError(
            "the run could not start (the database did not answer); see the server log"
        )
    return _respond({"run_id": run_id["id"], "status": "running"}, 202)


@router.get("/runs/{run_id}", summary="One monitoring run")
def read_run(request: Request, run_id: RunId) -> Response:
    from eodeploy.monitor.db import Run
    from eodeploy.monitor.report import run_dict

    with _db(request).session() as s:
        r = s.get(Run, run_id)
        if r is None:
            raise NotFoundError(f"no monitoring run with id {run_id}")
        return _respond(run_dict(r))


@router.get("/runs", summary="Latest monitoring runs")
def runs(request: Request, limit: int = Query(20, ge=1, le=1000)) -> Response:
    with _db(request).session() as s:
        return _respond(list_runs(s, limit))


@router.get("/alerts", summary="Alerts, newest first")
def alerts(
    request: Request,
    area: str | None = None,
    acknowledged: bool | None = Query(None, description="true/false; all when absent"),
    limit: int = Query(200, ge=1, le=5000),
) -> Response:
    with _db(request).session() as s:
        return _respond(list_alerts(s, area, acknowledged, limit))


@router.post("/alerts/{alert_id}/ack", summary="Acknowledge an alert")
def ack(request: Request, alert_id: AlertId, by: str | None = Query(None, max_length=200)) -> Response:
    with _db(request).session() as s:
        return _respond(alert_dict(acknowledge(s, alert_id, by)))


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: str = Field(description="true_positive or false_positive")
    by: str | None = Field(default=None, max_length=200)
    note: str | None = Field(default=None, max_length=2000)


@router.post("/alerts/{alert_id}/verdict", summary="Mark an alert a true or false positive")
def verdict(request: Request, alert_id: AlertId, body: VerdictIn) -> Response:
    from eodeploy.mlops.feedback import set_alert_verdict

    with _db(request).session() as s:
        return _respond(set_alert_verdict(s, alert_id, body.verdict, body.by, body.note))


ObservationId = Annotated[int, Path(ge=1, le=_ID_MAX, description="an observation id from an area's series")]


class _PointGeometry(BaseModel):
    type: Literal["Point"]
    coordinates: list[float] = Field(min_length=2, max_length=3, description="[longitude, latitude] (WGS84)")


class _PointLabel(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", min_length=1, max_length=100, description="the true class name")


class _LabelledPoint(BaseModel):
    type: Literal["Feature"]
    geometry: _PointGeometry
    properties: _PointLabel


class PointLabels(BaseModel):
    """Labelled points: a GeoJSON FeatureCollection of Points with ``properties.class``."""

    type: Literal["FeatureCollection"]
    features: list[_LabelledPoint] = Field(min_length=1, max_length=10_000)


@router.post(
    "/observations/{observation_id}/labels",
    summary="Correct a map by labelled points (GeoJSON)",
    status_code=201,
)
def observation_labels(
    request: Request,
    observation_id: ObservationId,
    body: PointLabels,
    by: str | None = Query(None, max_length=200),
) -> Response:
    from eodeploy.mlops.feedback import label_observation

    holdout = request.app.state.settings.feedback_holdout
    with _db(request).session() as s:
        out = label_observation(s, observation_id, body.model_dump(by_alias=True), holdout, by)
    return _respond(out, 201)


@router.get("/drift/windows", summary="Serving drift per model version and time window, newest first")
def drift_windows(
    request: Request,
    model: str | None = Query(None, max_length=200, description="only this model"),
    limit: int = Query(100, ge=1, le=5000),
) -> Response:
    """Closed serving windows: per-band shift of sampled request pixels against the package's
    reference statistics and the predicted-class shares against its reference frequencies."""
    from eodeploy.mlops.drift import list_windows

    with _db(request).session() as s:
        return _respond(list_windows(s, model, limit))
