"""``eodeploy monitor``: areas of interest, runs, schedules, time series and alerts."""

from __future__ import annotations

import json
from datetime import datetime, time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from eodeploy.cli._common import RepoOpt, console, err_console, handle_errors, progress, settings
from eodeploy.errors import DataError

app = typer.Typer(
    help="Watch areas of interest scene after scene: change against history, alerts, a results database.",
    no_args_is_help=True,
)
DbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Database URL (default: EODEPLOY_DATABASE_URL or sqlite:///eodeploy.db)."),
]


def _settings(db: str | None, repo: Path | None = None) -> Any:
    cfg = settings()
    updates: dict[str, Any] = {}
    if db:
        updates["database_url"] = db
    if repo is not None:
        updates["model_repo"] = repo
    return cfg.model_copy(update=updates) if updates else cfg


def _database(cfg: Any) -> Any:
    from eodeploy.monitor.db import Database

    return Database.from_settings(cfg)


def _date(text: str | None) -> datetime | None:
    """YYYY-MM-DD (the end of that day) or an ISO time, as naive UTC."""
    if text is None:
        return None
    from eodeploy.monitor.areas import naive_utc

    try:
        if len(text) == 10:
            return datetime.combine(datetime.fromisoformat(text).date(), time.max)
        return naive_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise DataError(f"{text!r} is not a date; use YYYY-MM-DD or an ISO time") from None


def _invalid(exc: Any) -> DataError:
    """A pydantic ValidationError as one line: each field and what is wrong with it."""
    return DataError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


@app.command()
@handle_errors
def add(
    name: Annotated[str, typer.Argument(help="Name of the area (letters, digits, _ . -).")],
    geometry: Annotated[Path, typer.Option("--geometry", "-g", help="GeoJSON file with the polygon(s).")],
    target_class: Annotated[str, typer.Option("--class", help="The class to watch, e.g. Forest.")],
    folder: Annotated[Path | None, typer.Option(help="Imagery: a watched folder of scenes.")] = None,
    pattern: Annotated[str, typer.Option(help="File pattern in the watched folder.")] = "*.tif",
    files: Annotated[
        list[Path] | None, typer.Option("--file", help="Imagery: a fixed scene file (repeat).")
    ] = None,
    stac: Annotated[str | None, typer.Option(help="Imagery: a STAC API URL to search.")] = None,
    collection: Annotated[str, typer.Option(help="STAC collection.")] = "sentinel-2-l2a",
    max_cloud: Annotated[float, typer.Option(help="STAC: largest scene cloud cover (%).")] = 30.0,
    days: Annotated[int, typer.Option(help="STAC: how many days back each run searches.")] = 10,
    crs: Annotated[str | None, typer.Option(help="CRS of the GeoJSON coordinates (default WGS84).")] = None,
    model: Annotated[
        str, typer.Option(help="Model NAME[:VERSION|:LABEL] (default: latest).")
    ] = "eurosat-cnn",
    threshold_ha: Annotated[
        float | None, typer.Option(help="Alert when the change reaches this many ha.")
    ] = None,
    threshold_pct: Annotated[float | None, typer.Option(help="Alert when the change reaches this %.")] = None,
    alert_on: Annotated[str, typer.Option(help="loss, gain or any.")] = "any",
    min_observed: Annotated[float, typer.Option(help="Least cloud-free share of the area (0-1).")] = 0.7,
    mmu: Annotated[float, typer.Option(help="Minimum mapping unit (ha) for the target class.")] = 0.5,
    webhook: Annotated[str | None, typer.Option(help="Alert webhook URL (JSON POST).")] = None,
    email: Annotated[list[str] | None, typer.Option(help="Alert e-mail address (repeat).")] = None,
    every: Annotated[float, typer.Option(help="Hours between checks of this area.")] = 24.0,
    baseline: Annotated[
        str | None, typer.Option(help="Baseline period START/END (dates); default: first valid observation.")
    ] = None,
    replace: Annotated[
        bool, typer.Option(help="Replace an area of that name (deletes its history).")
    ] = False,
    db: DbOpt = None,
    repo: RepoOpt = None,
) -> None:
    """Add an area of interest (an identical one again changes nothing)."""
    from pydantic import ValidationError

    from eodeploy.monitor.areas import AreaSpec, add_area
    from eodeploy.package import ModelRepository

    chosen = [x for x in (folder, files, stac) if x]
    if len(chosen) != 1:
        raise DataError("give exactly one imagery source: --folder, --file (repeatable) or --stac")
    if folder:
        source: dict[str, Any] = {"type": "folder", "path": str(folder.resolve()), "pattern": pattern}
    elif files:
        source = {"type": "files", "paths": [str(f.resolve()) for f in files]}
    else:
        source = {
            "type": "stac",
            "url": stac,
            "collections": [collection],
            "max_cloud": max_cloud,
            "days": days,
        }
    start = end = None
    if baseline:
        if "/" not in baseline:
            raise DataError("--baseline takes START/END, e.g. 2024-01-01/2024-03-31")
        a, b = baseline.split("/", 1)
        start, end = _date(a), _date(b)
        start = start.replace(hour=0, minute=0, second=0, microsecond=0) if start else None
    from eodeploy.monitor.areas import read_geojson

    geom_json = read_geojson(geometry)
    mname, _, mref = model.partition(":")
    try:
        spec = AreaSpec(
            name=name, geometry=geom_json, crs=crs, model=mname, model_version=mref or "latest",
            target_class=target_class, threshold_ha=threshold_ha, threshold_pct=threshold_pct,
            alert_on=alert_on, min_observed=min_observed, mmu_ha=mmu, source=source, baseline_start=start,
            baseline_end=end, webhook_url=webhook, emails=email or [], interval_hours=every,
        )  # fmt: skip
    except ValidationError as exc:
        raise _invalid(exc) from None
    cfg = _settings(db, repo)
    with _database(cfg).session() as s:
        area, notes, created = add_area(s, ModelRepository(cfg.model_repo), spec, replace=replace)
        area_ha = area.area_ha
    for n in notes:
        err_console.print(f"[yellow]note:[/] {n}")
    verb = "added" if created else "kept"
    console.print(f"{verb} area [bold]{name}[/]: {area_ha:.2f} ha, watching {target_class} with {model}")


@app.command("list")
@handle_errors
def list_(db: DbOpt = None) -> None:
    """Every area of interest."""
    from sqlalchemy import select

    from eodeploy.monitor.db import Area

    with _database(_settings(db)).session() as s:
        areas = list(s.scalars(select(Area).order_by(Area.name)))
        table = Table(title="areas of interest")
        for col in ("name", "ha", "model", "class", "thresholds", "source", "active", "last checked"):
            table.add_column(col)
        for a in areas:
            th = " / ".join(x for x in (f"{a.threshold_ha} ha" if a.threshold_ha is not None else "",
                                        f"{a.threshold_pct} %" if a.threshold_pct is not None else "") if x)  # fmt: skip
            src = a.source.get("path") or a.source.get("url") or f"{len(a.source.get('paths', []))} files"
            table.add_row(a.name, f"{a.area_ha:.1f}", f"{a.model}:{a.model_version}", a.target_class, th or "-",
                          f"{a.source['type']}: {src}", "yes" if a.active else "no",
                          f"{a.last_checked_at:%Y-%m-%d %H:%M}" if a.last_checked_at else "never")  # fmt: skip
    console.print(table)


@app.command()
@handle_errors
def update(
    name: str,
    threshold_ha: Annotated[float | None, typer.Option()] = None,
    threshold_pct: Annotated[float | None, typer.Option()] = None,
    alert_on: Annotated[str | None, typer.Option(help="loss, gain or any.")] = None,
    min_observed: Annotated[float | None, typer.Option()] = None,
    webhook: Annotated[str | None, typer.Option()] = None,
    email: Annotated[list[str] | None, typer.Option()] = None,
    every: Annotated[float | None, typer.Option(help="Hours between checks.")] = None,
    active: Annotated[bool | None, typer.Option("--active/--inactive")] = None,
    db: DbOpt = None,
) -> None:
    """Change an area's thresholds, alerts, schedule or state (its history stays comparable)."""
    from pydantic import ValidationError

    from eodeploy.monitor.areas import AreaUpdate, update_area

    given = {"threshold_ha": threshold_ha, "threshold_pct": threshold_pct, "alert_on": alert_on,
             "min_observed": min_observed, "webhook_url": webhook, "emails": email, "interval_hours": every,
             "active": active}  # fmt: skip
    try:
        upd = AreaUpdate(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise _invalid(exc) from None
    with _database(_settings(db)).session() as s:
        update_area(s, name, upd)
    console.print(f"updated area [bold]{name}[/]")


@app.command()
@handle_errors
def remove(
    name: str,
    purge: Annotated[bool, typer.Option(help="Also delete its observations and alerts.")] = False,
    db: DbOpt = None,
) -> None:
    """Remove an area (one with history only with --purge; or use 'update --inactive')."""
    from eodeploy.monitor.areas import remove_area

    with _database(_settings(db)).session() as s:
        n = remove_area(s, name, purge)
    console.print(f"removed area [bold]{name}[/] ({n} observation(s) deleted)")


def _run_once(cfg: Any, as_of: datetime | None, area: str | None, force: bool, trigger: str) -> Any:
    from eodeploy.monitor.run import run_monitoring

    with progress() as bar:
        tasks: dict[str, Any] = {}

        def on_event(kind: str, info: dict[str, Any]) -> None:
            if kind == "area":
                tasks[info["area"]] = bar.add_task(
                    f"{info['area']} ({info['model']})", total=max(info["scenes"], 1) if info["scenes"] else 1,
                    info=f"{info['already']} already stored",
                )  # fmt: skip
                if not info["scenes"]:
                    bar.update(tasks[info["area"]], completed=1)
            elif kind == "scene":
                bar.update(tasks[info["area"]], info=f"{info['scene']}")
            elif kind in ("stored", "scene_failed"):
                bar.advance(tasks[info["area"]])
                if kind == "scene_failed":
                    err_console.print(f"[red]failed:[/] {info['area']} / {info['scene']}: {info['error']}")
            elif kind == "area_failed":
                err_console.print(f"[red]failed:[/] {info['area']}: {info['error']}")

        report = run_monitoring(_database(cfg), cfg, as_of=as_of, area=area, force=force, trigger=trigger,
                                on_event=on_event)  # fmt: skip
    return report


def _print_report(report: Any) -> None:
    d = report.deliveries
    console.print(
        f"run {report.run_id} (scenes up to {report.as_of:%Y-%m-%d %H:%M} UTC): "
        f"{len(report.areas)} area(s); stored {report.stored} observation(s), {report.cloudy} too cloudy, "
        f"{report.already} already stored; {report.alerts} alert(s); "
        f"deliveries sent {d.get('sent', 0)}, failed {d.get('failed', 0)}"
    )
    if report.not_due:
        console.print(f"not due yet: {', '.join(report.not_due)} (use --all to check them now)")
    for w in report.warnings:
        err_console.print(f"[yellow]warning:[/] {w}")


@app.command()
@handle_errors
def run(
    date: Annotated[
        str | None, typer.Option(help="Take scenes acquired up to this date (YYYY-MM-DD).")
    ] = None,
    area: Annotated[str | None, typer.Option("--area", "--aoi", help="Only this area (due or not).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every active area, due or not.")] = False,
    db: DbOpt = None,
    repo: RepoOpt = None,
) -> None:
    """Process every due area once: new scenes, change, alerts. Safe to rerun or resume."""
    cfg = _settings(db, repo)
    report = _run_once(cfg, _date(date), area, all_, "cli")
    _print_report(report)
    if report.failures:
        raise typer.Exit(1)


@app.command()
@handle_errors
def schedule(
    cron: Annotated[
        str, typer.Option(help="Cron expression (minute hour day month weekday), UTC.")
    ] = "0 6 * * *",
    max_runs: Annotated[int, typer.Option(help="Stop after this many runs (0: never).")] = 0,
    run_now: Annotated[bool, typer.Option(help="Also run once at start, then on the schedule.")] = False,
    db: DbOpt = None,
    repo: RepoOpt = None,
) -> None:
    """Run 'monitor run' on a cron schedule (APScheduler) until stopped."""
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger

    cfg = _settings(db, repo)
    database = _database(cfg)
    database.ensure()  # fail now, not at the first tick, when the database is unreachable
    try:
        trigger = CronTrigger.from_crontab(cron, timezone="UTC")
    except ValueError as exc:
        raise DataError(
            f"--cron {cron!r} is not a cron expression ({exc}); e.g. '0 6 * * *' = 06:00 UTC daily"
        ) from None
    sched = BlockingScheduler(timezone="UTC")
    done = {"n": 0}

    def job() -> None:
        from eodeploy.errors import EodeployError
        from eodeploy.monitor.run import run_monitoring

        try:
            _print_report(run_monitoring(database, cfg, trigger="schedule"))
        except EodeployError as exc:  # logged; the next tick tries again
            err_console.print(f"[red]run failed:[/] {exc}")
        done["n"] += 1
        if max_runs and done["n"] >= max_runs:
            sched.shutdown(wait=False)

    first = {"next_run_time": datetime.now(trigger.timezone)} if run_now else {}
    sched.add_job(job, trigger, max_instances=1, coalesce=True, misfire_grace_time=3600, **first)
    console.print(
        f"monitoring on '{cron}' (UTC); next run {trigger.get_next_fire_time(None, datetime.now(trigger.timezone))}"
    )
    try:
        sched.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        database.dispose()


def _drift_cell(d: dict[str, Any] | None) -> str:
    """The observation's median band shift against the reference, and which check flagged it."""
    if d is None or d["median_shift"] is None:
        return "-"
    why = [k for k in ("reference", "baseline") if d[k].get("flagged")]
    return f"{d['median_shift']:.2f}" + (f" ! {', '.join(why)}" if why else "")


@app.command()
@handle_errors
def series(
    name: str,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG chart of the time series.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    db: DbOpt = None,
) -> None:
    """The target class's time series for one area."""
    from eodeploy.monitor.report import plot_series, time_series

    database = _database(_settings(db))
    try:
        with database.session() as s:
            data = time_series(s, name)
    finally:
        database.dispose()  # no pooled connection left for the garbage collector to find open
    if plot:
        err_console.print(f"chart: {plot_series(data, plot)}")
    if as_json:
        console.print_json(json.dumps(data))
        return
    obs = data["observations"]
    versions = {o["model_version"] for o in obs}
    table = Table(title=f"{data['area']}: {data['target_class']} in {data['area_ha']:.1f} ha")
    cols = ["date", "status", "seen", "ha", "Δ baseline", "Δ previous", "alert", "drift"]
    if len(versions) > 1:
        cols.insert(1, "model")
    for col in cols:
        table.add_column(col, justify="left" if col in ("date", "status", "model") else "right",
                         no_wrap=col == "date", min_width=10 if col == "date" else None)  # fmt: skip

    def change(ha: float | None, p: float | None) -> str:
        return "-" if ha is None else f"{ha:+.2f}" + (f" ({p:+.0f}%)" if p is not None else "")

    for o in obs:
        row = [o["datetime"][:10], o["status"], f"{o['observed_share']:.0%}",
               f"{o['estimate_ha']:.2f}" if o["estimate_ha"] is not None else "-",
               change(o["change_baseline_ha"], o["change_baseline_pct"]),
               change(o["change_previous_ha"], o["change_previous_pct"]), str(o["alert_id"] or ""),
               _drift_cell(o.get("drift"))]  # fmt: skip
        if len(versions) > 1:
            row.insert(1, f"v{o['model_version']}")
        table.add_row(*row)
    console.print(table)


@app.command()
@handle_errors
def alerts(
    area: Annotated[str | None, typer.Option(help="Only this area.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Acknowledged ones too.")] = False,
    db: DbOpt = None,
) -> None:
    """Alerts not yet acknowledged (or --all), with their delivery status."""
    from eodeploy.monitor.report import list_alerts

    with _database(_settings(db)).session() as s:
        rows = list_alerts(s, area, None if all_ else False)
    table = Table(title="alerts")
    for col in ("id", "area", "created", "message", "deliveries", "ack"):
        table.add_column(col)
    for a in rows:
        dl = ", ".join(f"{d['channel']} {d['status']} ({d['attempts']})" for d in a["deliveries"]) or "-"
        table.add_row(str(a["id"]), a["area"], a["created_at"][:16], a["message"], dl,
                      a["acknowledged_at"][:16] if a["acknowledged_at"] else "")  # fmt: skip
    console.print(table)


@app.command()
@handle_errors
def ack(
    alert_id: int,
    by: Annotated[str | None, typer.Option(help="Who acknowledges it.")] = None,
    db: DbOpt = None,
) -> None:
    """Acknowledge an alert."""
    from eodeploy.monitor.alerts import acknowledge

    with _database(_settings(db)).session() as s:
        acknowledge(s, alert_id, by)
    console.print(f"alert {alert_id} acknowledged")


@app.command()
@handle_errors
def runs(limit: int = 10, db: DbOpt = None) -> None:
    """The latest runs and how they ended."""
    from eodeploy.monitor.report import list_runs

    with _database(_settings(db)).session() as s:
        rows = list_runs(s, limit)
    table = Table(title="monitoring runs")
    for col in ("id", "started", "trigger", "status", "stored", "cloudy", "alerts", "failures"):
        table.add_column(col)
    for r in rows:
        sm = r["summary"]
        table.add_row(str(r["id"]), r["started_at"][:19], r["trigger"], r["status"], str(sm.get("stored", "")),
                      str(sm.get("cloudy", "")), str(sm.get("alerts", "")), str(len(sm.get("failures", []))))  # fmt: skip
    console.print(table)
