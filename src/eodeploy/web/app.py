"""``create_app(settings)``: the server ``eodeploy serve`` runs, composed in one place from its
three parts — inference (``eodeploy.serve``), the monitoring API (``web.monitor_api``, over the
FastAPI-free ``eodeploy.monitor`` core) and the dashboard (``web.dashboard``)."""

from __future__ import annotations

import threading

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response

from eodeploy.serve.app import create_inference_app
from eodeploy.settings import Settings
from eodeploy.web.doctor_api import router as doctor_router
from eodeploy.web.feedback_api import router as feedback_router
from eodeploy.web.rollout_api import router as rollout_router


def create_app(settings: Settings | None = None, grpc: bool = True) -> FastAPI:
    settings = settings or Settings()
    app = create_inference_app(settings, grpc=grpc)
    app.description += (
        " Monitoring results (areas of interest, runs, time series, alerts) are under /monitor;"
        " the dashboard is at /dashboard."
    )
    if settings.monitor_api:
        from eodeploy.monitor.metrics import MonitorCollector
        from eodeploy.web.monitor_api import app_database
        from eodeploy.web.monitor_api import router as monitor_router

        app.state.monitor_lock = threading.Lock()  # one background monitoring run at a time
        app.include_router(monitor_router)
        app.state.metrics.registry.register(MonitorCollector(lambda: app_database(app.state)))
        if app.state.inference.drift is not None:  # closed serving drift windows are kept there
            app.state.inference.drift.database = lambda: app_database(app.state)
    app.include_router(rollout_router)
    app.include_router(doctor_router)
    app.include_router(feedback_router)
    if settings.dashboard:
        from eodeploy.web import dashboard

        dashboard.mount(app)

    @app.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/dashboard" if settings.dashboard else "/docs")

    return app
