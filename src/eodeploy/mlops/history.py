"""Every routing decision of a model — the canary controller's and a person's — with who, when,
why and the figures behind it: ``eodeploy models history NAME`` and ``GET /models/{name}/history``.

One row per decision. A rollout's rows share ``rollout_id`` (the id of its ``start`` row), so a
gate approval or an abort asked from another process reaches the controller through this table.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from eodeploy.monitor.db import Base, utcnow

#: What a row can record. ``window``: one evaluated window (verdict pass/fail/inconclusive);
#: ``route``: labels or split changed by hand (``eodeploy models route``).
ACTIONS = (
    "start", "window", "step", "gate", "approve", "restart", "abort", "rollback", "promote", "route",
    "refused",
)  # fmt: skip
#: Rows that end a rollout.
FINAL = ("rollback", "promote")


class Decision(Base):
    __tablename__ = "model_decisions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    rollout_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    #: When every watched server reported serving the split this decision wrote (None: not known).
    applied_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    actor: Mapped[str] = mapped_column(String(50))  # controller, user (cli), user (api)
    action: Mapped[str] = mapped_column(String(20))
    champion: Mapped[int | None] = mapped_column(Integer, nullable=True)
    candidate: Mapped[int | None] = mapped_column(Integer, nullable=True)
    from_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    to_share: Mapped[float | None] = mapped_column(Float, nullable=True)
    verdict: Mapped[str | None] = mapped_column(String(20), nullable=True)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # labels after the decision
    reason: Mapped[str] = mapped_column(Text, default="")
    figures: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


def record(
    s: Session,
    model: str,
    action: str,
    actor: str,
    reason: str,
    *,
    rollout_id: int | None = None,
    champion: int | None = None,
    candidate: int | None = None,
    from_share: float | None = None,
    to_share: float | None = None,
    verdict: str | None = None,
    labels: dict[str, int] | None = None,
    figures: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> Decision:
    """``at``: when the decision took effect (a split is decided when serving.json is written)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown decision {action!r}")
    row = Decision(
        model=model, rollout_id=rollout_id, actor=actor, action=action, champion=champion,
        candidate=candidate, from_share=from_share, to_share=to_share, verdict=verdict,
        labels=dict(labels or {}), reason=reason, figures=dict(figures or {}), at=at or utcnow(),
    )  # fmt: skip
    s.add(row)
    s.flush()
    if action == "start":
        row.rollout_id = row.id
    return row


def decision_dict(d: Decision) -> dict[str, Any]:
    return {
        "id": d.id, "model": d.model, "rollout_id": d.rollout_id,
        "at": d.at.isoformat() + "Z", "applied_at": d.applied_at.isoformat() + "Z" if d.applied_at else None,
        "actor": d.actor, "action": d.action, "champion": d.champion, "candidate": d.candidate,
        "from_share": d.from_share, "to_share": d.to_share, "verdict": d.verdict,
        "labels": d.labels, "reason": d.reason, "figures": d.figures,
    }  # fmt: skip


def history(s: Session, model: str, limit: int = 200) -> list[Decision]:
    """The newest ``limit`` decisions about ``model``, oldest first."""
    rows = s.scalars(
        select(Decision).where(Decision.model == model).order_by(Decision.id.desc()).limit(limit)
    ).all()
    return list(reversed(rows))


def rollout_rows(s: Session, rollout_id: int, after_id: int = 0) -> list[Decision]:
    return list(
        s.scalars(
            select(Decision)
            .where(Decision.rollout_id == rollout_id, Decision.id > after_id)
            .order_by(Decision.id)
        )
    )


def latest_rollout(s: Session, model: str) -> list[Decision]:
    """The rows of the model's newest rollout (empty when it never had one)."""
    start = s.scalars(
        select(Decision)
        .where(Decision.model == model, Decision.action == "start")
        .order_by(Decision.id.desc())
        .limit(1)
    ).first()
    return [] if start is None else rollout_rows(s, start.id)


def open_rollout(s: Session, model: str) -> Decision | None:
    """The ``start`` row of the model's rollout still running (none of its rows final), if any."""
    rows = latest_rollout(s, model)
    if not rows or any(r.action in FINAL or (r.action == "abort" and r.actor == "controller") for r in rows):
        return None
    return rows[0]
