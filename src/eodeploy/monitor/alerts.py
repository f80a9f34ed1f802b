"""Alerts: decided from an observation's changes, stored once, delivered to webhooks (JSON POST
with retries and back-off) and by e-mail (SMTP). A delivery that fails stays in the database and
is tried again on the next run; nothing is lost."""

from __future__ import annotations

import json
import logging
import smtplib
import time
from email.message import EmailMessage
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from eodeploy.errors import NotFoundError
from eodeploy.monitor.db import Alert, Area, Delivery, Observation, utcnow
from eodeploy.settings import Settings

log = logging.getLogger("eodeploy.monitor")


def crossed(area: Area, change_ha: float | None, change_pct: float | None) -> bool:
    """Whether a change crosses the area's thresholds (either one) in the watched direction."""
    if change_ha is None:
        return False
    if area.alert_on == "loss" and change_ha >= 0 or area.alert_on == "gain" and change_ha <= 0:
        return False
    by_ha = area.threshold_ha is not None and abs(change_ha) >= area.threshold_ha
    by_pct = (
        area.threshold_pct is not None and change_pct is not None and abs(change_pct) >= area.threshold_pct
    )
    return by_ha or by_pct


def _fmt(ha: float, pct: float | None) -> str:
    p = f", {pct:+.1f} %" if pct is not None else ""
    return f"{ha:+.2f} ha{p}"


def make_alert(session: Session, area: Area, obs: Observation) -> Alert | None:
    """The alert for ``obs`` when a change crosses a threshold, with one pending delivery per
    destination; added to ``session`` (committed with the observation, or not at all)."""
    reasons = []
    if crossed(area, obs.change_baseline_ha, obs.change_baseline_pct):
        reasons.append(f"{_fmt(obs.change_baseline_ha or 0.0, obs.change_baseline_pct)} against the baseline")
    if crossed(area, obs.change_previous_ha, obs.change_previous_pct):
        reasons.append(
            f"{_fmt(obs.change_previous_ha or 0.0, obs.change_previous_pct)} since the previous observation"
        )
    if not reasons:
        return None
    message = (
        f"{area.name}: {area.target_class} {'; '.join(reasons)} "
        f"(now {obs.estimate_ha:.2f} ha, scene {obs.scene_id} of {obs.scene_datetime:%Y-%m-%d}, "
        f"{obs.observed_share:.0%} observed, {obs.model_name} v{obs.model_version})"
    )
    payload = {
        "area": area.name,
        "target_class": area.target_class,
        "scene": obs.scene_id,
        "scene_datetime": obs.scene_datetime.isoformat() + "Z",
        "model": {"name": obs.model_name, "version": obs.model_version},
        "estimate_ha": obs.estimate_ha,
        "observed_share": obs.observed_share,
        "baseline_ha": obs.baseline_ha,
        "change_baseline_ha": obs.change_baseline_ha,
        "change_baseline_pct": obs.change_baseline_pct,
        "change_previous_ha": obs.change_previous_ha,
        "change_previous_pct": obs.change_previous_pct,
        "thresholds": {"ha": area.threshold_ha, "pct": area.threshold_pct, "on": area.alert_on},
        "message": message,
    }
    alert = Alert(area_id=area.id, observation=obs, message=message, payload=payload)
    if area.webhook_url:
        alert.deliveries.append(Delivery(channel="webhook", target=area.webhook_url))
    for addr in area.emails or []:
        alert.deliveries.append(Delivery(channel="email", target=addr))
    session.add(alert)
    return alert


def _post(url: str, body: dict[str, Any], key: str, s: Settings) -> None:
    """POST with retries and exponential back-off; raises the last error."""
    import requests

    last: Exception | None = None
    for attempt in range(1, s.webhook_attempts + 1):
        try:
            r = requests.post(
                url, json=body, timeout=s.webhook_timeout_s,
                headers={"Idempotency-Key": key, "User-Agent": "eodeploy-monitor"},
            )  # fmt: skip
            if r.status_code < 300:
                return
            last = RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
            if 400 <= r.status_code < 500 and r.status_code not in (408, 429):
                break  # the receiver refuses this request; repeating it now will not help
        except requests.RequestException as exc:
            last = exc
        if attempt < s.webhook_attempts:
            time.sleep(s.webhook_backoff_s * 2 ** (attempt - 1))
    assert last is not None
    raise last


def _mail(to: str, alert: Alert, s: Settings) -> None:
    if not s.smtp_host:
        raise RuntimeError("no SMTP server configured; set EODEPLOY_SMTP_HOST (and port, user, password)")
    msg = EmailMessage()
    msg["Subject"] = f"[eodeploy] {alert.payload['area']}: {alert.payload['target_class']} changed"
    msg["From"] = s.smtp_from
    msg["To"] = to
    msg["Message-ID"] = f"<eodeploy-alert-{alert.id}@{s.smtp_from.split('@')[-1]}>"
    msg.set_content(alert.message + "\n\n" + json.dumps(alert.payload, indent=2))
    with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s) as smtp:
        if s.smtp_starttls:
            smtp.starttls()
        if s.smtp_user:
            smtp.login(s.smtp_user, s.smtp_password.get_secret_value() if s.smtp_password else "")
        smtp.send_message(msg)


def deliver_pending(db: Any, settings: Settings, limit: int = 500) -> dict[str, int]:
    """Send every delivery not yet sent (new, or failed on an earlier run). Each outcome is
    committed on its own, so a crash loses at most the one in flight (which is then re-sent; the
    webhook's Idempotency-Key and the e-mail's Message-ID let receivers drop the duplicate)."""
    counts = {"sent": 0, "failed": 0}
    with db.session() as s:
        ids = s.scalars(
            select(Delivery.id).where(Delivery.status != "sent").order_by(Delivery.id).limit(limit)
        ).all()
    for did in ids:
        with db.session() as s:
            d = s.get(Delivery, did)
            if d is None or d.status == "sent":
                continue
            alert = d.alert
            try:
                if d.channel == "webhook":
                    _post(
                        d.target,
                        {"alert_id": alert.id, **alert.payload},
                        f"eodeploy-alert-{alert.id}",
                        settings,
                    )
                else:
                    _mail(d.target, alert, settings)
                d.status, d.sent_at, d.last_error = "sent", utcnow(), None
                counts["sent"] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is recorded and retried next run
                d.status, d.last_error = "failed", f"{type(exc).__name__}: {exc}"[:2000]
                counts["failed"] += 1
                log.warning("alert %s to %s failed: %s", alert.id, d.target, d.last_error)
            d.attempts += 1
            d.last_attempt_at = utcnow()
    return counts


def acknowledge(session: Session, alert_id: int, by: str | None = None) -> Alert:
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFoundError(f"no alert with id {alert_id}; list them with 'eodeploy monitor alerts'")
    if alert.acknowledged_at is None:
        alert.acknowledged_at, alert.acknowledged_by = utcnow(), by
    return alert


def alert_dict(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "area": alert.payload.get("area"),
        "message": alert.message,
        "created_at": alert.created_at.isoformat() + "Z",
        "acknowledged_at": alert.acknowledged_at.isoformat() + "Z" if alert.acknowledged_at else None,
        "acknowledged_by": alert.acknowledged_by,
        "payload": alert.payload,
        "deliveries": [
            {
                "channel": d.channel,
                "target": d.target,
                "status": d.status,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "sent_at": d.sent_at.isoformat() + "Z" if d.sent_at else None,
            }
            for d in alert.deliveries
        ],  # fmt: skip
    }
