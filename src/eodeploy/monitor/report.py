"""Reading results back: an area's time series (table, JSON, chart), alerts and runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from eodeploy.mlops.drift import drift_by_observation
from eodeploy.monitor.alerts import alert_dict
from eodeploy.monitor.areas import get_area, iso
from eodeploy.monitor.db import Alert, Observation, Run


def time_series(session: Session, name: str) -> dict[str, Any]:
    """Every observation of the area, oldest first, with its changes and alert."""
    area = get_area(session, name)
    rows = session.scalars(
        select(Observation)
        .where(Observation.area_id == area.id)
        .options(selectinload(Observation.alert))
        .order_by(Observation.scene_datetime, Observation.model_version)
    ).all()
    drift = drift_by_observation(session, [o.id for o in rows])
    return {
        "area": area.name,
        "target_class": area.target_class,
        "area_ha": area.area_ha,
        "thresholds": {"ha": area.threshold_ha, "pct": area.threshold_pct, "on": area.alert_on},
        "observations": [
            {
                "id": o.id,
                "datetime": iso(o.scene_datetime),
                "scene": o.scene_id,
                "model_name": o.model_name,
                "model_version": o.model_version,
                "status": o.status,
                "observed_share": o.observed_share,
                "target_ha": o.target_ha,
                "estimate_ha": o.estimate_ha,
                "baseline_ha": o.baseline_ha,
                "change_baseline_ha": o.change_baseline_ha,
                "change_baseline_pct": o.change_baseline_pct,
                "change_previous_ha": o.change_previous_ha,
                "change_previous_pct": o.change_previous_pct,
                "areas_ha": o.areas_ha,
                "alert_id": o.alert.id if o.alert else None,
                "outputs": o.outputs,
                "drift": drift.get(o.id),
            }
            for o in rows
        ],
    }


#: The columns of an area's series as the dashboard charts it and its CSV/GeoJSON exports carry it:
#: one table, so the chart and both downloads cannot disagree.
SERIES_COLUMNS = (
    "observation_id", "datetime", "scene", "model_name", "model_version", "status", "observed_share",
    "target_ha", "estimate_ha", "baseline_ha", "alert_low_ha", "alert_high_ha", "change_baseline_ha",
    "change_baseline_pct", "change_previous_ha", "change_previous_pct", "alert_id",
)  # fmt: skip


def alert_band(thresholds: dict[str, Any], baseline_ha: float | None) -> tuple[float | None, float | None]:
    """Estimates at or beyond these cross the area's thresholds against ``baseline_ha`` (the
    nearer of the hectare and percentage thresholds; only the watched direction)."""
    if baseline_ha is None:
        return None, None
    distances = [thresholds["ha"]] if thresholds.get("ha") is not None else []
    if thresholds.get("pct") is not None and baseline_ha:
        distances.append(abs(baseline_ha) * thresholds["pct"] / 100.0)
    if not distances:
        return None, None
    d, on = min(distances), thresholds.get("on", "any")
    return (
        round(baseline_ha - d, 4) if on in ("loss", "any") else None,
        round(baseline_ha + d, 4) if on in ("gain", "any") else None,
    )


def series_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """``time_series`` output as rows of ``SERIES_COLUMNS``."""
    rows = []
    for o in data["observations"]:
        low, high = alert_band(data["thresholds"], o["baseline_ha"]) if o["status"] == "ok" else (None, None)
        row = {c: o.get(c) for c in SERIES_COLUMNS}
        row.update(observation_id=o["id"], alert_low_ha=low, alert_high_ha=high)
        rows.append(row)
    return rows


def series_csv(data: dict[str, Any]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SERIES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(series_rows(data))
    return buf.getvalue()


def series_geojson(data: dict[str, Any], geometry: dict[str, Any]) -> dict[str, Any]:
    """One feature per observation: the area's outline with the row's numbers."""
    return {
        "type": "FeatureCollection",
        "name": data["area"],
        "target_class": data["target_class"],
        "features": [
            {"type": "Feature", "id": r["observation_id"], "geometry": geometry, "properties": r}
            for r in series_rows(data)
        ],
    }


def plot_series(data: dict[str, Any], path: str | Path) -> Path:
    """The target class over time: valid observations as a line, cloudy ones marked, alerts in red."""
    from datetime import datetime

    from eodeploy._lazy import lazy_import

    lazy_import("matplotlib", "plot")  # not in the server image: a clear error naming the extra
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4), dpi=120)
    obs = data["observations"]

    def when(o: dict[str, Any]) -> Any:  # matplotlib's date units take datetimes; its stubs say float
        return datetime.fromisoformat(o["datetime"][:-1])

    for version in sorted({o["model_version"] for o in obs}):
        ok = [o for o in obs if o["status"] == "ok" and o["model_version"] == version]
        ax.plot([when(o) for o in ok], [o["estimate_ha"] for o in ok],
                marker="o", label=f"{data['target_class']} (model v{version})")  # fmt: skip
        alerts = [o for o in ok if o["alert_id"]]
        ax.scatter([when(o) for o in alerts], [o["estimate_ha"] for o in alerts],
                   s=120, facecolors="none", edgecolors="red", linewidths=2, zorder=3,
                   label="alert" if alerts else None)  # fmt: skip
    cloudy = [o for o in obs if o["status"] == "cloudy"]
    for o in cloudy:
        ax.axvline(when(o), color="0.7", linestyle=":", linewidth=1)
    if cloudy:
        ax.plot([], [], color="0.7", linestyle=":", label="too cloudy (skipped)")
    ax.set_ylabel("hectares (cloud-filled estimate)")
    ax.set_title(f"{data['area']}: {data['target_class']} in {data['area_ha']:.1f} ha")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def list_alerts(
    session: Session, area: str | None = None, acknowledged: bool | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    q = select(Alert).options(selectinload(Alert.deliveries)).order_by(Alert.id.desc()).limit(limit)
    if area is not None:
        q = q.where(Alert.area_id == get_area(session, area).id)
    if acknowledged is not None:
        q = q.where(Alert.acknowledged_at.is_not(None) if acknowledged else Alert.acknowledged_at.is_(None))
    return [alert_dict(a) for a in session.scalars(q)]


def run_dict(r: Run) -> dict[str, Any]:
    return {
        "id": r.id, "started_at": iso(r.started_at), "finished_at": iso(r.finished_at), "status": r.status,
        "trigger": r.trigger, "as_of": iso(r.as_of), "summary": r.summary, "error": r.error,
    }  # fmt: skip


def list_runs(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    return [run_dict(r) for r in session.scalars(select(Run).order_by(Run.id.desc()).limit(limit))]
