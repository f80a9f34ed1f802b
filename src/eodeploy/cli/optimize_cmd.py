"""``eodeploy optimize`` and ``eodeploy benchmark``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from eodeploy.cli._common import RepoOpt, console, handle_errors, progress, repo_path, settings


@handle_errors
def optimize(
    package: Annotated[str, typer.Argument(help="Package folder, or NAME[:VERSION] in the repository.")],
    int8: Annotated[
        bool, typer.Option("--int8", help="Static INT8 quantisation (QDQ) with calibration.")
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="Float16 weights and activations (for GPUs).")] = False,
    prune: Annotated[
        float | None,
        typer.Option("--prune", help="Structured pruning: share of filters to remove (0-1), then fine-tune."),
    ] = None,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="Labelled EuroSAT-layout data: calibration/fine-tuning from its training split, accuracy from its test split."
        ),
    ] = None,
    calibration_size: Annotated[int, typer.Option(help="INT8: calibration patches.")] = 128,
    repo: RepoOpt = None,
) -> None:
    """Write an optimised copy of a package as the model's next version, with its measured accuracy."""
    from eodeploy.errors import EodeployError
    from eodeploy.optimize import optimize_package
    from eodeploy.package import open_package

    chosen = [m for m, on in (("int8", int8), ("fp16", fp16), ("prune", prune is not None)) if on]
    if len(chosen) != 1:
        raise EodeployError("choose exactly one of --int8, --fp16, --prune RATE")
    pkg = open_package(package, repo_path(repo))
    data = (
        calibration
        if calibration is not None
        else (settings().data_dir if settings().data_dir.is_dir() else None)
    )
    with progress() as bar:
        task = bar.add_task(f"{chosen[0]} {pkg.name} v{pkg.version}", total=None, info="")

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            bar.update(task, total=20, completed=epoch, info=f"fine-tune loss {row['train_loss']:.3f}")

        new = optimize_package(pkg, chosen[0], data, prune_rate=prune or 0.5,
                               calibration_size=calibration_size, on_epoch=on_epoch)  # fmt: skip
    recipe = new.properties["eodeploy:optimization"]
    metrics = new.properties.get("eodeploy:metrics") or {}
    size = new.model_path.stat().st_size / pkg.model_path.stat().st_size
    msg = f"wrote {new.name} v{new.version} ({recipe['method']}): {size:.2f}x the size of v{pkg.version}"
    if metrics:
        msg += (f", test accuracy {metrics['accuracy']:.2%} (source {pkg.properties.get('eodeploy:metrics', {}).get('accuracy', float('nan')):.2%}),"
                f" agreement {recipe['agreement_with_source']:.1%}")  # fmt: skip
    console.print(msg)


@handle_errors
def benchmark(
    package: Annotated[str, typer.Argument(help="Package folder, or NAME[:VERSION] in the repository.")],
    backend: Annotated[
        list[str] | None,
        typer.Option(help="onnxruntime, openvino, litert (repeatable; default onnxruntime)."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Labelled data: accuracy on the package's test split.")
    ] = None,
    seconds: Annotated[float, typer.Option(help="Seconds per throughput measurement.")] = 2.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the figures as JSON.")] = None,
    repo: RepoOpt = None,
) -> None:
    """Size, batch-1 latency (median, p99), throughput at batch 1/8/32/128 and accuracy, per backend."""
    from eodeploy.optimize.calibration import evaluation_set
    from eodeploy.optimize.measure import BATCHES, measure
    from eodeploy.package import open_package
    from eodeploy.runtime.backends import check_backend
    from eodeploy.runtime.predictor import Predictor

    pkg = open_package(package, repo_path(repo))
    data = data if data is not None else (settings().data_dir if settings().data_dir.is_dir() else None)
    rows = []
    for name in backend or ["onnxruntime"]:
        p = Predictor(pkg, backend=check_backend(name))
        test = evaluation_set(p, data) if data is not None else None
        rows.append(measure(p, test, seconds=seconds))
    table = Table(title=f"{pkg.name} v{pkg.version}")
    cols = [
        "backend",
        "size KiB",
        "p50 ms",
        "p99 ms",
        *[f"img/s b{b}" for b in BATCHES],
        "accuracy",
        "macro-F1",
    ]
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(
            r["backend"], f"{r['size_kib']:.0f}", f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}",
            *[f"{r[f'throughput_b{b}']:.0f}" for b in BATCHES],
            f"{r['accuracy']:.2%}" if "accuracy" in r else "-", f"{r['macro_f1']:.3f}" if "macro_f1" in r else "-",
        )  # fmt: skip
    console.print(table)
    if json_out:
        json_out.write_text(
            json.dumps([{k: v for k, v in r.items() if k != "class_ids"} for r in rows], indent=2)
        )
