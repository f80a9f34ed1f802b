"""The doctor's checks of a running server, from the outside: health, metrics, logging, API docs,
the dashboard and whether admin routes need a key where the server is reachable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

# Imported here, before the checks start in threads: a first import from several threads at once
# can see a half-initialised module.
import requests
from prometheus_client.parser import text_string_to_metric_families

from eodeploy.mlops.doctor import FAIL, OK, WARN, Check
from eodeploy.settings import Settings


def server_tasks(settings: Settings, base: str, timeout_s: float) -> list[Callable[[], list[Check]]]:
    """One task per server check, so that they run side by side."""

    def get(path: str, **kw: Any) -> Any:
        return requests.get(base + path, timeout=timeout_s, allow_redirects=kw.pop("follow", False), **kw)

    def unreachable(name: str, exc: Exception) -> list[Check]:
        return [
            Check(
                "server",
                name,
                FAIL,
                f"{base} does not answer ({type(exc).__name__})",
                "start it (eodeploy serve) or check the address and firewall",
            )
        ]

    def health() -> list[Check]:
        try:
            live, ready = get("/v2/health/live"), get("/v2/health/ready")
        except Exception as exc:  # noqa: BLE001 - requests' errors name the URL; only the type is shown
            return unreachable("health", exc)
        if live.status_code == 200 and ready.status_code == 200:
            return [Check("server", "health", OK, "/v2/health/live and /v2/health/ready answer 200")]
        if live.status_code == 200:
            return [
                Check(
                    "server",
                    "health",
                    FAIL,
                    f"live, but /v2/health/ready answers {ready.status_code}",
                    "no model loaded or warmed up yet: check the server log and the model repository",
                )
            ]
        return [
            Check(
                "server",
                "health",
                FAIL,
                f"/v2/health/live answers {live.status_code}",
                "is this an eodeploy server? check --server",
            )
        ]

    def metrics() -> list[Check]:
        try:
            r = get("/metrics")
        except Exception as exc:  # noqa: BLE001
            return unreachable("metrics", exc)
        if r.status_code != 200:
            return [
                Check(
                    "server",
                    "metrics",
                    FAIL,
                    f"/metrics answers {r.status_code}",
                    "serve with eodeploy serve (it always exposes /metrics) and let Prometheus reach it",
                )
            ]
        try:
            families = {f.name for f in text_string_to_metric_families(r.text)}
        except Exception as exc:  # noqa: BLE001 - the parser raises ValueError and others
            return [
                Check(
                    "server",
                    "metrics",
                    FAIL,
                    f"/metrics is not Prometheus text ({exc})",
                    "a proxy may be answering in its place; scrape the server directly",
                )
            ]
        wanted = {"eodeploy_inference_request_duration_seconds", "eodeploy_model_ready"}
        if not wanted <= families:
            return [
                Check(
                    "server",
                    "metrics",
                    WARN,
                    f"{len(families)} metric families but not {', '.join(sorted(wanted - families))}",
                    "upgrade the server to this eodeploy version",
                )
            ]
        return [
            Check(
                "server",
                "metrics",
                OK,
                f"/metrics parses: {len(families)} families, "
                "latency histogram and model readiness among them",
            )
        ]

    def logging_() -> list[Check]:
        try:
            r = get("/v2/health/live")
        except Exception as exc:  # noqa: BLE001
            return unreachable("logging", exc)
        rid = r.headers.get("x-request-id")
        if not rid:
            return [
                Check(
                    "server",
                    "logging",
                    FAIL,
                    "responses carry no X-Request-ID: request logging is off",
                    "serve through eodeploy serve (its middleware logs one line per request)",
                )
            ]
        if not settings.log_json:
            return [
                Check(
                    "server",
                    "logging",
                    WARN,
                    "one line per request with its id, but as plain text",
                    "EODEPLOY_LOG_JSON=true: JSON lines that log shippers index by field",
                )
            ]
        return [
            Check(
                "server",
                "logging",
                OK,
                "JSON access logs (EODEPLOY_LOG_JSON), one line per request "
                "with the X-Request-ID the server returns",
            )
        ]

    def docs() -> list[Check]:
        try:
            page, spec = get("/docs"), get("/openapi.json")
        except Exception as exc:  # noqa: BLE001
            return unreachable("API docs", exc)
        try:
            paths = len(spec.json().get("paths", {})) if spec.status_code == 200 else 0
        except ValueError:
            paths = 0
        if page.status_code == 200 and paths:
            return [Check("server", "API docs", OK, f"/docs served, /openapi.json lists {paths} paths")]
        return [
            Check(
                "server",
                "API docs",
                FAIL,
                f"/docs answers {page.status_code}, /openapi.json {spec.status_code} ({paths} paths)",
                "serve with eodeploy serve: Swagger UI is bundled (no CDN needed)",
            )
        ]

    def dashboard() -> list[Check]:
        try:
            r = get("/dashboard", follow=True, headers={"Accept": "text/html"})  # as a browser asks
        except Exception as exc:  # noqa: BLE001
            return unreachable("dashboard", exc)
        if r.status_code == 200:
            behind = " (behind its login page)" if "/login" in r.url else ""
            return [Check("server", "dashboard", OK, f"/dashboard reachable{behind}")]
        return [
            Check(
                "server",
                "dashboard",
                FAIL,
                f"/dashboard answers {r.status_code}",
                "EODEPLOY_DASHBOARD=true (the default) and restart the server",
            )
        ]

    def keys() -> list[Check]:
        from eodeploy.cli.serve_cmd import is_loopback

        host = urlsplit(base).hostname or ""
        exposed = [h for h in (host, settings.host) if h and not is_loopback(h)]
        try:
            r = get("/monitor/areas")
        except Exception as exc:  # noqa: BLE001
            return unreachable("API keys", exc)
        needs_key = r.status_code == 401
        if not exposed:
            state = "keys required" if needs_key else "no keys"
            return [Check("server", "API keys", OK, f"loopback only ({host}); {state}")]
        if needs_key:
            return [
                Check("server", "API keys", OK, f"reachable on {', '.join(exposed)}; admin routes need a key")
            ]
        if r.status_code == 404:
            return [
                Check(
                    "server",
                    "API keys",
                    WARN,
                    f"reachable on {', '.join(exposed)}; /monitor is off, "
                    "so whether admin routes need a key could not be seen",
                    "set EODEPLOY_API_KEYS on the server",
                )
            ]
        return [
            Check(
                "server",
                "API keys",
                FAIL,
                f"reachable on {', '.join(exposed)} and /monitor/areas answers {r.status_code} without a key",
                "set EODEPLOY_API_KEYS='[\"<a long random key>\"]' on the server and restart it",
            )
        ]

    return [health, metrics, logging_, docs, dashboard, keys]
