"""Drift, measured where it means something.

One statistic everywhere: ``package.stats.robust_shift``, |median - reference median| / reference
IQR per band, an effect size (pixels are autocorrelated, so p-values of pixel tests flag every
scene). Two places use it:

* **monitoring**, per observation on the clear pixels of the area: against the area's own
  baseline (mean ± 3σ of its first clear observations, judged once there are 3 — NannyML's rule)
  and, as a gross check, against the package's reference statistics with the known causes named
  (``geo.drift``: the +1000 DN of processing baseline 04.00, unmasked cloud, L2A vs L1C);
* **serving**, per time window of sampled requests (``mlops.sketch``): the band shift against the
  reference statistics and the predicted-class shares against the reference class frequencies.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, UniqueConstraint, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from eodeploy.monitor.db import Area, Base, Observation, utcnow

#: NannyML's rule: a value outside the baseline mean ± 3σ is drift, judged once the baseline holds
#: at least 3 clear observations; the baseline is the first 10 (NannyML's 10 reference chunks), or
#: those in the area's baseline window when it has one: a fixed reference, so slow drift is not absorbed.
SIGMAS = 3.0
BASELINE_MIN = 3
BASELINE_MAX = 10
#: σ is never taken below this (reference IQRs): three near-identical dates would otherwise make
#: noise drift. Clear Lahinch dates differ by 0.05-0.4 IQR per band from one another.
MIN_SIGMA = 0.1


# --- tables --------------------------------------------------------------------------------------


class ObservationDrift(Base):
    """The drift of one monitoring observation: its band shifts and both checks' verdicts."""

    __tablename__ = "observation_drift"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    observation_id: Mapped[int] = mapped_column(
        ForeignKey("observations.id", ondelete="CASCADE"), unique=True
    )
    area_id: Mapped[int] = mapped_column(ForeignKey("areas.id", ondelete="CASCADE"), index=True)
    clear_pixels: Mapped[int] = mapped_column(Integer)
    #: Median over bands of |shift| against the package's reference statistics (None: too few clear pixels).
    median_shift: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Per band {"median", "shift"}: the signed shift in reference IQRs.
    bands: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reference: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    baseline: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DriftWindow(Base):
    """One closed serving window of one model version on one server process."""

    __tablename__ = "drift_windows"
    __table_args__ = (
        UniqueConstraint("model_name", "model_version", "instance", "started_at", name="uq_drift_window"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version: Mapped[int] = mapped_column(Integer)
    instance: Mapped[str] = mapped_column(String(200))  # host:pid of the server process
    started_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime] = mapped_column(DateTime)
    requests: Mapped[int] = mapped_column(Integer)
    sampled_requests: Mapped[int] = mapped_column(Integer)
    patches: Mapped[int] = mapped_column(Integer)  # predictions counted in the class shares
    pixels: Mapped[int] = mapped_column(Integer)  # pixels seen by the band sketch
    median_shift: Mapped[float | None] = mapped_column(Float, nullable=True)
    bands: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    class_shares: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reference_shares: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: Total variation distance between the predicted and the reference class shares (0-1).
    prediction_shift: Mapped[float | None] = mapped_column(Float, nullable=True)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


# --- monitoring: one observation -----------------------------------------------------------------


def signed_shifts(shift: dict[str, Any]) -> dict[str, float]:
    """Per band (median - reference median) / reference IQR from a ``robust_shift`` result."""
    return {b: float(np.copysign(r["shift"], r["difference"])) for b, r in shift.get("bands", {}).items()}


#: Atmospheric correction leaves a mark no L1C scene has. The aerosol bands: L2A B01/B02 lie far below
#: top-of-atmosphere values (Thailand L2A cell: -2.8 and -1.4 reference IQRs; the lowest of 377 single
#: EuroSAT-MS patches: -1.3 and -1.0). The water-vapour band: L2A B09 about equals B8A (Thailand 1.01),
#: L1C B09 is absorbed to 0.13-0.64 x B8A (EuroSAT patches), 0.16-0.37 on Lahinch, clouds included.
L2A_AEROSOL = (-1.5, -1.0)
L2A_VAPOUR_RATIO = 0.8


def l2a_signature(shift: dict[str, Any]) -> str | None:
    """The cause "surface reflectance against a top-of-atmosphere model", when the bands show it."""
    bands, signed = shift.get("bands", {}), signed_shifts(shift)
    aerosol = (
        "B01" in signed and "B02" in signed
        and signed["B01"] < L2A_AEROSOL[0] and signed["B02"] < L2A_AEROSOL[1]
    )  # fmt: skip
    ratio = None
    if "B09" in bands and "B8A" in bands and bands["B8A"]["median"] > 0:
        ratio = bands["B09"]["median"] / bands["B8A"]["median"]
    if not aerosol and (ratio is None or ratio < L2A_VAPOUR_RATIO):
        return None
    seen = (
        [f"B01/B02 {signed['B01']:+.1f}/{signed['B02']:+.1f} IQR from the training data"] if aerosol else []
    )
    if ratio is not None and ratio >= L2A_VAPOUR_RATIO:
        seen.append(f"B09 = {ratio:.2f} x B8A (top-of-atmosphere data: about 0.3)")
    return (
        f"surface reflectance (L2A, atmospherically corrected) against a model trained on "
        f"top-of-atmosphere L1C data: {'; '.join(seen)}; use the L1C product of the scene, or a model "
        "trained on L2A"
    )


def reference_check(shift: dict[str, Any]) -> dict[str, Any]:
    """The gross check against the package's reference statistics: the median band shift over
    its limit, or a known product signature; the causes named (``geo.drift``)."""
    l2a = l2a_signature(shift)
    causes = list(shift.get("causes") or [])
    if l2a:  # the specific cause replaces the generic "a different product or place"
        causes = [l2a, *(c for c in causes if not c.startswith("a different product or place"))]
    return {
        "flagged": bool(shift.get("unlike_training")) or l2a is not None, "limit": shift["scene_limit"],
        "band_limit": shift["band_limit"], "bands_flagged": shift["bands_flagged"], "causes": causes,
    }  # fmt: skip


def baseline_check(
    current: dict[str, float], history: list[dict[str, float]], *, sigmas: float = SIGMAS,
    min_n: int = BASELINE_MIN, min_sigma: float = MIN_SIGMA,
) -> dict[str, Any]:  # fmt: skip
    """``current`` signed band shifts against those of the baseline observations: a band is out
    when beyond its baseline mean ± ``sigmas``·σ; the observation drifts when most bands are
    (the median over bands of |z| exceeds ``sigmas``)."""
    n = len(history)
    if n < min_n:
        return {"n": n, "flagged": False, "judged": False,
                "note": f"collecting a baseline: {n} of {min_n} clear observations"}  # fmt: skip
    bands: dict[str, dict[str, float]] = {}
    for b, x in current.items():
        past = np.array([h[b] for h in history if b in h], np.float64)
        if len(past) < min_n:
            continue
        mean = float(past.mean())
        sigma = max(float(past.std(ddof=1)), min_sigma)
        bands[b] = {"mean": round(mean, 3), "sigma": round(sigma, 3), "z": round(abs(x - mean) / sigma, 2)}
    zs = [v["z"] for v in bands.values()]
    median_z = float(np.median(zs)) if zs else 0.0
    return {
        "n": n, "judged": bool(zs), "rule": f"mean ± {sigmas:g}σ of the first {n} clear observations",
        "median_z": round(median_z, 2), "flagged": bool(zs) and median_z > sigmas,
        "bands_flagged": [b for b, v in bands.items() if v["z"] > sigmas], "bands": bands,
    }  # fmt: skip


def observation_drift(shift: dict[str, Any] | None, history: list[dict[str, float]]) -> dict[str, Any] | None:
    """Both checks of one observation from its ``geo.drift.scene_shift`` result (clear pixels of
    the area against the package's reference) and the signed band shifts of its baseline."""
    if shift is None:
        return None  # the package has no reference statistics
    clear = int(shift.get("clear_pixels", 0))
    if shift.get("median_shift") is None:
        return {"clear_pixels": clear, "median_shift": None, "bands": {}, "flagged": False,
                "reference": {"flagged": False, "note": shift.get("note")},
                "baseline": {"flagged": False, "judged": False, "note": shift.get("note")}}  # fmt: skip
    signed = signed_shifts(shift)
    reference = reference_check(shift)
    baseline = baseline_check(signed, history)
    return {
        "clear_pixels": clear, "median_shift": shift["median_shift"],
        "bands": {b: {"median": r["median"], "shift": round(signed[b], 3)} for b, r in shift["bands"].items()},
        "reference": reference, "baseline": baseline,
        "flagged": reference["flagged"] or baseline["flagged"],
    }  # fmt: skip


def baseline_history(session: Session, area: Area, obs: Observation) -> list[dict[str, float]]:
    """Signed band shifts of the area's baseline: its first clear, unflagged observations by the
    same model version before ``obs`` (within the area's baseline window when it has one)."""
    q = (
        select(ObservationDrift.bands)
        .join(Observation, Observation.id == ObservationDrift.observation_id)
        .where(
            Observation.area_id == area.id,
            Observation.model_version == obs.model_version,
            Observation.status == "ok",
            Observation.scene_datetime < obs.scene_datetime,
            ObservationDrift.median_shift.is_not(None),
            ObservationDrift.flagged.is_(False),  # a drifted observation never becomes the norm
        )
        .order_by(Observation.scene_datetime)
        .limit(BASELINE_MAX)
    )
    if area.baseline_start and area.baseline_end:
        q = q.where(Observation.scene_datetime.between(area.baseline_start, area.baseline_end))
    return [{b: float(v["shift"]) for b, v in bands.items()} for bands in session.scalars(q)]


def record_observation_drift(
    session: Session, area: Area, obs: Observation, shift: dict[str, Any] | None
) -> ObservationDrift | None:
    """Compute and add (in the caller's transaction) the drift row of a flushed observation."""
    out = observation_drift(shift, baseline_history(session, area, obs))
    if out is None:
        return None
    row = ObservationDrift(
        observation_id=obs.id, area_id=area.id, clear_pixels=out["clear_pixels"],
        median_shift=out["median_shift"], bands=out["bands"], reference=out["reference"],
        baseline=out["baseline"], flagged=out["flagged"],
    )  # fmt: skip
    session.add(row)
    return row


def drift_dict(row: ObservationDrift) -> dict[str, Any]:
    return {
        "flagged": row.flagged, "median_shift": row.median_shift, "clear_pixels": row.clear_pixels,
        "reference": row.reference, "baseline": row.baseline, "bands": row.bands,
    }  # fmt: skip


def drift_by_observation(session: Session, observation_ids: list[int]) -> dict[int, dict[str, Any]]:
    """``drift_dict`` of each of these observations that has one."""
    if not observation_ids:
        return {}
    rows = session.scalars(
        select(ObservationDrift).where(ObservationDrift.observation_id.in_(observation_ids))
    )
    return {r.observation_id: drift_dict(r) for r in rows}


def recent_verdicts(session: Session, area_id: int, last: int = 5) -> list[tuple[bool, list[str]]]:
    """(flagged, causes the reference check named) of the area's ``last`` clear observations,
    newest first: the one query behind the trigger "drift on ≥ 3 of the last 5 clear observations"
    and the cause it reports."""
    q = (
        select(ObservationDrift.flagged, ObservationDrift.reference)
        .join(Observation, Observation.id == ObservationDrift.observation_id)
        .where(Observation.area_id == area_id, Observation.status == "ok")
        .order_by(Observation.scene_datetime.desc())
        .limit(last)
    )
    return [(bool(f), [str(c) for c in (ref or {}).get("causes") or []]) for f, ref in session.execute(q)]


def recent_drift(session: Session, area_id: int, last: int = 5) -> list[bool]:
    """Drift verdicts of the area's ``last`` clear observations, newest first."""
    return [flagged for flagged, _ in recent_verdicts(session, area_id, last)]


# --- serving: one window ------------------------------------------------------------------------


def reference_shares(properties: dict[str, Any], class_names: list[str]) -> dict[str, float] | None:
    """The class frequencies the package was trained on: ``eodeploy:reference_stats`` records
    them; older packages only have the test split's per-class support in ``eodeploy:metrics``."""
    freq = (properties.get("eodeploy:reference_stats") or {}).get("class_frequencies")
    if not freq:
        per_class = (properties.get("eodeploy:metrics") or {}).get("per_class") or {}
        support = {c: float(per_class.get(c, {}).get("support", 0)) for c in class_names}
        total = sum(support.values())
        freq = {c: v / total for c, v in support.items()} if total else None
    if not freq:
        return None
    return {c: float(freq.get(c, 0.0)) for c in class_names}


def prediction_shift(shares: dict[str, float], reference: dict[str, float] | None) -> float | None:
    """Total variation distance (0: same shares, 1: disjoint) between two class distributions."""
    if reference is None or not shares:
        return None
    return round(0.5 * sum(abs(shares.get(c, 0.0) - reference.get(c, 0.0)) for c in {*shares, *reference}), 4)


def store_window(db: Any, window: dict[str, Any]) -> None:
    """Keep one closed serving window (``mlops.sketch`` builds it) in the monitoring database."""
    keys = {c.key for c in DriftWindow.__table__.columns} - {"id", "created_at"}
    with db.session() as s:
        s.add(DriftWindow(**{k: v for k, v in window.items() if k in keys}))


def list_windows(session: Session, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    q = select(DriftWindow).order_by(DriftWindow.id.desc()).limit(limit)
    if model is not None:
        q = q.where(DriftWindow.model_name == model)
    cols = [c.key for c in DriftWindow.__table__.columns]
    return [{c: getattr(w, c) for c in cols} for w in session.scalars(q)]
