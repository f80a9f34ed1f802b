"""``eodeploy models``: list, show, validate and remove package versions."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from eodeploy.cli._common import RepoOpt, console, handle_errors, repo_path, settings
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


def _accuracy_command() -> None:
    from eodeploy.cli import feedback_cmd

    app.command("accuracy")(feedback_cmd.accuracy)


_accuracy_command()
