"""A folder of patches exported from Google Earth Engine (the guide's GEE option 1): GeoTIFF or
``.npy`` files, one patch each. Each is classified whole; georeferenced patches also become
footprint polygons with their class, so the results go back on a map."""

from __future__ import annotations

import csv
import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.data.images import IMAGE_SUFFIXES, read_image
from eodeploy.errors import DataError
from eodeploy.geo.area import PixelArea
from eodeploy.runtime.predictor import Predictor


def is_patch_folder(folder: Path, size: int) -> bool:
    """True when ``folder`` holds image files of exactly one model patch each."""
    if not folder.is_dir():
        return False
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        return False
    if any(p.suffix.lower() == ".npy" for p in files):
        return True
    import rasterio

    with rasterio.open(files[0]) as src:
        return bool(src.width == size and src.height == size)


def _footprint(path: Path) -> tuple[dict[str, Any] | None, float | None]:
    import rasterio
    from rasterio.warp import transform_geom

    if path.suffix.lower() not in (".tif", ".tiff"):
        return None, None
    with rasterio.open(path) as src:
        if src.crs is None:
            return None, None
        t, w, h = src.transform, src.width, src.height
        ring = [t * (0, 0), t * (w, 0), t * (w, h), t * (0, h), t * (0, 0)]
        geom = transform_geom(src.crs, "EPSG:4326", {"type": "Polygon", "coordinates": [ring]})
        area = float(PixelArea(src.crs, t).of_block(0, h, w).sum())
    return geom, area


def predict_patches(
    predictor: Predictor,
    folder: str | Path,
    out: str | Path,
    overwrite: bool = False,
    band_names: list[str] | None = None,
    units: str = "auto",
    offset: float | None = None,
) -> dict[str, Any]:
    """``units``: what the patches hold (reflectance, dn, rgb8), guessed from the stack when auto;
    ``offset``: added to every value instead of the offset each GeoTIFF declares (as for scenes)."""
    folder, out = Path(folder), Path(out)
    if out.exists() and not overwrite:
        from eodeploy.geo.predict import OutputExistsError

        raise OutputExistsError(f"output folder {out} exists; choose another --out or pass --overwrite")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: holds no GeoTIFF or .npy patches")
    arrays = [read_image(p, offset) for p in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise DataError(f"{folder}: patches differ in shape {sorted(shapes)}; export them at one size")
    pred = predictor.predict(np.stack(arrays), band_names=band_names, units=units)
    names = predictor.spec.class_names
    rows, features = [], []
    area_ha = dict.fromkeys(names, 0.0)
    for path, cid, proba in zip(files, pred.class_ids, pred.probabilities):
        geom, area = _footprint(path)
        row = {
            "file": path.name,
            "class": names[cid],
            "class_id": int(cid),
            "confidence": round(float(proba.max()), 4),
        }
        rows.append(row)
        if geom is not None and area is not None:
            features.append(
                {"type": "Feature", "geometry": geom, "properties": {**row, "area_ha": round(area / 1e4, 4)}}
            )
            area_ha[names[cid]] += area / 1e4
    work = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    try:
        with open(work / "patches.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if features:
            (work / "patches.geojson").write_text(
                json.dumps({"type": "FeatureCollection", "features": features})
            )
        counts = {n: sum(r["class"] == n for r in rows) for n in names}
        stats = {
            "model": {
                "name": predictor.package.name,
                "version": predictor.package.version,
                "backend": predictor.backend,
            },
            "input": {
                "inputs": [str(folder)],
                "layout": "folder of patches (GEE export)",
                "patches": len(files),
            },
            "counts": counts,
            "areas_ha": {k: round(v, 4) for k, v in area_ha.items()} if features else None,
            "georeferenced": len(features),
        }
        (work / "stats.json").write_text(json.dumps(stats, indent=2))
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return stats
