"""What one class map says about one area: per-class hectares inside the polygon, the share seen
cloud-free, and the target class after a minimum mapping unit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.geo.area import PixelArea, reproject
from eodeploy.geo.infer import NODATA


@dataclass
class AreaMeasure:
    target_ha: float
    observed_ha: float
    observed_share: float
    areas_ha: dict[str, float]


def measure_area(
    classes_tif: Path, geom_wgs84: Any, area_ha: float, class_names: list[str], target: str, mmu_ha: float
) -> AreaMeasure:
    """Measure ``geom_wgs84`` on a class map. Target patches smaller than ``mmu_ha`` are dropped
    (sieved into their surroundings) so that single noisy pixels do not count as change."""
    import rasterio
    from rasterio.features import geometry_mask, sieve

    with rasterio.open(classes_tif) as ds:
        classes = ds.read(1)
        crs, transform = ds.crs, ds.transform
    geom = reproject(geom_wgs84, "EPSG:4326", crs)
    inside = geometry_mask([geom], classes.shape, transform, invert=True)
    pixel_m2 = PixelArea(crs, transform).of_block(0, *classes.shape)
    observed = inside & (classes != NODATA)
    k = class_names.index(target)
    is_target = (classes == k).astype(np.uint8)
    mmu_px = int(round(mmu_ha * 1e4 / float(np.median(pixel_m2))))
    if mmu_px > 1:
        is_target = sieve(is_target, size=mmu_px, connectivity=8)
    target_m2 = float(pixel_m2[(is_target == 1) & observed].sum())
    per_class = np.bincount(classes[observed], weights=pixel_m2[observed], minlength=len(class_names))
    observed_ha = float(pixel_m2[observed].sum()) / 1e4
    return AreaMeasure(
        target_ha=round(target_m2 / 1e4, 4),
        observed_ha=round(observed_ha, 4),
        observed_share=round(min(observed_ha / area_ha, 1.0), 4) if area_ha else 0.0,
        areas_ha={n: round(float(a) / 1e4, 4) for n, a in zip(class_names, per_class[: len(class_names)])},
    )
