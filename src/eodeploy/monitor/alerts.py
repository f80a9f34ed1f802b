"""Alerts: decided from an observation's changes, stored once, delivered to webhooks (JSON POST
with retries and back-off) and by e-mail (SMTP). A delivery that fails stays in the database and
is tried again on the next run; nothing is lost.

Deliveries are an outbox: a sender claims rows in a short transaction (pending/failed -> sending,
with its id and the time; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the write lock on SQLite),
sends with no transaction open, then records the outcome. Two runs never send one delivery at the
same time; a claim whose sender died is taken over after ``delivery_claim_s``. Webhooks go through
the URL guard (``eodeploy.netguard``): no redirects, bounded replies, and only the reply's status
code is kept (a reply body is neither stored nor served back)."""

from __future__ import annotations

import json
import logging
import os
import smtplib
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from eodeploy.errors import NotFoundError
from eodeploy.monitor.db import Alert, Area, Delivery, Observation, utcnow
from eodeploy.netguard import BlockedURLError, URLPolicy, guarded_session, mask
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


class WebhookRefused(RuntimeError):
    """The receiver answered but refuses this request (4xx, a redirect): retrying will not help."""


def _post(url: str, body: dict[str, Any], key: str, s: Settings) -> None:
    """POST through the URL guard with retries and exponential back-off for what may pass (5xx,
    408, 429, timeouts, connection errors); raises the last error. Only status codes are kept."""
    import requests

    last: Exception | None = None
    with guarded_session(URLPolicy.from_settings(s)) as session:
        for attempt in range(1, s.webhook_attempts + 1):
            try:
                r = session.post(
                    url, json=body, timeout=s.webhook_timeout_s, allow_redirects=False,
                    headers={"Idempotency-Key": key, "User-Agent": "eodeploy-monitor"},
                )  # fmt: skip
                if r.status_code < 300:
                    return
                if r.status_code < 400:
                    raise WebhookRefused(
                        f"HTTP {r.status_code}: redirects are not followed; give the final URL"
                    )
                if r.status_code < 500 and r.status_code not in (408, 429):
                    raise WebhookRefused(f"HTTP {r.status_code}: the receiver refuses this request")
                last = RuntimeError(f"HTTP {r.status_code}")
            except (WebhookRefused, BlockedURLError):
                raise  # repeating it now will not help
            except requests.RequestException as exc:  # its text names the URL, secret and all
                last = RuntimeError(f"{type(exc).__name__} ({type(exc).__mro__[1].__name__}) at {mask(url)}")
            if attempt < s.webhook_attempts:
                time.sleep(s.webhook_backoff_s * 2 ** (attempt - 1))
    assert last is not None
    raise last


def _mail(
    to: str, alert_id: int, message: str, payload: dict[str, Any], s: Settings, kind: str = "alert"
) -> None:
    if not s.smtp_host:
        raise RuntimeError("no SMTP server configured; set EODEPLOY_SMTP_HOST (and port, user, password)")
    msg = EmailMessage()
    msg["Subject"] = (
        payload.get("subject") or f"[eodeploy] {payload['area']}: {payload['target_class']} changed"
    )
    msg["From"] = s.smtp_from
    msg["To"] = to
    msg["Message-ID"] = f"<eodeploy-{kind}-{alert_id}@{s.smtp_from.split('@')[-1]}>"
    msg.set_content(message + "\n\n" + json.dumps(payload, indent=2))
    with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s) as smtp:
        if s.smtp_starttls:
            smtp.starttls()
        if s.smtp_user:
            smtp.login(s.smtp_user, s.smtp_password.get_secret_value() if s.smtp_password else "")
        smtp.send_message(msg)


def sender_id() -> str:
    """Who claims deliveries: host, process and a random part (unique across replicas)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Outbox:
    """A deliveries table (the columns of ``Delivery``) and the table of what it delivers (``id``,
    ``message``, ``payload``): alerts here, retraining triggers in ``eodeploy.mlops.triggers``.
    ``kind`` names them in idempotency keys, Message-IDs and webhook bodies."""

    delivery: Any = Delivery
    parent: Any = Alert
    fk: str = "alert_id"
    kind: str = "alert"


ALERTS = Outbox()


def _claimable(now: Any, claim_s: float, D: Any = Delivery) -> Any:
    return or_(
        D.status.in_(("pending", "failed")),
        and_(D.status == "sending", D.claimed_at < now - timedelta(seconds=claim_s)),
    )


def _claim(
    db: Any, me: str, claim_s: float, limit: int, after: int, box: Outbox = ALERTS
) -> list[dict[str, Any]]:
    """Claim up to ``limit`` deliveries (ids above ``after``) for ``me`` in one short transaction;
    what to send, as data."""
    D, P = box.delivery, box.parent
    with db.session() as s:
        now = utcnow()
        q = select(D.id).where(D.id > after, _claimable(now, claim_s, D)).order_by(D.id).limit(limit)
        if db.engine.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)  # rows another sender is claiming are passed over
        ids = list(s.scalars(q))
        if not ids:
            return []
        s.execute(
            update(D)
            .where(D.id.in_(ids), _claimable(now, claim_s, D))
            .values(status="sending", claimed_by=me, claimed_at=now)
        )
        rows = s.execute(
            select(D.id, D.channel, D.target, P.id, P.message, P.payload)
            .join(P, getattr(D, box.fk) == P.id)
            .where(D.id.in_(ids), D.claimed_by == me, D.claimed_at == now)
            .order_by(D.id)
        ).all()
    return [{"id": r[0], "channel": r[1], "target": r[2], "alert_id": r[3], "message": r[4],
             "payload": r[5]} for r in rows]  # fmt: skip


def _record(db: Any, me: str, did: int, error: str | None, box: Outbox = ALERTS) -> None:
    D = box.delivery
    values: dict[str, Any] = {"attempts": D.attempts + 1, "last_attempt_at": utcnow(),
                              "claimed_by": None, "claimed_at": None}  # fmt: skip
    if error is None:
        values.update(status="sent", sent_at=utcnow(), last_error=None)
    else:
        values.update(status="failed", last_error=error[:2000])
    with db.session() as s:  # only while the claim is still ours (not taken over as stale)
        s.execute(update(D).where(D.id == did, D.claimed_by == me).values(**values))


def deliver_pending(db: Any, settings: Settings, limit: int = 500, box: Outbox = ALERTS) -> dict[str, int]:
    """Send every delivery not yet sent (new, or failed on an earlier run), claimed in batches and
    sent with no transaction open. A crash between sending and recording re-sends that one after
    the claim goes stale (the webhook's Idempotency-Key and the e-mail's Message-ID let receivers
    drop the duplicate)."""
    counts = {"sent": 0, "failed": 0}
    me = sender_id()
    done, after = 0, 0
    while done < limit:  # each delivery once per pass: one that fails now waits for the next run
        batch = _claim(db, me, settings.delivery_claim_s, min(50, limit - done), after, box)
        if not batch:
            break
        for job in batch:
            done, after = done + 1, job["id"]
            try:
                if job["channel"] == "webhook":
                    key = f"eodeploy-{box.kind}-{job['alert_id']}"
                    body = {f"{box.kind}_id": job["alert_id"], **job["payload"]}
                    _post(job["target"], body, key, settings)
                else:
                    _mail(job["target"], job["alert_id"], job["message"], job["payload"], settings, box.kind)
                error = None
                counts["sent"] += 1
            except Exception as exc:  # noqa: BLE001 - any failure is recorded and retried next run
                error = f"{type(exc).__name__}: {exc}"
                counts["failed"] += 1
                log.warning("%s %s (%s) failed: %s", box.kind, job["alert_id"], job["channel"], error)
            db.retrying(lambda job=job, error=error: _record(db, me, job["id"], error, box))
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
