"""``eodeploy models``: list, show, validate and remove package versions; route, roll out and
list the history of routing decisions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from eodeploy.cli._common import RepoOpt, console, err_console, handle_errors, repo_path, settings
from eodeploy.package import ModelRepository

app = typer.Typer(help="List, inspect, validate and remove model versions.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_(repo: RepoOpt = None) -> None:
    """Every model and version in the repository."""
    r = ModelRepository(repo_path(repo))
    table = Table(title=f"models in {r.root}")
    for col in ("name", "version", "bands", "classes", "framework", "test accuracy", "size"):
        table.add_column(col)
    for pkg in r:
        m = pkg.properties.get("eodeploy:metrics") or {}
        table.add_row(
            pkg.name, str(pkg.version), str(len(pkg.spec.bands)), str(len(pkg.spec.classes)),
            pkg.spec.framework, f"{m['accuracy']:.2%}" if "accuracy" in m else "-",
            f"{pkg.model_path.stat().st_size / 1024:.0f} KiB",
        )  # fmt: skip
    console.print(table)


@app.command()
@handle_errors
def show(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION] or a package folder.")],
    repo: RepoOpt = None,
    raw: bool = False,
) -> None:
    """The package's item.json (summary, or --raw for all of it)."""
    from eodeploy.package import open_package

    pkg = open_package(ref, ModelRepository(repo_path(repo)).root)
    if raw:
        console.print_json(json.dumps(pkg.item))
        return
    s = pkg.spec
    console.print(f"[bold]{pkg.name}[/] v{pkg.version}  ({pkg.path})")
    console.print(f"architecture {s.architecture}, framework {s.framework}, layout {s.layout}")
    console.print(f"input {s.input_name}: bands {', '.join(s.bands)}; {s.height}x{s.width}")
    console.print(f"output {s.output_name} ({s.output_kind}): {', '.join(s.class_names)}")
    console.print(f"sha256 {pkg.recorded_sha256}")
    for key in (
        "eodeploy:metrics",
        "eodeploy:cross_validation",
        "eodeploy:conversion",
        "eodeploy:derived_from",
    ):
        if pkg.properties.get(key):
            value = {
                k: v for k, v in pkg.properties[key].items() if k not in ("per_class", "confusion_matrix")
            }
            console.print(f"{key.split(':')[1]}: {value}")


@app.command()
@handle_errors
def validate(
    ref: Annotated[str, typer.Argument(help="NAME[:VERSION] or a package folder.")], repo: RepoOpt = None
) -> None:
    """Check item.json against the STAC MLM schema and model.onnx against its sha256."""
    from eodeploy.package import open_package, validate_item

    pkg = open_package(ref, ModelRepository(repo_path(repo)).root)
    validate_item(pkg.item)
    pkg.verify()
    console.print(
        f"{pkg.name} v{pkg.version}: item.json valid (STAC MLM v1.5.2), model.onnx matches its sha256"
    )


@app.command()
@handle_errors
def fuse(
    ref: Annotated[
        str | None, typer.Argument(help="NAME[:VERSION]; every version of every model when left out.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the graphs (default: EODEPLOY_FUSED_DIR).")
    ] = None,
    repo: RepoOpt = None,
) -> None:
    """Build each package's browser model (its preprocessing, the network and the softmax in one
    ONNX graph, checked against the Python path) into a folder, so that a server without the
    ``convert`` extra (the server image) can hand it to the dashboard: set EODEPLOY_FUSED_DIR there."""
    from eodeploy.package import open_package
    from eodeploy.package.fused import write_fused

    directory = out or settings().fused_dir
    if directory is None:
        raise typer.BadParameter("give --out FOLDER or set EODEPLOY_FUSED_DIR", param_hint="--out")
    r = ModelRepository(repo_path(repo))
    packages = [open_package(ref, r.root)] if ref else list(r)
    for pkg in packages:
        path = write_fused(pkg, directory)
        console.print(f"{pkg.name} v{pkg.version}: {path} ({path.stat().st_size / 1024:.0f} KiB)")


@app.command()
@handle_errors
def remove(name: str, version: int, repo: RepoOpt = None) -> None:
    """Remove one version (atomically: readers never see it half-deleted)."""
    ModelRepository(repo_path(repo)).remove(name, version)
    console.print(f"removed {name} v{version}")


@app.command()
@handle_errors
def route(
    name: Annotated[str, typer.Argument(help="Model name.")],
    stable: Annotated[int | None, typer.Option(help="Version labelled 'stable'.")] = None,
    canary: Annotated[int | None, typer.Option(help="Version labelled 'canary'.")] = None,
    percent: Annotated[
        float | None, typer.Option(help="Share (0-100) of unaddressed traffic sent to the canary.")
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="Version policy: 'latest:N', 'all' or 'specific:1,3'.")
    ] = None,
    clear: Annotated[bool, typer.Option(help="Remove labels and the canary split.")] = False,
    repo: RepoOpt = None,
) -> None:
    """Set a model's serving labels, canary split and version policy (serving.json; hot-reloaded)."""
    from eodeploy.errors import ModelNotFoundError
    from eodeploy.serve.policy import ServingConfig, VersionPolicy

    r = ModelRepository(repo_path(repo))
    versions = r.versions(name)
    if not versions:
        raise ModelNotFoundError(f"no model named {name!r} in {r.root}")
    cfg = ServingConfig.read(r.root / name, VersionPolicy.parse(settings().version_policy))
    before = ServingConfig(cfg.policy, dict(cfg.labels), cfg.canary_percent)
    if clear:
        cfg.labels, cfg.canary_percent = {}, 0.0
    for label, v in (("stable", stable), ("canary", canary)):
        if v is not None:
            if v not in versions:
                raise ModelNotFoundError(f"{name!r} has no version {v} (versions: {versions})")
            cfg.labels[label] = v
    if policy is not None:
        cfg.policy = VersionPolicy.parse(policy)
    if percent is not None:
        cfg.canary_percent = percent
    cfg = ServingConfig.from_dict(cfg.to_dict(), cfg.policy, f"{name}/serving.json")  # validate
    cfg.write(r.root / name)
    console.print_json(json.dumps(cfg.to_dict()))
    _record_route(name, before, cfg)


def _record_route(name: str, before: Any, after: Any) -> None:
    """Hand-made routing changes go in the model's history beside the controller's decisions; the
    route itself stands when the database is away (a warning says it was not recorded)."""
    from eodeploy.errors import DatabaseUnavailableError
    from eodeploy.mlops.rollout import record_route
    from eodeploy.monitor.db import Database

    db = Database.from_settings(settings())
    try:
        record_route(db, name, before, after, actor="user (cli)")
    except DatabaseUnavailableError as exc:
        err_console.print(f"[yellow]warning:[/] not recorded in the history of {name} ({exc})")
    finally:
        db.dispose()


@app.command()
@handle_errors
def rollout(
    name: Annotated[str, typer.Argument(help="Model name.")],
    candidate: Annotated[int | None, typer.Option(help="Version to roll out against the stable one.")] = None,
    steps: Annotated[
        str, typer.Option(help="Canary shares (percent) in order, ending at 100.")
    ] = "10,25,50,100",
    window_s: Annotated[float, typer.Option("--window-s", help="Seconds per evaluation window.")] = 30.0,
    window_requests: Annotated[
        int, typer.Option(help="Close a window early after this many candidate requests (0: by time).")
    ] = 0,
    min_requests: Annotated[
        int, typer.Option(help="Fewer candidate requests in a window: inconclusive (holds the share).")
    ] = 20,
    max_failures: Annotated[int, typer.Option(help="Failed windows before rolling back.")] = 3,
    max_inconclusive: Annotated[
        int, typer.Option(help="Inconclusive windows in a row before rolling back (0: hold for ever).")
    ] = 20,
    server: Annotated[
        list[str] | None,
        typer.Option("--server", help="Server URL to read /metrics from (repeatable; summed)."),
    ] = None,
    gate: Annotated[bool, typer.Option(help="Hold before 100 % until --approve.")] = False,
    require_agreement: Annotated[
        bool, typer.Option(help="Hold windows with too few mirrored patches to compare with the champion.")
    ] = True,
    max_accuracy_drop: Annotated[
        float,
        typer.Option(
            help="Refuse a candidate whose recorded test accuracy is this many points below the champion's."
        ),
    ] = 2.0,
    approve: Annotated[bool, typer.Option(help="Approve the running rollout's gate.")] = False,
    abort: Annotated[bool, typer.Option(help="Roll the running rollout back now.")] = False,
    repo: RepoOpt = None,
) -> None:
    """Canary rollout: step the candidate's share, judge each window on the servers' metrics, then
    promote it or roll back. Exit 0 when promoted, 1 when rolled back or aborted."""
    from eodeploy.errors import InvalidInputError
    from eodeploy.mlops.analysis import Thresholds, http_source
    from eodeploy.mlops.rollout import Controller, RolloutOptions, ask, parse_steps
    from eodeploy.monitor.db import Database
    from eodeploy.serve.policy import VersionPolicy

    cfg = settings()
    if sum((candidate is not None, approve, abort)) != 1:
        raise InvalidInputError("give exactly one of --candidate V, --approve or --abort")
    db = Database.from_settings(cfg)
    try:
        if approve or abort:
            rid = ask(db, name, "approve" if approve else "abort", "user (cli)")
            console.print(
                f"{'approved the gate of' if approve else 'asked to abort'} rollout {rid} of {name}"
            )
            return
        assert candidate is not None
        options = RolloutOptions(
            candidate, parse_steps(steps), window_s, window_requests, max_failures, gate,
            Thresholds(min_requests=min_requests, min_labels=cfg.feedback_min_labels,
                       require_agreement=require_agreement),
            max_accuracy_drop=max_accuracy_drop / 100.0, max_inconclusive=max_inconclusive,
        )  # fmt: skip
        urls = server or [f"http://{cfg.host}:{cfg.port}"]
        controller = Controller(
            repo_path(repo), name, options, http_source(urls), db,
            VersionPolicy.parse(cfg.version_policy), on_event=_RolloutView(name).event,
        )  # fmt: skip
        state = controller.run()
    finally:
        db.dispose()
    console.print(f"[bold]{name}[/]: {state.replace('_', ' ')}")
    if state != "promoted":
        raise typer.Exit(1)


_COLOURS = {"pass": "green", "fail": "red", "inconclusive": "yellow"}


class _RolloutView:
    """Rich log lines for decisions, and a status line for the window under way."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = console.status("")

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "tick":
            self.status.update(
                f"{self.name}: {data['share']:g} % - window {data['elapsed']:.0f}/{data['window_s']:g} s, "
                f"{data['candidate_requests']} candidate requests, {data['failures']} failed windows"
            )
            self.status.start()
        elif kind == "decision":
            self.status.stop()
            console.print(_decision_line(data), highlight=False)
        elif kind == "warning":
            self.status.stop()
            err_console.print(f"[yellow]warning:[/] {data['message']}", highlight=False)


def _decision_line(d: dict[str, Any]) -> str:
    verdict = d.get("verdict")
    tag = f"[{_COLOURS.get(verdict or '', 'cyan')}]{verdict or d['action']}[/]"
    share = ""
    if d.get("from_share") is not None or d.get("to_share") is not None:
        a, b = d.get("from_share"), d.get("to_share")
        share = (
            f" {a:g} %"
            if a == b
            else f" {'-' if a is None else f'{a:g}'} → {'-' if b is None else f'{b:g}'} %"
        )
    return f"{d['at'][11:19]} {tag}{share} {d['reason']}"


@app.command()
@handle_errors
def history(
    name: Annotated[str, typer.Argument(help="Model name.")],
    limit: Annotated[int, typer.Option(min=1, max=10000, help="Newest decisions shown.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """Every routing decision about a model: rollouts (each window, step, gate, promotion, rollback)
    and label changes by hand, with who, when, why and the figures."""
    from eodeploy.mlops.history import decision_dict
    from eodeploy.mlops.history import history as rows_of
    from eodeploy.monitor.db import Database

    db = Database.from_settings(settings())
    try:
        with db.session() as s:
            rows = [decision_dict(r) for r in rows_of(s, name, limit)]
    finally:
        db.dispose()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title=f"history of {name}")
    for col in ("time (UTC)", "actor", "action", "champion", "candidate", "share %", "reason"):
        table.add_column(col, overflow="fold")
    for d in rows:
        a, b = d["from_share"], d["to_share"]
        share = (
            ""
            if a is None and b is None
            else f"{b:g}"
            if a == b
            else f"{'-' if a is None else f'{a:g}'} → {'-' if b is None else f'{b:g}'}"
        )
        action = d["action"] + (
            f" [{_COLOURS.get(d['verdict'], 'white')}]{d['verdict']}[/]" if d["verdict"] else ""
        )
        table.add_row(
            d["at"][:19].replace("T", " "), d["actor"], action,
            f"v{d['champion']}" if d["champion"] is not None else "",
            f"v{d['candidate']}" if d["candidate"] is not None else "", share, d["reason"],
        )  # fmt: skip
    if not rows:
        console.print(f"no decisions recorded for {name}")
        return
    console.print(table)


def _accuracy_command() -> None:
    from eodeploy.cli import feedback_cmd

    app.command("accuracy")(feedback_cmd.accuracy)


_accuracy_command()
