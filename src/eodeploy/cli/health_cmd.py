"""``eodeploy health``: is the local server ready? The container HEALTHCHECK, without curl in the
image, on the port the server was really configured with (EODEPLOY_PORT), not a hard-coded 8000."""

from __future__ import annotations

import ipaddress
import urllib.error
import urllib.request
from typing import Annotated

import typer

from eodeploy.cli._common import err_console, settings


def health(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 3.0,
    live: Annotated[bool, typer.Option("--live", help="Only ask whether the process answers.")] = False,
) -> None:
    """Exit 0 when the server on EODEPLOY_HOST:EODEPLOY_PORT answers ready (200), 1 otherwise."""
    cfg = settings()
    host = cfg.host
    try:
        if ipaddress.ip_address(host.strip("[]")).is_unspecified:  # bound to every address
            host = "127.0.0.1" if ":" not in host else "[::1]"
    except ValueError:
        pass
    path = "/v2/health/live" if live else "/v2/health/ready"
    url = f"http://{host}:{cfg.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a local http URL
            code, state = r.status, r.headers.get("X-Server-State", "ready")
    except urllib.error.HTTPError as exc:
        code, state = exc.code, exc.headers.get("X-Server-State", "unknown")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        err_console.print(f"not healthy: nothing answers at {url} ({reason})")
        raise typer.Exit(1) from None
    if code != 200:
        err_console.print(f"not healthy: {url} answered {code} (state: {state})")
        raise typer.Exit(1)
    err_console.print(f"healthy: {url} answered 200")
