"""``GET /doctor``: the readiness checklist (``eodeploy.mlops.doctor``) run by the server on itself —
its repository, database, alert channels (dry runs), load-test results and latest maps.

Admin only (it names models, areas' receivers and the database), and every text is scrubbed like
``/monitor`` responses: URLs reduced to their host, e-mail addresses and server folders masked."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from starlette.requests import Request
from starlette.responses import Response

from eodeploy.serve.auth import require_admin
from eodeploy.serve.errors import json_response

router = APIRouter(tags=["Operations"], dependencies=[Depends(require_admin)])


@router.get(
    "/doctor",
    summary="Deployment readiness checks of this server's repository and database",
    responses={200: {"description": "One entry per check: status ok/warn/fail, finding and fix"}},
)
def doctor(
    request: Request,
    dry_run: Annotated[
        bool, Query(description="Connect to each alert webhook and the SMTP server (nothing is sent).")
    ] = True,
) -> Response:
    from eodeploy.mlops.doctor import run_doctor
    from eodeploy.monitor.public import scrub

    settings: Any = request.app.state.settings
    report = run_doctor(settings, dry_run_channels=dry_run).masked(scrub)
    return json_response(report.to_dict())
