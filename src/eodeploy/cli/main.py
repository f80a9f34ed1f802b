"""The ``eodeploy`` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from eodeploy.cli import (
    data_cmd,
    doctor_cmd,
    feedback_cmd,
    health_cmd,
    models_cmd,
    monitor_cmd,
    optimize_cmd,
    predict_cmd,
    serve_cmd,
)
from eodeploy.cli._common import RepoOpt, console, err_console, handle_errors, progress, repo_path, settings

app = typer.Typer(
    help="Take a trained Earth-observation model from training to production.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(models_cmd.app, name="models")
app.add_typer(data_cmd.app, name="data")
app.add_typer(monitor_cmd.app, name="monitor")
app.command("serve")(serve_cmd.serve)
app.command("optimize")(optimize_cmd.optimize)
app.command("benchmark")(optimize_cmd.benchmark)
app.command("predict")(predict_cmd.predict)
app.command("doctor")(doctor_cmd.doctor)
app.command("health")(health_cmd.health)
app.command("retrain")(feedback_cmd.retrain)
app.add_typer(feedback_cmd.triggers_app, name="triggers")


@app.command()
@handle_errors
def evaluate(
    package: Annotated[
        str | None, typer.Argument(help="Package folder, or NAME[:VERSION] in the repository.")
    ] = None,
    data: Annotated[Path | None, typer.Argument(help="EuroSAT-layout folder of labelled patches.")] = None,
    split: Annotated[
        str,
        typer.Option(help="Which files to use: test, val, train (the split recorded in the package) or all."),
    ] = "test",
    repo: RepoOpt = None,
    plot: Annotated[
        Path | None, typer.Option(help="Where to write the confusion-matrix PNG (default: in the package).")
    ] = None,
    save: Annotated[bool, typer.Option(help="Store the results in the package.")] = True,
) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of a package on labelled data."""
    from eodeploy.evaluate.report import confusion_table, load_for_package, plot_confusion, report_table
    from eodeploy.evaluate.report import evaluate as run_eval
    from eodeploy.package import open_package
    from eodeploy.runtime import Predictor

    cfg = settings()
    pkg = open_package(package or cfg.default_model, repo_path(repo))
    predictor = Predictor(pkg)
    data_dir = data or cfg.data_dir
    with err_console.status(f"reading {data_dir}"):
        dataset = load_for_package(predictor, data_dir, split)
    report = run_eval(predictor, dataset)
    console.print(f"[bold]{pkg.name}[/] v{pkg.version} on {data_dir} ({split}: {report['n']} patches)")
    console.print(report_table(report))
    console.print(confusion_table(report))
    if save:
        from eodeploy.errors import MissingExtraError

        try:
            png: Path | None = plot_confusion(report, plot or pkg.path / f"confusion_{split}.png")
        except MissingExtraError as exc:
            if plot is not None:  # asked for by name: an error; else the scores are stored without it
                raise
            png = None
            err_console.print(
                f"no confusion-matrix plot: {exc}", markup=False, highlight=False, soft_wrap=True
            )
        evaluations = dict(pkg.properties.get("eodeploy:evaluations", {}))
        key = f"{Path(data_dir).name}:{split}"
        evaluations[key] = {k: report[k] for k in ("n", "accuracy", "macro_f1", "data_hash", "evaluated")}
        pkg.update_properties({"eodeploy:evaluations": evaluations})
        if png is not None:
            console.print(f"confusion matrix plot: {png}")
    elif plot:
        console.print(f"confusion matrix plot: {plot_confusion(report, plot)}")


@app.command()
@handle_errors
def train(
    data: Annotated[
        Path | None, typer.Argument(help="EuroSAT-layout folder (default: EODEPLOY_DATA_DIR).")
    ] = None,
    name: Annotated[str, typer.Option(help="Model name in the repository.")] = "eurosat-cnn",
    arch: Annotated[
        str,
        typer.Option(
            help="compact-cnn (a few hundred patches), resnet10 (thousands), resnet18 or spectral-cnn."
        ),
    ] = "compact-cnn",
    epochs: Annotated[int, typer.Option(help="Most epochs; early stopping may end sooner.")] = 80,
    patience: Annotated[int, typer.Option(help="Epochs without validation gain before stopping.")] = 40,
    seed: Annotated[int, typer.Option(help="Seed of the split and of training.")] = 0,
    cv: Annotated[
        int,
        typer.Option(
            help="Also train on this many other seeded splits and record mean/spread of test accuracy."
        ),
    ] = 0,
    threads: Annotated[int, typer.Option(help="PyTorch threads (0: all cores).")] = 0,
    batch_size: Annotated[int, typer.Option(help="Patches per training step.")] = 32,
    init_from: Annotated[
        str | None,
        typer.Option(
            help="Start from this package's network (NAME[:VERSION] or folder): its architecture, its "
            "filters on the bands both share, its classifier when the classes are the same."
        ),
    ] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate of the one-cycle schedule.")] = 3e-3,
    refit: Annotated[
        bool, typer.Option(help="After early stopping, retrain on train+val for the chosen epoch count.")
    ] = False,
    tta: Annotated[
        bool, typer.Option(help="Bake 8-view flip/rotation averaging into the model (8x inference cost).")
    ] = True,
    repo: RepoOpt = None,
) -> None:
    """Train a CNN with PyTorch on CPU and write it as a new package version."""
    from eodeploy.package import ModelRepository, open_package
    from eodeploy.train.pipeline import cross_validate, train_package
    from eodeploy.train.trainer import TrainConfig

    data_dir = data or settings().data_dir
    config = TrainConfig(
        arch=arch, epochs=epochs, patience=patience, seed=seed, threads=threads or None, refit=refit,
        tta=tta, batch_size=batch_size, lr=lr,
        init_from=str(open_package(init_from, repo_path(repo)).path) if init_from else None,
    )  # fmt: skip
    cv_result = None
    with progress() as bar:
        if cv:
            seeds = [seed + 1 + i for i in range(cv)]
            task = bar.add_task("cross-validation", total=cv, info="")
            cv_result = cross_validate(
                data_dir, config, seeds,
                on_result=lambda s, r: bar.update(task, advance=1, info=f"seed {s}: test acc {r['accuracy']:.3f}"),
            )  # fmt: skip
        task = bar.add_task("training", total=epochs, info="")

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            info = f"val acc {row['val_acc']:.3f} loss {row['val_loss']:.3f}"
            bar.update(task, completed=epoch, info=info)
            if not err_console.is_terminal:  # a log file or CI: the bar is not drawn, say each epoch
                elapsed = bar.tasks[task].elapsed or 0.0
                left = elapsed / epoch * (epochs - epoch)
                err_console.print(
                    f"epoch {epoch}/{epochs}: {info}, {elapsed:.0f} s elapsed, ~{left:.0f} s left"
                )

        pkg = train_package(
            data_dir, ModelRepository(repo_path(repo)), name, config, seed, on_epoch, cv_result
        )
        bar.update(task, completed=epochs)
    m = pkg.properties["eodeploy:metrics"]
    console.print(
        f"wrote [bold]{pkg.name}[/] v{pkg.version} at {pkg.path}: test accuracy {m['accuracy']:.2%}, "
        f"macro-F1 {m['macro_f1']:.3f} (n={m['n']})"
    )
    if cv_result:
        console.print(
            f"cross-validation over {len(cv_result['seeds'])} other splits: test accuracy "
            f"{cv_result['test_accuracy_mean']:.2%} ± {cv_result['test_accuracy_std']:.2%}"
        )


@app.command("import")
@handle_errors
def import_(
    path: Annotated[
        Path,
        typer.Argument(
            help="Model file or folder: .keras, .h5, SavedModel folder, .tflite, .onnx, TorchScript .pt, or a state dict with --module."
        ),
    ],
    name: Annotated[str, typer.Option(help="Model name in the repository.")],
    classes: Annotated[str | None, typer.Option(help="Comma-separated class names, in output order.")] = None,
    bands: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated input band names, in input order (default: EuroSAT-MS order for 13 bands)."
        ),
    ] = None,
    module: Annotated[
        str | None,
        typer.Option(help="For a PyTorch state dict: 'package.module:ClassName' building the network."),
    ] = None,
    module_kwargs: Annotated[str | None, typer.Option(help="JSON keyword arguments for --module.")] = None,
    scaling: Annotated[
        str | None,
        typer.Option(help="Preprocessing as MLM value_scaling JSON (one object, or one per band)."),
    ] = None,
    layout: Annotated[str | None, typer.Option(help="NCHW or NHWC (default: read from the model).")] = None,
    output: Annotated[
        str | None, typer.Option(help="'probabilities' or 'logits' (default: detected).")
    ] = None,
    derived_from: Annotated[
        str | None, typer.Option(help="NAME:VERSION of the package this one was derived from.")
    ] = None,
    repo: RepoOpt = None,
) -> None:
    """Import a Keras, TensorFlow, TFLite, ONNX or PyTorch model as a new package version."""
    from eodeploy.package import ModelRepository
    from eodeploy.package.importers import ImportOptions, import_model

    opts = ImportOptions(
        classes=classes.split(",") if classes else None,
        bands=bands.split(",") if bands else None,
        module=module,
        module_kwargs=json.loads(module_kwargs) if module_kwargs else {},
        value_scaling=_scaling(scaling),
        layout=layout,
        output_kind=output,
        derived_from=_ref(derived_from),
    )
    with err_console.status(f"converting {path}"):
        pkg = import_model(path, name, ModelRepository(repo_path(repo)), opts)
    conv = pkg.properties["eodeploy:conversion"]
    console.print(
        f"imported {conv['source_format']} model as [bold]{pkg.name}[/] v{pkg.version} ({pkg.spec.layout}); "
        f"max |ONNX - source| = {conv['max_abs_diff']:.2e} on {conv['checked_samples']} inputs"
    )


def _scaling(text: str | None) -> list[dict] | None:
    from eodeploy.errors import PackageSpecError

    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackageSpecError(f"--scaling is not valid JSON: {exc}") from exc
    return value if isinstance(value, list) else [value]


def _ref(text: str | None) -> tuple[str, int] | None:
    from eodeploy.errors import PackageSpecError

    if not text:
        return None
    name, _, version = text.partition(":")
    if not version.isdigit():
        raise PackageSpecError(f"--derived-from wants NAME:VERSION, got {text!r}")
    return name, int(version)


@app.command()
@handle_errors
def export(
    package: Annotated[str, typer.Argument(help="Package folder, or NAME[:VERSION] in the repository.")],
    format: Annotated[str, typer.Option("--format", help="triton or tflite")] = "triton",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Triton: model repository folder (default triton-models). TFLite: also copy the file here."
        ),
    ] = None,
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size.")] = 64,
    data: Annotated[
        Path | None, typer.Option(help="TFLite: check LiteRT against ONNX Runtime on this data's test split.")
    ] = None,
    repo: RepoOpt = None,
) -> None:
    """Export a package: a Triton model repository entry, or model.tflite for LiteRT/edge devices."""
    import shutil

    from eodeploy.errors import EodeployError
    from eodeploy.package import open_package
    from eodeploy.package.export import export_triton

    pkg = open_package(package, repo_path(repo))
    if format == "triton":
        folder = export_triton(pkg, out or Path("triton-models"), max_batch_size=max_batch_size)
        console.print(f"wrote Triton model {folder} (preprocessing in the graph: send raw band values)")
        return
    if format != "tflite":
        raise EodeployError(f"unknown export format {format!r}; supported: triton, tflite")
    from eodeploy.package.tflite import export_tflite

    data_dir = data if data is not None else (settings().data_dir if settings().data_dir.is_dir() else None)
    new = export_tflite(pkg, data_dir)
    record = new.properties["eodeploy:tflite"]
    console.print(
        f"wrote {new.name} v{new.version} ({new.path / record['file']}, {record['size'] / 1024:.0f} KiB): "
        f"v{pkg.version}'s ONNX model with its TFLite twin; LiteRT agrees with ONNX Runtime "
        f"on {record['agreement_with_onnx']:.1%} of {record['n']} patches ({record['checked_on']}), "
        f"max |diff| {record['max_abs_diff']:.2g}"
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy2(new.path / record["file"], out / f"{new.name}-{new.version}.tflite")
        console.print(f"copied to {out / f'{new.name}-{new.version}.tflite'}")


@app.command()
def info() -> None:
    """ONNX Runtime providers and the settings in force."""
    import onnxruntime as ort

    from eodeploy._secrets import mask_settings
    from eodeploy.runtime import choose_providers

    cfg = settings()
    console.print(f"onnxruntime {ort.__version__}; available providers: {ort.get_available_providers()}")
    console.print(f"providers eodeploy uses: {choose_providers()}")
    console.print(mask_settings(cfg.model_dump()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
