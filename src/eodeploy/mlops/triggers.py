"""Retraining triggers: scheduled, live accuracy below the test accuracy, drift on an area, and
feedback volume. Each is recorded once under a unique key (like alerts: one per observation) and
sent through the alerts' outbox (webhook and e-mail, retried until delivered).

Keys, and so when a trigger can fire again:

- ``scheduled:MODEL:vV``: the latest version V is ``retrain_every_days`` old (per model, "*" for all);
- ``accuracy:MODEL:vV``: V has at least ``feedback_min_labels`` labels and the lower bound of its
  live accuracy (Wilson 95 %) is below its test accuracy minus ``retrain_accuracy_margin``;
- ``drift:AREA:MODEL:vV``: ``retrain_drift_flagged`` of the area's last ``retrain_drift_last``
  clear observations were flagged (``drift_flags``), V the version of the latest one;
- ``feedback:MODEL:vV``: ``retrain_feedback_labels`` labels arrived since V was trained.

A new version (``eodeploy retrain``) opens a new key for each.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from eodeploy.errors import ConflictError
from eodeploy.mlops import feedback as fb  # a module: imported while monitor.db loads its tables
from eodeploy.monitor.db import Area, Base, Database, DeliveryColumns, Observation, utcnow
from eodeploy.package.repository import ModelPackage, ModelRepository
from eodeploy.settings import Settings

log = logging.getLogger("eodeploy.mlops")


class RetrainTrigger(Base):
    """One reason to retrain a model, recorded once (unique key)."""

    __tablename__ = "retrain_triggers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(300), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # scheduled, accuracy, drift, feedback
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    area_name: Mapped[str | None] = mapped_column(String(100), nullable=True)
    message: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    #: The candidate ``eodeploy retrain`` made for it, once one was.
    retrained_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retrained_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class TriggerDelivery(DeliveryColumns, Base):
    """One trigger to one destination: the alerts' outbox columns."""

    __tablename__ = "trigger_deliveries"
    __table_args__ = (UniqueConstraint("trigger_id", "channel", "target", name="uq_trigger_delivery"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trigger_id: Mapped[int] = mapped_column(ForeignKey("retrain_triggers.id", ondelete="CASCADE"), index=True)


def outbox() -> Any:
    """The alerts' outbox over the trigger tables (``monitor.alerts.Outbox``; imported here, not at
    the top: ``monitor.db`` loads this module while ``monitor.alerts`` may still be loading)."""
    from eodeploy.monitor.alerts import Outbox

    return Outbox(delivery=TriggerDelivery, parent=RetrainTrigger, fk="trigger_id", kind="trigger")


def drift_flags(session: Session, area_id: int, last: int = 5) -> list[bool]:
    """Whether each of the area's ``last`` latest clear observations was flagged for drift, newest
    first (``mlops.drift.recent_drift``: the one query over ``observation_drift``)."""
    from eodeploy.mlops.drift import recent_drift

    return recent_drift(session, area_id, last)


def trained_at(pkg: ModelPackage) -> datetime:
    """When the version was written (its item's ``datetime``), naive UTC."""
    value = str(pkg.properties.get("datetime") or pkg.item.get("properties", {}).get("datetime"))
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None)
    except ValueError:
        return datetime.fromtimestamp(pkg.model_path.stat().st_mtime)


def _destinations(settings: Settings, area: Area | None = None) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for url in (settings.trigger_webhook_url, area.webhook_url if area else None):
        if url and ("webhook", url) not in out:
            out.append(("webhook", url))
    for addr in [*settings.trigger_emails, *((area.emails or []) if area else [])]:
        if ("email", addr) not in out:
            out.append(("email", addr))
    return out


def _record(
    db: Database, settings: Settings, key: str, kind: str, model: str, version: int | None,
    reason: str, figures: dict[str, Any], area: Area | None = None,
) -> dict[str, Any] | None:  # fmt: skip
    """Store the trigger with its deliveries unless its key is there already; the new row's data."""
    message = f"retrain {model} (v{version}): {reason}"
    payload = {
        "subject": f"[eodeploy] retrain {model}: {kind}",
        "kind": kind, "model": {"name": model, "version": version}, "area": area.name if area else None,
        "reason": reason, "figures": figures, "message": message, "command": f"eodeploy retrain {model}",
    }  # fmt: skip
    try:
        with db.session() as s:
            if s.scalar(select(RetrainTrigger.id).where(RetrainTrigger.key == key)) is not None:
                return None
            row = RetrainTrigger(key=key, kind=kind, model_name=model, model_version=version,
                                 area_name=area.name if area else None, message=message, payload=payload)  # fmt: skip
            s.add(row)
            s.flush()
            for channel, target in _destinations(settings, area):
                s.add(TriggerDelivery(trigger_id=row.id, channel=channel, target=target))
            return trigger_dict(row)
    except ConflictError:  # another checker recorded the same key first
        return None


def check_triggers(
    db: Database, repo: ModelRepository, settings: Settings, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Evaluate every trigger over the repository's models and the active areas; record the new
    ones (each key once). Returns what was recorded now."""
    now = now or utcnow()
    new: list[dict[str, Any] | None] = []
    for name in repo.names():
        latest = repo.get(name)
        v = latest.version
        since = trained_at(latest)
        days = settings.retrain_every_days.get(name, settings.retrain_every_days.get("*"))
        if days and now - since >= timedelta(days=days):
            age = (now - since).total_seconds() / 86400
            new.append(_record(db, settings, f"scheduled:{name}:v{v}", "scheduled", name, v,
                               f"v{v} is {age:.1f} days old (schedule: every {days:g} days)",
                               {"age_days": round(age, 2), "every_days": days}))  # fmt: skip
        with db.session() as s:
            by_version = fb.accuracy_by_version(s, name, min_labels=settings.feedback_min_labels)
            labels_since = (
                s.scalar(
                    select(func.count())
                    .select_from(fb.Feedback)
                    .where(fb.Feedback.model_name == name, fb.Feedback.created_at > since)
                )
                or 0
            )
        versions = set(repo.versions(name))
        for ver, acc in by_version.items():
            test_acc = (
                (repo.get(name, ver).properties.get("eodeploy:metrics") or {}).get("accuracy")
                if ver in versions
                else None
            )
            if test_acc is None or not acc.decidable:
                continue
            floor = test_acc - settings.retrain_accuracy_margin
            if acc.low < floor:
                new.append(_record(db, settings, f"accuracy:{name}:v{ver}", "accuracy", name, ver,
                                   f"live accuracy {acc.text()}: its lower bound is below the test accuracy "
                                   f"{test_acc:.1%} - {settings.retrain_accuracy_margin * 100:g} pt = {floor:.1%}",
                                   {"live": acc.as_dict(), "test_accuracy": test_acc, "floor": floor}))  # fmt: skip
        if labels_since >= settings.retrain_feedback_labels:
            new.append(_record(db, settings, f"feedback:{name}:v{v}", "feedback", name, v,
                               f"{labels_since} new labels since v{v} was trained "
                               f"(threshold {settings.retrain_feedback_labels})",
                               {"labels_since": labels_since, "threshold": settings.retrain_feedback_labels}))  # fmt: skip
    from eodeploy.mlops.drift import recent_verdicts

    with db.session() as s:
        areas = s.scalars(select(Area).where(Area.active.is_(True)).order_by(Area.name)).all()
        drifted = []
        for area in areas:
            verdicts = recent_verdicts(s, area.id, settings.retrain_drift_last)
            flags = [flagged for flagged, _ in verdicts]
            if sum(flags) >= settings.retrain_drift_flagged:
                version = s.scalar(
                    select(Observation.model_version).where(Observation.area_id == area.id, Observation.status == "ok")
                    .order_by(Observation.scene_datetime.desc(), Observation.id.desc()).limit(1)
                )  # fmt: skip
                # The newest flagged observation's named cause: the fix may be in the inputs.
                causes = next((c for flagged, c in verdicts if flagged and c), [])
                drifted.append((area, flags, version, causes))
    for area, flags, version, causes in drifted:
        reason = f"drift flagged on {sum(flags)} of the last {len(flags)} clear observations of {area.name}"
        if causes:  # a named cause is fixed in the inputs; retraining on the same data would not help
            reason += "; cause named: " + "; ".join(causes)
        new.append(_record(db, settings, f"drift:{area.name}:{area.model}:v{version}", "drift", area.model, version,
                           reason, {"flags": flags, "needed": settings.retrain_drift_flagged, "causes": causes},
                           area))  # fmt: skip
    return [t for t in new if t is not None]


def send_trigger_alerts(db: Database, settings: Settings) -> dict[str, int]:
    """Deliver pending trigger alerts through the alerts' outbox (webhook and e-mail)."""
    from eodeploy.monitor.alerts import deliver_pending

    return deliver_pending(db, settings, box=outbox())


def mark_retrained(session: Session, model: str, version: int) -> int:
    """Point the model's open triggers at the candidate a retraining produced."""
    res = session.execute(
        update(RetrainTrigger)
        .where(RetrainTrigger.model_name == model, RetrainTrigger.retrained_version.is_(None))
        .values(retrained_version=version, retrained_at=utcnow())
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def list_triggers(session: Session, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    q = select(RetrainTrigger).order_by(RetrainTrigger.id.desc()).limit(limit)
    if model:
        q = q.where(RetrainTrigger.model_name == model)
    return [trigger_dict(t) for t in session.scalars(q)]


def trigger_dict(t: RetrainTrigger) -> dict[str, Any]:
    return {
        "id": t.id, "key": t.key, "kind": t.kind, "model": t.model_name, "version": t.model_version,
        "area": t.area_name, "message": t.message, "figures": t.payload.get("figures"),
        "created_at": t.created_at.isoformat() + "Z" if t.created_at else None,
        "retrained_version": t.retrained_version,
    }  # fmt: skip
