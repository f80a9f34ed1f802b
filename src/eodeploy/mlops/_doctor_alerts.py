"""The doctor's alert checks: areas with a webhook or e-mail, and a dry run of each channel —
connect and hang up (TCP/TLS for webhooks, EHLO/QUIT for SMTP), so no alert is ever sent."""

from __future__ import annotations

import smtplib
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from eodeploy.mlops._doctor_infra import connect, reason, sqlite_path
from eodeploy.mlops.doctor import FAIL, OK, WARN, Check
from eodeploy.monitor.db import Area
from eodeploy.netguard import BlockedURLError, URLPolicy, check_url, mask
from eodeploy.settings import Settings


def alert_checks(
    settings: Settings, url: str, timeout_s: float, secrets: Any, dry_run: bool = True
) -> list[Check]:
    """Areas with a webhook or e-mail, then a dry run of each channel (connect, never send)."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        areas: list[tuple[str, str | None, list[str]]] = []
    else:
        try:
            with connect(url, timeout_s) as conn, Session(conn) as s:
                rows = s.execute(select(Area.name, Area.webhook_url, Area.emails).where(Area.active)).all()
                areas = [(r[0], r[1], list(r[2] or [])) for r in rows]
        except Exception as exc:  # noqa: BLE001
            return [
                Check(
                    "alerts",
                    "configured",
                    WARN,
                    f"areas could not be read ({reason(exc)})",
                    "fix the database checks above first",
                )
            ]
    for _, hook, _ in areas:
        if hook:
            secrets.add_url(hook)
    checks: list[Check] = []
    if not areas:
        checks.append(
            Check(
                "alerts",
                "configured",
                WARN,
                "no areas of interest watched, so no alerts",
                "eodeploy monitor add NAME -g AREA.geojson --class Forest --webhook URL --email ADDR",
            )
        )
    else:
        silent = [n for n, hook, mails in areas if not hook and not mails]
        status = WARN if silent else OK
        finding = f"{len(areas) - len(silent)} of {len(areas)} active areas alert by webhook or e-mail"
        if silent:
            finding += f"; silent: {', '.join(silent[:5])}"
        checks.append(
            Check(
                "alerts",
                "configured",
                status,
                finding,
                "eodeploy monitor update NAME --webhook URL (or --email ADDR)" if silent else None,
            )
        )
        if any(mails for _, _, mails in areas) and not settings.smtp_host:
            checks.append(
                Check(
                    "alerts",
                    "smtp",
                    FAIL,
                    "areas alert by e-mail but no SMTP server is set",
                    "EODEPLOY_SMTP_HOST (and _PORT, _USER, _PASSWORD); e-mails wait until then",
                )
            )
    if not dry_run:
        return checks
    hooks = sorted({hook for _, hook, _ in areas if hook})[:8]
    jobs: list[Callable[[], Check]] = [lambda h=h: webhook_dry_run(settings, h, timeout_s) for h in hooks]  # type: ignore[misc]
    if settings.smtp_host:
        jobs.append(lambda: smtp_dry_run(settings, timeout_s))
    if jobs:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            checks += list(pool.map(lambda job: job(), jobs))
    return checks


def webhook_dry_run(settings: Settings, url: str, timeout_s: float) -> Check:
    """The URL guard's verdict, then a TCP connection (and TLS handshake for https) to the
    receiver, closed at once: no request is made, so no alert can be sent."""
    shown = mask(url)
    name = f"webhook {shown}"
    try:
        check_url(url, URLPolicy.from_settings(settings))
    except BlockedURLError as exc:
        return Check(
            "alerts",
            name,
            FAIL,
            f"the URL guard refuses it: {exc}",
            "check the host name and this host's DNS"
            if "does not resolve" in str(exc)
            else "use a public receiver, or allow it with EODEPLOY_ALLOWED_URL_HOSTS",
        )
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            if parts.scheme == "https":
                with ssl.create_default_context().wrap_socket(sock, server_hostname=host):
                    pass
    except (OSError, ssl.SSLError) as exc:
        return Check(
            "alerts",
            name,
            FAIL,
            f"dry run: cannot connect to {host}:{port} ({type(exc).__name__})",
            "check that the receiver is up and reachable from this host (firewall, proxy, DNS)",
        )
    ms = (time.perf_counter() - started) * 1000
    tls = " and TLS handshake" if parts.scheme == "https" else ""
    return Check(
        "alerts", name, OK, f"dry run: TCP connect{tls} to {host}:{port} in {ms:.0f} ms; nothing sent"
    )


def smtp_dry_run(settings: Settings, timeout_s: float) -> Check:
    """Connect, EHLO (STARTTLS when configured), QUIT: the server answers, no message is sent."""
    host, port = settings.smtp_host or "", settings.smtp_port
    name = f"smtp {host}:{port}"
    try:
        with smtplib.SMTP(host, port, timeout=timeout_s) as smtp:
            code, _ = smtp.ehlo()
            if settings.smtp_starttls:
                smtp.starttls()
                code, _ = smtp.ehlo()
            features = sorted(smtp.esmtp_features)
    except (OSError, smtplib.SMTPException) as exc:
        return Check(
            "alerts",
            name,
            FAIL,
            f"dry run: {type(exc).__name__} ({reason(exc)})",
            "check EODEPLOY_SMTP_HOST / _PORT / _STARTTLS and that this host may reach it",
        )
    if code != 250:
        return Check("alerts", name, FAIL, f"dry run: EHLO answered {code}", "check the SMTP server")
    tls = ", STARTTLS" if settings.smtp_starttls else ""
    return Check(
        "alerts", name, OK, f"dry run: connect, EHLO{tls}, QUIT ({', '.join(features[:4])}); nothing sent"
    )
