"""``run_monitoring``: every due area once — new scenes classified around the area, measured,
compared with history, alerts raised and delivered.

Idempotent: an (area, scene, model version) already stored is skipped. Resumable: each scene's
observation, change and alert are committed in one transaction after its maps are written, so a
crash leaves nothing partial and the next run picks up the scenes not yet stored.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from eodeploy.errors import ConflictError, DatabaseUnavailableError, DataError, EodeployError
from eodeploy.geo.outputs import CLASSES_TIF
from eodeploy.geo.predict import OutsideSceneError, predict_scene
from eodeploy.mlops.drift import record_observation_drift
from eodeploy.monitor.alerts import deliver_pending, make_alert
from eodeploy.monitor.areas import get_area, resolve_model
from eodeploy.monitor.db import Area, Database, Observation, Run, utcnow
from eodeploy.monitor.imagery import Candidate, covers, list_scenes, mosaic_patches
from eodeploy.monitor.lease import Held, LeaseLostError, acquire
from eodeploy.monitor.measure import measure_area
from eodeploy.package.repository import ModelRepository
from eodeploy.settings import Settings

log = logging.getLogger("eodeploy.monitor")
#: A run whose heartbeat is older than this is taken to have died.
STALE_AFTER = timedelta(minutes=15)

Event = Callable[[str, dict[str, Any]], None]


@dataclass
class RunReport:
    run_id: int
    as_of: datetime
    areas: list[str] = field(default_factory=list)
    not_due: list[str] = field(default_factory=list)
    stored: int = 0
    cloudy: int = 0
    already: int = 0
    outside: int = 0
    alerts: int = 0
    deliveries: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # areas another process was running
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "areas": self.areas, "not_due": self.not_due, "stored": self.stored, "cloudy": self.cloudy,
            "already_stored": self.already, "outside": self.outside, "alerts": self.alerts,
            "deliveries": self.deliveries, "failures": self.failures, "warnings": self.warnings,
            "busy": self.busy,
        }  # fmt: skip


def _safe(name: str) -> str:
    """A folder name for an area or scene name: the whole name (``farm.north`` and ``farm.south``
    stay apart), safe on every file system, never ``.``/``..``; when characters had to be replaced
    or the name shortened, a short hash of the original keeps two names from meeting."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".")[:80] or "_"
    if slug != name:
        slug += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return slug


def run_monitoring(
    db: Database,
    settings: Settings,
    *,
    as_of: datetime | None = None,
    area: str | None = None,
    force: bool = False,
    trigger: str = "cli",
    on_event: Event | None = None,
) -> RunReport:
    """One monitoring pass. ``as_of``: take scenes acquired up to then (default now, UTC);
    ``area``: only that area, due or not; ``force``: every active area, due or not."""
    from eodeploy.netguard import URLPolicy, using

    with using(URLPolicy.from_settings(settings)):  # STAC searches, items and assets of this run
        return _run_monitoring(db, settings, as_of, area, force, trigger, on_event)


def _run_monitoring(
    db: Database, settings: Settings, as_of: datetime | None, area: str | None, force: bool,
    trigger: str, on_event: Event | None,
) -> RunReport:  # fmt: skip
    emit = on_event or (lambda _k, _i: None)
    now = utcnow()
    as_of = as_of or now
    with db.session() as s:
        s.execute(
            update(Run)
            .where(Run.status == "running", Run.heartbeat_at < now - STALE_AFTER)
            .values(status="interrupted", finished_at=now, error="no heartbeat: the process died")
        )
        run = Run(as_of=as_of, trigger=trigger)
        s.add(run)
        s.flush()
        run_id = run.id
    report = RunReport(run_id, as_of)
    emit("run", {"run_id": run_id})
    try:
        with db.session() as s:
            if area:
                areas = [get_area(s, area)]
            else:
                areas = list(s.scalars(select(Area).where(Area.active.is_(True)).order_by(Area.name)))
            due = []
            for a in areas:
                if (
                    area
                    or force
                    or a.last_checked_at is None
                    or a.last_checked_at <= now - timedelta(hours=a.interval_hours)
                ):
                    due.append((a.id, a.name))
                else:
                    report.not_due.append(a.name)
        repo = ModelRepository(settings.model_repo)
        predictors: dict[tuple[str, int], Any] = {}
        for area_id, name in due:
            try:
                _run_area(db, settings, repo, area_id, report, predictors, emit)
            except DatabaseUnavailableError:
                raise  # the database is everyone's: the run stops (and resumes next time)
            except Exception as exc:  # noqa: BLE001 - one area's failure stays that area's
                _area_failed(report, name, exc, emit)
        report.deliveries = deliver_pending(db, settings)
        status = "failed" if report.failures else "succeeded"
        _finish(db, run_id, status, report, None)
    except BaseException as exc:
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        try:
            _finish(db, run_id, status, report, f"{type(exc).__name__}: {exc}")
        except (DatabaseUnavailableError, Exception):  # noqa: BLE001 - the original error matters more
            log.warning("could not record the end of run %s", run_id)
        raise
    return report


def _describe(exc: BaseException) -> str:
    """Domain errors speak for themselves; anything else is named by its type (a bare
    ``KeyError: 'datetime'`` says little without it)."""
    return str(exc) if isinstance(exc, EodeployError) else f"{type(exc).__name__}: {exc}"


def _area_failed(report: RunReport, name: str, exc: BaseException, emit: Event) -> None:
    error = _describe(exc)
    if not isinstance(exc, (EodeployError, OSError)):
        log.error("area %s: unexpected error", name, exc_info=exc)
    report.failures.append({"area": name, "error": error})
    emit("area_failed", {"area": name, "error": error})


def _finish(db: Database, run_id: int, status: str, report: RunReport, error: str | None) -> None:
    with db.session() as s:
        r = s.get(Run, run_id)
        if r is not None:
            r.status, r.finished_at, r.summary, r.error = status, utcnow(), report.summary(), error


def _run_area(
    db: Database, settings: Settings, repo: ModelRepository, area_id: int, report: RunReport,
    predictors: dict[tuple[str, int], Any], emit: Event,
) -> None:  # fmt: skip
    import shapely

    with db.session() as s:
        a = s.get(Area, area_id)
        assert a is not None
        name, geom, source = a.name, shapely.from_wkb(a.wkb), a.source
        model, ref = a.model, a.model_version
        spec = {"name": a.name, "area_ha": a.area_ha, "target_class": a.target_class, "mmu_ha": a.mmu_ha}
    report.areas.append(name)
    held = acquire(db, f"area:{area_id}", settings.monitor_lease_s)
    if not isinstance(held, Held):
        holder, until = held
        report.busy.append(name)
        report.warnings.append(
            f"{name}: skipped, another run ({holder}) is working on it (lease until {until:%H:%M:%S} UTC)"
        )
        emit("area_busy", {"area": name, "holder": holder})
        return
    with held:
        _clean_leftovers(settings, name)
        _run_leased(db, settings, repo, area_id, report, predictors, emit, held, name, geom, source,
                    model, ref, spec)  # fmt: skip


def _clean_leftovers(settings: Settings, area: str) -> None:
    """What a run killed mid-scene left of this area: half-written output folders (maps are
    written to ``.NAME.partial-*`` and renamed when complete) and mosaics. Safe under the area's
    lease: no other run writes here now."""
    import shutil

    folder = settings.monitor_dir / _safe(area)
    for p in [*folder.glob(".*.partial-*"), settings.monitor_dir / ".mosaics" / _safe(area)]:
        if p.is_dir():
            log.info("removing %s, left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def _run_leased(
    db: Database, settings: Settings, repo: ModelRepository, area_id: int, report: RunReport,
    predictors: dict[tuple[str, int], Any], emit: Event, held: Held, name: str, geom: Any,
    source: dict[str, Any], model: str, ref: str, spec: dict[str, Any],
) -> None:  # fmt: skip
    try:
        pkg = resolve_model(repo, model, ref)
        scenes = list_scenes(source, geom, report.as_of, settings.monitor_dir / ".stac-items")
    except Exception as exc:  # noqa: BLE001 - a bad source or model fails this area alone
        _area_failed(report, name, exc, emit)
        return
    with db.session() as s:
        done = set(
            s.scalars(
                select(Observation.scene_id).where(
                    Observation.area_id == area_id, Observation.model_version == pkg.version
                )
            )
        )
    new = [c for c in scenes if c.scene_id not in done]
    todo = [c for c in new if covers(c, geom)]  # footprints read for new scenes only
    report.already += len(scenes) - len(new)
    report.outside += len(new) - len(todo)
    if new and not todo and not done:
        report.warnings.append(
            f"{name}: the area lies outside every scene of its source ({len(new)} scene(s))"
        )
    emit("area", {"area": name, "scenes": len(todo), "already": len(scenes) - len(new),
                  "model": f"{pkg.name} v{pkg.version}"})  # fmt: skip
    key = (pkg.name, pkg.version)
    if todo and key not in predictors:
        from eodeploy.runtime.predictor import Predictor

        predictors[key] = Predictor(pkg, session_config={"session.intra_op.allow_spinning": "0"})
    for c in todo:
        emit("scene", {"area": name, "scene": c.scene_id, "datetime": c.datetime})
        try:
            obs_info = _process(settings, predictors[key], pkg, spec, geom, c)
        except OutsideSceneError:
            report.outside += 1
            continue
        except DatabaseUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad scene fails alone; it is tried again next run
            error = _describe(exc)
            if not isinstance(exc, (EodeployError, OSError)):
                log.error("%s, scene %s: unexpected error", name, c.scene_id, exc_info=exc)
            report.failures.append({"area": name, "scene": c.scene_id, "error": error})
            emit("scene_failed", {"area": name, "scene": c.scene_id, "error": error})
            continue

        def store(c: Any = c, info: Any = obs_info) -> Any:
            return _store(db, area_id, report.run_id, c, pkg, info, held)

        stored, alert = db.retrying(store)
        if stored is None:
            report.already += 1
            continue
        if stored.status == "cloudy":
            report.cloudy += 1
        else:
            report.stored += 1
        report.alerts += alert
        emit("stored", {"area": name, "observation": stored, "alert": alert})
        with db.session() as s:
            s.execute(update(Run).where(Run.id == report.run_id).values(heartbeat_at=utcnow()))
    with db.session() as s:
        s.execute(update(Area).where(Area.id == area_id).values(last_checked_at=utcnow()))


def _process(
    settings: Settings, predictor: Any, pkg: Any, area: dict[str, Any], geom: Any, c: Candidate
) -> dict[str, Any]:
    """Classify the scene around the area and measure it (no database work here)."""
    out = settings.monitor_dir / _safe(area["name"]) / f"{_safe(c.scene_id)}-v{pkg.version}"
    classes = [k.name for k in pkg.spec.classes]
    source, mosaic = c.source, None
    if Path(c.source).is_dir():  # a GEE export of patches: mosaicked, then mapped like a scene
        mosaic = settings.monitor_dir / ".mosaics" / _safe(area["name"]) / f"{_safe(c.scene_id)}.tif"
        source = str(mosaic_patches(Path(c.source), mosaic))
    try:
        stats = predict_scene(predictor, source, out, overwrite=True, aoi=geom, mmu_ha=area["mmu_ha"])
    except DataError as exc:
        if isinstance(exc, OutsideSceneError) or "every pixel is nodata or cloud" not in str(exc):
            raise
        return {"target_ha": 0.0, "observed_ha": 0.0, "observed_share": 0.0,
                "areas_ha": dict.fromkeys(classes, 0.0), "outputs": None}  # fmt: skip
    finally:
        if mosaic is not None:
            mosaic.unlink(missing_ok=True)
    m = measure_area(out / CLASSES_TIF, geom, area["area_ha"], classes, area["target_class"], area["mmu_ha"])
    # "drift": the area's clear pixels against the package's reference statistics (geo.drift).
    return {"target_ha": m.target_ha, "observed_ha": m.observed_ha, "observed_share": m.observed_share,
            "areas_ha": m.areas_ha, "outputs": str(out), "drift": stats.get("training_data_shift")}  # fmt: skip


def _pct(delta: float, base: float | None) -> float | None:
    return round(100.0 * delta / base, 2) if base else None


def _store(
    db: Database, area_id: int, run_id: int, c: Candidate, pkg: Any, info: dict[str, Any], held: Held
) -> tuple[Observation | None, int]:
    """Observation + changes + alert in one transaction, only while this run holds the area's
    lease. (None, 0) when a concurrent run stored the same (area, scene, version) first."""
    try:
        with db.session() as s:
            held.fence(s)
            area = s.get(Area, area_id)
            assert area is not None
            ok = info["observed_share"] >= area.min_observed
            obs = Observation(
                area_id=area_id, run_id=run_id, scene_id=c.scene_id, scene_datetime=c.datetime,
                model_name=pkg.name, model_version=pkg.version, status="ok" if ok else "cloudy",
                target_ha=info["target_ha"], observed_ha=info["observed_ha"],
                observed_share=info["observed_share"], areas_ha=info["areas_ha"], outputs=info["outputs"],
            )  # fmt: skip
            if ok:
                obs.estimate_ha = round(info["target_ha"] / info["observed_share"], 4)
                _changes(s, area, obs)
            s.add(obs)
            s.flush()
            record_observation_drift(s, area, obs, info.get("drift"))
            alert = make_alert(s, area, obs) if ok else None
            return obs, int(alert is not None)
    except LeaseLostError:
        raise
    except ConflictError:  # the unique key: another run stored this (area, scene, version) first
        return None, 0


def _changes(s: Session, area: Area, obs: Observation) -> None:
    """Change against the baseline and the previous observation, among comparable observations
    only: same area, same model version, enough of the area observed (status ok)."""
    same = select(Observation).where(
        Observation.area_id == area.id,
        Observation.model_version == obs.model_version,
        Observation.status == "ok",
    )
    prev = s.scalar(
        same.where(Observation.scene_datetime < obs.scene_datetime).order_by(
            Observation.scene_datetime.desc()
        )
    )
    if area.baseline_start and area.baseline_end:
        window = list(
            s.scalars(same.where(Observation.scene_datetime.between(area.baseline_start, area.baseline_end)))
        )
        if area.baseline_start <= obs.scene_datetime <= area.baseline_end:
            window.append(obs)
        values = [o.estimate_ha for o in window if o.estimate_ha is not None]
        baseline = sum(values) / len(values) if values else None
    else:
        first = s.scalar(
            same.where(Observation.scene_datetime < obs.scene_datetime).order_by(Observation.scene_datetime)
        )
        baseline = first.estimate_ha if first is not None else obs.estimate_ha
    est = obs.estimate_ha or 0.0
    if baseline is not None:
        obs.baseline_ha = round(baseline, 4)
        obs.change_baseline_ha = round(est - baseline, 4)
        obs.change_baseline_pct = _pct(est - baseline, baseline)
    if prev is not None and prev.estimate_ha is not None:
        obs.previous_id = prev.id
        obs.change_previous_ha = round(est - prev.estimate_ha, 4)
        obs.change_previous_pct = _pct(est - prev.estimate_ha, prev.estimate_ha)
