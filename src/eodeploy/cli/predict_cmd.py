"""``eodeploy predict``: scenes to class maps."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from eodeploy.cli._common import RepoOpt, console, err_console, handle_errors, repo_path


@handle_errors
def predict(
    package: Annotated[str, typer.Argument(help="Package folder, or NAME[:VERSION] in the repository.")],
    inputs: Annotated[
        list[Path],
        typer.Argument(help="GeoTIFF/COG, folder of band files, or STAC Item JSON (several: one run each)."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder (one sub-folder per input when several).")] = Path(
        "predictions"
    ),
    stride: Annotated[int | None, typer.Option(help="Window step in pixels (default: half a patch).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    polygons: Annotated[bool, typer.Option(help="Also write polygons.geojson.")] = True,
    mmu: Annotated[float, typer.Option(help="Minimum mapping unit for polygons, hectares.")] = 0.5,
    mask: Annotated[
        Path | None,
        typer.Option(
            help="Cloud mask (>0 = cloud) or SCL raster (name containing 'SCL'); default: an SCL/QA60/probability band in the scene."
        ),
    ] = None,
    bands: Annotated[
        str | None, typer.Option(help="Band names of a multi-band file, e.g. B01,B02,...")
    ] = None,
    offset: Annotated[
        float | None, typer.Option(help="Add to every band value (e.g. -1000 for baseline >= 04.00).")
    ] = None,
    units: Annotated[
        str | None,
        typer.Option(
            help="What the values are: reflectance (0-1), dn (reflectance x 10000) or rgb8 (8-bit true colour); default: detected."
        ),
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Dask scheduler address (tcp://HOST:PORT) for many inputs.")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Local Dask workers when several inputs and no --scheduler.")
    ] = 0,
    repo: RepoOpt = None,
) -> None:
    """Classify whole scenes: class-map and confidence COGs, polygons, per-class hectares, a STAC Item."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from eodeploy.geo import predict_scene
    from eodeploy.package import open_package

    pkg = open_package(package, repo_path(repo))
    options: dict[str, Any] = {"stride": stride, "overwrite": overwrite, "polygons": polygons, "mmu_ha": mmu, "mask": mask,
               "band_names": bands.split(",") if bands else None, "offset": offset, "units": units}  # fmt: skip
    if len(inputs) > 1 and (scheduler or workers):
        from eodeploy.geo.distributed import predict_scenes

        results = predict_scenes(pkg.path, list(inputs), out, scheduler=scheduler, n_workers=workers or 2,
                                 on_done=lambda s: err_console.print(f"done {s}"), **options)  # fmt: skip
        for name, stats in results.items():
            _report(name, stats)
        return
    from eodeploy.geo.patches import is_patch_folder, predict_patches

    for src in inputs:
        target = out / src.stem if len(inputs) > 1 else out
        if is_patch_folder(src, pkg.spec.height):
            from eodeploy.runtime.predictor import Predictor

            stats = predict_patches(
                Predictor(pkg),
                src,
                target,
                overwrite=overwrite,
                band_names=options["band_names"],
                units=units or "auto",
                offset=offset,
            )
            counts = ", ".join(f"{k} {v}" for k, v in stats["counts"].items() if v)
            console.print(f"{stats['input']['patches']} patches → {target}: {counts}")
            continue
        with Progress(
            TextColumn(f"[bold]{src.name}"), BarColumn(), TextColumn("{task.fields[km2]:.1f} km²"),
            TextColumn("{task.fields[rate]:.2f} km²/s"), TimeElapsedColumn(), TimeRemainingColumn(), console=err_console,
        ) as bar:  # fmt: skip
            task = bar.add_task("scene", total=1.0, km2=0.0, rate=0.0)
            state: dict[str, float] = {}

            def progress(
                frac: float, km2: float, task: TaskID = task, state: dict[str, float] = state
            ) -> None:
                import time

                state.setdefault("t0", time.perf_counter())
                done = km2 * frac
                dt = max(time.perf_counter() - state["t0"], 1e-6)
                bar.update(task, completed=frac, km2=done, rate=done / dt)

            stats = predict_scene(pkg, src, target, on_progress=progress, on_warning=_warn_shift, **options)
        _report(str(src), stats, target)


def _warn_shift(shift: dict) -> None:  # type: ignore[type-arg]
    bands = ", ".join(f"{b} {shift['bands'][b]['shift']:.1f}" for b in shift["bands_flagged"]) or "none"
    err_console.print(
        f"[bold yellow]warning:[/] this scene is unlike the model's training data: median band shift "
        f"{shift['median_shift']:.2f} reference IQRs (limit {shift['scene_limit']}); bands over "
        f"{shift['band_limit']}: {bands}"
    )
    for cause in shift["causes"]:
        err_console.print(f"  [yellow]•[/] {cause}")
    err_console.print("  the map is made anyway; details in stats.json (training_data_shift)")


def _report(src: str, stats: dict, target: Path | None = None) -> None:  # type: ignore[type-arg]
    table = Table(title=f"{src} → {target or ''}  ({stats['model']['name']} v{stats['model']['version']})")
    table.add_column("class")
    table.add_column("hectares", justify="right")
    table.add_column("share", justify="right")
    total = stats["total_ha"] or 1
    for name, ha in sorted(stats["areas_ha"].items(), key=lambda kv: -kv[1]):
        if ha:
            table.add_row(name, f"{ha:,.1f}", f"{ha / total:.1%}")
    for label, key in (("nodata", "nodata_ha"), ("cloud", "cloud_ha")):
        if stats[key]:
            table.add_row(f"[dim]{label}", f"{stats[key]:,.1f}", f"{stats[key] / total:.1%}")
    console.print(table)
    preview = target is None or (target / "preview.png").exists()  # absent without the plot extra
    console.print(f"{stats['windows']} windows in {stats['seconds']:.1f} s; outputs: classes.tif, confidence.tif, "
                  f"polygons.geojson, stats.json, item.json" + (", preview.png" if preview else ""))  # fmt: skip
