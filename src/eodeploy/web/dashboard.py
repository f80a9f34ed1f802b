"""The dashboard at ``/dashboard``: areas on a map with their class-map tiles, the target class over
time, alerts, the model repository with live serving figures, and in-browser inference.

Pages are rendered on the server (Jinja2) with small scripts over vendored libraries (Leaflet,
uPlot, htmx, onnxruntime-web; ``web.assets``), so the server alone is the whole site: it works
offline in a field office. When API keys are set, every page, tile and data call needs one: the
login page turns a key into an HttpOnly, SameSite=Strict cookie holding an HMAC of the key (never
the key). Changes (acknowledging an alert) also need the ``HX-Request`` header, which a page of
another origin cannot send without the server's consent (no CSRF).

Everything a page shows goes through ``monitor.public`` like the ``/monitor`` API: webhook URLs,
e-mail addresses and server paths are masked."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from eodeploy.errors import EodeployError, InvalidInputError, NotFoundError
from eodeploy.monitor.public import public
from eodeploy.serve.auth import key_is_valid
from eodeploy.web.live import LiveStats

HERE = Path(__file__).parent
COOKIE = "eodeploy_dashboard"
templates = Jinja2Templates(directory=HERE / "templates")

PAGES = (
    ("areas", "Areas"),
    ("series", "Series"),
    ("alerts", "Alerts"),
    ("models", "Models"),
    ("try", "Try it"),
)


# --- Access ------------------------------------------------------------------------------------


def _token(key: str) -> str:
    return hmac.new(key.encode(), b"eodeploy-dashboard-v1", hashlib.sha256).hexdigest()


def _authorised(request: Request) -> bool:
    settings = request.app.state.settings
    if not settings.api_keys:
        return True
    presented = request.headers.get("x-api-key")
    if presented:
        return key_is_valid(settings, presented)
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and any(
        hmac.compare_digest(cookie, _token(k.get_secret_value())) for k in settings.api_keys
    )


class _LoginRequired(Exception):
    pass


def _viewer(request: Request) -> None:
    """Pages send the browser to the login page; data, tiles and models answer 401."""
    if _authorised(request):
        return
    if request.method == "GET" and "text/html" in request.headers.get("accept", ""):
        raise _LoginRequired
    raise HTTPException(401, "this dashboard needs an API key: log in at /dashboard/login")


def _same_page(request: Request) -> None:
    """Changes come from the dashboard's own scripts (htmx sends HX-Request)."""
    if request.headers.get("hx-request") != "true":
        raise HTTPException(403, "changes are made from the dashboard's pages (HX-Request header missing)")


public_router = APIRouter(prefix="/dashboard", include_in_schema=False)
router = APIRouter(prefix="/dashboard", include_in_schema=False, dependencies=[Depends(_viewer)])


def mount(app: FastAPI) -> None:
    import logging

    from eodeploy.web.assets import register_mimetypes, warn_missing_assets

    register_mimetypes()
    warn_missing_assets(logging.getLogger("eodeploy.web"))
    app.state.live_stats = LiveStats(app.state.metrics.exposition)
    app.mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="dashboard-static")
    app.include_router(public_router)
    app.include_router(router)

    async def login_required(request: Request, exc: Exception) -> Response:
        return RedirectResponse(f"/dashboard/login?next={quote(request.url.path)}", status_code=303)

    app.add_exception_handler(_LoginRequired, login_required)


def _page(request: Request, template: str, active: str, **context: Any) -> HTMLResponse:
    settings = request.app.state.settings
    return templates.TemplateResponse(
        request,
        template,
        {
            "pages": PAGES,
            "active": active,
            "keys_set": bool(settings.api_keys),
            "monitoring": settings.monitor_api,
            **context,
        },
    )


@public_router.get("/login")
async def login_page(request: Request, next: str = "/dashboard", error: str | None = None) -> Response:
    return _page(request, "login.html", "", next=_local(next), error=error)


@public_router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    key, target = str(form.get("key", "")), _local(str(form.get("next", "/dashboard")))
    settings = request.app.state.settings
    if settings.api_keys and not key_is_valid(settings, key):
        return _page(request, "login.html", "", next=target, error="That key is not valid.")
    response = RedirectResponse(target, status_code=303)
    if settings.api_keys:
        response.set_cookie(COOKIE, _token(key), httponly=True, samesite="strict", path="/dashboard")
    return response


@public_router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/dashboard")
    return response


def _local(target: str) -> str:
    """Only dashboard paths after logging in (no open redirect)."""
    return (
        target
        if target.startswith("/dashboard") and "//" not in target and "\\" not in target
        else "/dashboard"
    )


# --- Monitoring data ---------------------------------------------------------------------------


def _db(request: Request) -> Any:
    if not request.app.state.settings.monitor_api:
        raise NotFoundError("monitoring is off on this server (EODEPLOY_MONITOR_API=false)")
    from eodeploy.web.monitor_api import app_database

    return app_database(request.app.state)


def _repo(request: Request) -> Any:
    from eodeploy.package.repository import ModelRepository

    return ModelRepository(request.app.state.settings.model_repo)


def _classes(request: Request, model: str, version: int) -> list[dict[str, Any]]:
    """Class names and colours of one model version (empty when it is no longer in the repository)."""
    try:
        spec = _repo(request).get(model, version).spec
    except EodeployError:
        return []
    return [{"value": c.value, "name": c.name, "color": c.color} for c in spec.classes]


def areas_overview(request: Request) -> dict[str, Any]:
    """Every area with its outline and observations (ids, dates, status, tiles), for the map."""
    from sqlalchemy import select

    from eodeploy.monitor.areas import iso
    from eodeploy.monitor.db import Area, Observation

    features, legends = [], {}
    with _db(request).session() as s:
        for area in s.scalars(select(Area).order_by(Area.name)):
            rows = s.scalars(
                select(Observation)
                .where(Observation.area_id == area.id)
                .order_by(Observation.scene_datetime, Observation.model_version)
            ).all()
            obs = []
            for o in rows:
                key = f"{o.model_name} v{o.model_version}"
                if key not in legends:
                    legends[key] = _classes(request, o.model_name, o.model_version)
                tif = _observation_file(request, o, "classes")
                obs.append({
                    "id": o.id, "datetime": iso(o.scene_datetime), "scene": o.scene_id, "status": o.status,
                    "model": key, "target_ha": o.target_ha, "estimate_ha": o.estimate_ha,
                    "observed_share": o.observed_share, "alert": o.alert is not None,
                    "tiles": tif is not None,
                    "truecolor": _observation_file(request, o, "truecolor") is not None,
                })  # fmt: skip
            features.append({
                "type": "Feature", "geometry": area.geojson,
                "properties": {"name": area.name, "target_class": area.target_class, "model": area.model,
                               "area_ha": area.area_ha, "active": area.active, "observations": obs},
            })  # fmt: skip
    return {"type": "FeatureCollection", "features": features, "legends": legends}


_TILE_FILES = {"classes": "classes.tif", "truecolor": "truecolor.tif"}


def _observation_file(request: Request, obs: Any, kind: str) -> Path | None:
    """An observation's map file, only inside this server's monitoring folder."""
    if not obs.outputs:
        return None
    root = Path(request.app.state.settings.monitor_dir).resolve()
    path = (Path(obs.outputs) / _TILE_FILES[kind]).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path


def _series(request: Request, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    from eodeploy.monitor.areas import get_area
    from eodeploy.monitor.report import time_series

    with _db(request).session() as s:
        return time_series(s, name), get_area(s, name).geojson


# --- Pages -------------------------------------------------------------------------------------


@router.api_route("", methods=["GET", "HEAD"])
async def home() -> Response:
    return RedirectResponse("/dashboard/areas", status_code=303)


@router.api_route("/areas", methods=["GET", "HEAD"])
def areas_page(request: Request) -> Response:
    data = _monitoring_or_none(request, areas_overview)
    return _page(request, "areas.html", "areas", data=data)


@router.api_route("/series", methods=["GET", "HEAD"])
def series_page(request: Request, area: str | None = None) -> Response:
    names = _monitoring_or_none(request, _area_names) or []
    chosen = area if area in names else (names[0] if names else None)
    return _page(request, "series.html", "series", names=names, chosen=chosen)


@router.api_route("/alerts", methods=["GET", "HEAD"])
def alerts_page(request: Request, area: str | None = None, state: str = "open") -> Response:
    names = _monitoring_or_none(request, _area_names) or []
    rows = _monitoring_or_none(request, lambda r: _alert_rows(r, area, state))
    return _page(request, "alerts.html", "alerts", names=names, area=area, state=state, rows=rows)


@router.get("/alerts/rows")
def alert_rows(request: Request, area: str | None = None, state: str = "open") -> Response:
    rows = _alert_rows(request, area or None, state)
    return templates.TemplateResponse(request, "_alert_rows.html", {"rows": rows})


@router.post("/alerts/{alert_id}/ack", dependencies=[Depends(_same_page)])
def ack_alert(request: Request, alert_id: int) -> Response:
    from eodeploy.monitor.alerts import acknowledge, alert_dict

    if not 1 <= alert_id <= 2**31 - 1:
        raise NotFoundError(f"no alert with id {alert_id}")
    with _db(request).session() as s:
        row = public(alert_dict(acknowledge(s, alert_id, "dashboard")))
    return templates.TemplateResponse(request, "_alert_rows.html", {"rows": [row]})


@router.api_route("/models", methods=["GET", "HEAD"])
def models_page(request: Request) -> Response:
    return _page(request, "models.html", "models", models=_models(request), stats=_stats(request))


@router.get("/models/stats")
def models_stats(request: Request) -> Response:
    return templates.TemplateResponse(request, "_stats.html", {"stats": _stats(request)})


@router.api_route("/try", methods=["GET", "HEAD"])
def try_page(request: Request) -> Response:
    served = [
        {"name": m["name"], "versions": [v["version"] for v in m["versions"] if v["served"]]}
        for m in _models(request)
    ]
    served = [m for m in served if m["versions"]]
    return _page(request, "try.html", "try", served=served)


def _monitoring_or_none(request: Request, fn: Any) -> Any:
    return fn(request) if request.app.state.settings.monitor_api else None


def _area_names(request: Request) -> list[str]:
    from sqlalchemy import select

    from eodeploy.monitor.db import Area

    with _db(request).session() as s:
        return list(s.scalars(select(Area.name).order_by(Area.name)))


def _alert_rows(request: Request, area: str | None, state: str) -> list[dict[str, Any]]:
    from eodeploy.monitor.report import list_alerts

    acknowledged = {"open": False, "acknowledged": True}.get(state)
    with _db(request).session() as s:
        return public(list_alerts(s, area, acknowledged, 500))  # type: ignore[no-any-return]


def _models(request: Request) -> list[dict[str, Any]]:
    """The repository as the Models page shows it: versions with labels, canary share, metrics,
    confusion matrix and MLM input, and whether this server serves each."""
    registry = request.app.state.registry
    out = []
    repo = _repo(request)
    for name in repo.names():
        config = registry.config(name).to_dict() if name in registry.names() else {}
        served = set(registry.served_versions(name)) if name in registry.names() else set()
        labels = config.get("labels", {})
        versions = []
        for v in repo.versions(name):
            try:
                pkg = repo.get(name, v)
                props = pkg.properties
            except EodeployError as exc:
                versions.append({"version": v, "error": str(exc), "served": False, "labels": []})
                continue
            metrics = props.get("eodeploy:metrics") or {}
            inp = (props.get("mlm:input") or [{}])[0]
            versions.append({
                "version": v, "served": v in served,
                "labels": sorted(k for k, lv in labels.items() if lv == v),
                "architecture": props.get("mlm:architecture"), "units": props.get("eodeploy:input_units"),
                "bands": pkg.spec.bands, "input": inp.get("description") or "",
                "shape": (inp.get("input") or {}).get("shape"),
                "accuracy": metrics.get("accuracy"), "n": metrics.get("n"), "split": metrics.get("split"),
                "confusion": metrics.get("confusion_matrix"), "classes": pkg.spec.class_names,
                "derived_from": props.get("eodeploy:derived_from"),
                "sha256": (pkg.recorded_sha256 or "")[:12],
            })  # fmt: skip
        out.append({"name": name, "versions": versions, "canary": config.get("canary"),
                    "policy": config.get("version_policy")})  # fmt: skip
    return public(out)  # type: ignore[no-any-return]


def _stats(request: Request) -> list[dict[str, Any]]:
    return request.app.state.live_stats.snapshot()  # type: ignore[no-any-return]


# --- Data: series exports, tiles, models for the browser, Try it -------------------------------


@router.get("/api/areas")
def api_areas(request: Request) -> Response:
    return JSONResponse(public(areas_overview(request)))


@router.get("/api/series/{name}.json")
def api_series(request: Request, name: str) -> Response:
    from eodeploy.monitor.report import series_rows

    data, _ = _series(request, name)
    return JSONResponse(
        public(
            {
                "area": data["area"],
                "target_class": data["target_class"],
                "area_ha": data["area_ha"],
                "thresholds": data["thresholds"],
                "rows": series_rows(data),
            }
        )  # fmt: skip
    )


@router.get("/api/series/{name}.csv")
def api_series_csv(request: Request, name: str) -> Response:
    from eodeploy.monitor.report import series_csv

    data, _ = _series(request, name)
    return PlainTextResponse(
        series_csv(data),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{_filename(name)}-series.csv"'},
    )


@router.get("/api/series/{name}.geojson")
def api_series_geojson(request: Request, name: str) -> Response:
    from eodeploy.monitor.report import series_geojson

    data, geometry = _series(request, name)
    return JSONResponse(
        public(series_geojson(data, geometry)),
        media_type="application/geo+json",
        headers={"Content-Disposition": f'attachment; filename="{_filename(name)}-series.geojson"'},
    )


def _filename(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:80] or "area"


@router.get("/tiles/{observation}/{kind}/{z}/{x}/{y}.png")
async def tile(request: Request, observation: int, kind: str, z: int, x: int, y: int) -> Response:
    """A map tile of one observation, addressed by its id: never by a path or URL."""
    from eodeploy.web import tiles

    if kind not in _TILE_FILES:
        raise InvalidInputError(f"tile kind must be one of {', '.join(_TILE_FILES)}; got {kind!r}")
    if not 1 <= observation <= 2**31 - 1:
        raise NotFoundError(f"no observation with id {observation}")

    def find() -> Path:
        from eodeploy.monitor.db import Observation

        with _db(request).session() as s:
            obs = s.get(Observation, observation)
            if obs is None:
                raise NotFoundError(f"no observation with id {observation}")
            path = _observation_file(request, obs, kind)
        if path is None:
            raise NotFoundError(f"observation {observation} has no {kind} map on this server")
        return path

    path = await run_in_threadpool(find)
    etag = await run_in_threadpool(tiles.tile_etag, path, kind, z, x, y)
    headers = {"ETag": etag, "Cache-Control": "private, max-age=3600"}
    if request.headers.get("if-none-match") == etag:  # the browser has it: nothing is rendered
        return Response(status_code=304, headers=headers)
    rendered = await run_in_threadpool(tiles.render_tile, path, kind, z, x, y)
    if rendered is None:
        return Response(status_code=204)
    return Response(rendered.png, media_type="image/png", headers=headers)


@router.get("/models/{name}/{version}/model.onnx")
async def browser_model(request: Request, name: str, version: int) -> Response:
    """The package's network with its own preprocessing and softmax in one ONNX graph (raw band
    values in the package's units in, probabilities out): what the browser runs."""
    from eodeploy.package.fused import fused_model_bytes

    pkg = request.app.state.registry.resolve(name, str(version), None, None).package
    body = await run_in_threadpool(fused_model_bytes, pkg, request.app.state.settings.fused_dir)
    return Response(
        body, media_type="application/octet-stream", headers={"Cache-Control": "private, max-age=86400"}
    )


@router.post("/api/try")
async def try_it(
    request: Request,
    model: str = Query(..., max_length=200),
    version: int = Query(..., ge=1),
    units: str = Query("auto", max_length=20),
) -> Response:
    """Decode one uploaded file for the browser (its bands in the model's order and units, as
    float32) and classify it here, with the server's full-precision probabilities."""
    from eodeploy.data.images import ImageLimits, decode_image
    from eodeploy.package.spec import UNITS
    from eodeploy.runtime.preprocess import to_model_units

    if units != "auto" and units not in UNITS:
        raise InvalidInputError(f"units must be one of auto, {', '.join(sorted(UNITS))}; got {units!r}")
    form = await request.form(max_files=1)
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise InvalidInputError('no file uploaded; send it in the form field "image"')
        data, filename = await upload.read(), upload.filename or "upload"
    finally:
        await form.close()
    served = request.app.state.registry.resolve(model, str(version), None, None)
    spec = served.spec

    def decode() -> tuple[np.ndarray, list[str] | None, np.ndarray]:
        arr, names = decode_image(data, filename, ImageLimits(shape=(spec.height, spec.width)))
        bands = list(names) if names else None
        raw = np.ascontiguousarray(to_model_units(arr[None], spec, bands, units), dtype=np.float32)
        return arr, bands, raw

    arr, bands, raw = await run_in_threadpool(decode)
    result = await request.app.state.inference.infer(
        model, arr[None], protocol="dashboard", version=str(version), band_names=bands, units=units
    )
    p = result.probabilities[0]
    return JSONResponse({
        "model": result.model.name, "version": result.model.version, "filename": filename,
        "classes": spec.class_names, "shape": list(raw.shape), "units": spec.units,
        "input": base64.b64encode(raw.tobytes()).decode(), "server": [float(v) for v in p],
    })  # fmt: skip
