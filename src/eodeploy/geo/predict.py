"""``predict_scene``: one scene in, a folder of georeferenced outputs out (atomically)."""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from eodeploy.errors import DataError, MissingExtraError
from eodeploy.geo.infer import classify_scene
from eodeploy.geo.outputs import (
    CLASSES_TIF,
    CONFIDENCE_TIF,
    TRUECOLOR_TIF,
    GeoTiffSink,
    footprint,
    scene_times,
    to_cog,
    write_polygons,
    write_preview,
    write_stac_item,
)
from eodeploy.geo.sources import open_scene
from eodeploy.geo.tiling import default_stride
from eodeploy.geo.truecolor import rgb_scene, write_truecolor
from eodeploy.package.repository import ModelPackage
from eodeploy.runtime.predictor import Predictor


class OutputExistsError(DataError):
    """The output folder exists and --overwrite was not given."""


class OutsideSceneError(DataError):
    """The area of interest does not overlap the scene."""


def geometry_bounds(geometry: Any, crs: Any) -> tuple[float, float, float, float]:
    """Bounds in ``crs`` of a WGS84 shapely geometry (densified, so curved edges are covered)."""
    from pyproj import Transformer

    t = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x0, y0, x1, y1 = geometry.bounds
    bounds: tuple[float, float, float, float] = t.transform_bounds(x0, y0, x1, y1, densify_pts=21)
    return bounds


def predict_scene(
    package: ModelPackage | Predictor,
    source: str | Path | list[str | Path],
    out: str | Path,
    *,
    stride: int | None = None,
    overwrite: bool = False,
    polygons: bool = True,
    mmu_ha: float = 0.5,
    mask: str | Path | None = None,
    band_names: list[str] | None = None,
    offset: float | None = None,
    on_progress: Callable[[float, float], None] | None = None,
    intra_op_threads: int | None = None,
    aoi: Any = None,
    units: str | None = None,
    on_warning: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Classify ``source`` (only around ``aoi``, a shapely geometry in WGS84, when given;
    ``on_progress(fraction done, km² of the scene)``) and write classes/confidence COGs, the
    input as a true-colour COG (when it has red, green and blue bands), polygons, stats.json and
    item.json to ``out``. Outputs are built in a hidden sibling folder and renamed into place at the end,
    so an interrupted or failed run never leaves a folder that looks complete."""
    from rasterio._env import del_gdal_config, get_gdal_config, set_gdal_config

    # GDAL's block cache would otherwise grow to 5 % of RAM. Set process-wide: rasterio.Env is
    # thread-local, and the reader and writer threads go through GDAL too.
    previous = get_gdal_config("GDAL_CACHEMAX")
    set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB)
    # Remote assets (STAC over http): never list the "directory" of a COG URL, the usual cloud advice.
    readdir = get_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN")
    set_gdal_config("GDAL_DISABLE_READDIR_ON_OPEN", "EMPTY_DIR")
    try:
        return _predict_scene(
            package, source, Path(out), stride=stride, overwrite=overwrite, polygons=polygons, mmu_ha=mmu_ha,
            mask=mask, band_names=band_names, offset=offset, on_progress=on_progress,
            intra_op_threads=intra_op_threads, aoi=aoi, units=units, on_warning=on_warning,
        )  # fmt: skip
    finally:
        for key, value in (("GDAL_CACHEMAX", previous), ("GDAL_DISABLE_READDIR_ON_OPEN", readdir)):
            if value is None:
                del_gdal_config(key)
            else:
                set_gdal_config(key, value)


GDAL_CACHE_MB = 256


def scene_km2(scene: Any) -> float:
    """The scene's geodesic area in km² (a pixel-size product is wrong in degrees: a geographic
    scene showed 0.0 km² on the progress bar)."""
    from pyproj import Geod
    from shapely.geometry import shape

    area, _ = Geod(ellps="WGS84").geometry_area_perimeter(shape(footprint(scene)))
    return abs(area) / 1e6


def _predict_scene(
    package: ModelPackage | Predictor,
    source: str | Path | list[str | Path],
    out: Path,
    *,
    stride: int | None,
    overwrite: bool,
    polygons: bool,
    mmu_ha: float,
    mask: str | Path | None,
    band_names: list[str] | None,
    offset: float | None,
    on_progress: Callable[[float, float], None] | None,
    intra_op_threads: int | None,
    aoi: Any,
    units: str | None,
    on_warning: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    # Idle ONNX Runtime threads must not spin: the reader and writer threads need those cores.
    predictor = (
        package
        if isinstance(package, Predictor)
        else Predictor(
            package,
            intra_op_threads=intra_op_threads,
            session_config={"session.intra_op.allow_spinning": "0"},
        )
    )
    spec = predictor.spec
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"output folder {out} exists; choose another --out or pass --overwrite")
    scene = open_scene(source, spec.bands, band_names=band_names, mask=mask, offset=offset, units=units)
    stride = stride or default_stride(spec.height)
    if aoi is not None:
        full = scene
        try:
            scene = full.crop(geometry_bounds(aoi, full.crs), pad=spec.height, align=stride)
        except DataError as exc:
            raise OutsideSceneError(f"{source}: {exc}") from exc
        scene.provenance["window"] = {"row_off": scene.row_off, "col_off": scene.col_off}
    from eodeploy.geo.drift import scene_shift

    shift = scene_shift(scene, spec, predictor.package.properties.get("eodeploy:reference_stats"))
    if shift and shift["unlike_training"] and on_warning:
        on_warning(shift)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    t0 = time.perf_counter()
    km2 = scene_km2(scene)  # for progress
    try:
        sink = GeoTiffSink(work, scene, spec)
        try:
            run = classify_scene(
                predictor, scene, sink, stride,
                on_progress=(lambda frac: on_progress(frac, km2)) if on_progress else None,
            )  # fmt: skip
        finally:
            sink.close()
            scene.close()
        if run.windows == 0:
            raise DataError(f"{source}: every pixel is nodata or cloud; nothing to classify")
        t_cog = time.perf_counter()
        to_cog(sink.paths["classes"], work / CLASSES_TIF, "MODE")  # categorical: never averaged
        to_cog(sink.paths["confidence"], work / CONFIDENCE_TIF, "AVERAGE")
        cog_seconds = time.perf_counter() - t_cog
        for p in sink.paths.values():
            p.unlink()
        # The input as the map's backdrop, on the same grid; skipped when it has no red/green/blue.
        t_rgb = time.perf_counter()
        rgb = rgb_scene(scene, source, band_names=band_names, mask=mask, offset=offset, units=units)
        if rgb is not None:
            write_truecolor(rgb, work / TRUECOLOR_TIF, work / ("work-" + TRUECOLOR_TIF))
        truecolor_seconds = round(time.perf_counter() - t_rgb, 2) if rgb is not None else None
        n_polygons = (
            write_polygons(work / CLASSES_TIF, work / "polygons.geojson", spec, mmu_ha) if polygons else None
        )
        total = float(run.class_m2.sum() + run.nodata_m2 + run.cloud_m2)
        stats = {
            "model": {
                "name": predictor.package.name,
                "version": predictor.package.version,
                "backend": predictor.backend,
            },
            "input": scene.provenance,
            "crs": str(scene.crs),
            "size_px": [scene.width, scene.height],
            "pixel_size": [abs(scene.transform.a), abs(scene.transform.e)],
            "patch": spec.height,
            "stride": stride,
            "windows": run.windows,
            "windows_skipped": run.windows_skipped,
            "areas_ha": {c.name: round(float(a) / 1e4, 4) for c, a in zip(spec.classes, run.class_m2)},
            "nodata_ha": round(run.nodata_m2 / 1e4, 4),
            "cloud_ha": round(run.cloud_m2 / 1e4, 4),
            "total_ha": round(total / 1e4, 4),
            "classified_share": round(float(run.class_m2.sum()) / total, 4) if total else 0.0,
            "acquired": scene_times(scene),
            "training_data_shift": shift,
            "area_method": "geodesic pixel areas on WGS84 (pyproj.Geod), per 64x64-pixel cell",
            "polygons": n_polygons,
            "min_mapping_unit_ha": mmu_ha if polygons else None,
            "seconds": round(time.perf_counter() - t0, 2),
            "inference_seconds": round(run.infer_seconds, 2),
            "streaming_seconds": round(run.seconds, 2),
            "cog_seconds": round(cog_seconds, 2),
            "truecolor_seconds": truecolor_seconds,
        }
        (work / "stats.json").write_text(json.dumps(stats, indent=2))
        name = Path(source[0] if isinstance(source, list) else source).name
        try:
            write_preview(work / CLASSES_TIF, work / "preview.png", spec,
                          f"{name} — {predictor.package.name} v{predictor.package.version}", outline=aoi)  # fmt: skip
        except MissingExtraError as exc:  # e.g. in the server image: the maps matter, the picture can wait
            logging.getLogger(__name__).warning("no preview.png for %s: %s", out.name, exc)
        write_stac_item(work, scene, stats, spec, predictor.package.path / "item.json", polygons, out.name)
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(old)
            work.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            work.rename(out)
        return stats
    except OSError as exc:
        shutil.rmtree(work, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DataError(f"disk full while writing {out}; free space or choose another --out") from exc
        raise
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
