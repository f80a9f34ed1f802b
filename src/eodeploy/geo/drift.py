"""Is a scene like the data the model was trained on? A robust per-band shift, with causes named.

Run before mapping: the scene's clear pixels (decimated) against the package's reference
statistics. The statistic is ``package.stats.robust_shift``; this module adds the scene reading
and the known causes an analyst would check first.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from eodeploy.geo.sources import Scene
from eodeploy.package.spec import ModelSpec
from eodeploy.package.stats import robust_shift
from eodeploy.runtime.preprocess import convert_units

#: Fewer clear sample pixels than this say nothing about a scene.
MIN_CLEAR_PIXELS = 500
VISIBLE = ("B02", "B03", "B04")


def scene_shift(scene: Scene, spec: ModelSpec, reference: dict[str, Any] | None) -> dict[str, Any] | None:
    """The shift of ``scene`` against ``reference`` (a package's ``eodeploy:reference_stats``),
    in the model's units; None when the package has no reference statistics."""
    if not reference or not reference.get("bands"):
        return None
    raw, clear = scene.sample()
    n = int(clear.sum())
    if n < MIN_CLEAR_PIXELS:
        return {"median_shift": None, "unlike_training": False, "clear_pixels": n,
                "note": "too few clear pixels to compare with the training data"}  # fmt: skip
    values = convert_units(raw, scene.units, spec.units)[:, clear]
    out = robust_shift(values, reference, spec.bands)
    out["clear_pixels"] = n
    if out["unlike_training"]:
        unshifted = convert_units(raw[:, clear][:, None] - BASELINE_OFFSET, "dn", spec.units)[:, 0]
        out["causes"] = likely_causes(out, reference, spec, unshifted if scene.units == "dn" else None)
    else:
        out["causes"] = []
    return out


#: Digital numbers that Sentinel-2 processing baseline 04.00 (25 January 2022) adds to every band.
BASELINE_OFFSET = 1000.0


def likely_causes(
    shift: dict[str, Any], reference: dict[str, Any], spec: ModelSpec, minus_offset: np.ndarray | None
) -> list[str]:
    """The usual reasons a Sentinel-2 scene differs from EuroSAT-style training data.
    ``minus_offset``: the same clear pixels less the baseline offset, in the model's units."""
    bands = shift["bands"]
    causes = []
    if minus_offset is not None:
        fixed = robust_shift(minus_offset, reference, spec.bands)
        if not fixed["unlike_training"]:
            causes.append(
                f"less 1000 DN the scene matches the training data (median shift "
                f"{fixed['median_shift']:.2f}): Sentinel-2 processing baseline 04.00 (since "
                "25 January 2022) adds 1000 to every band; pass --offset -1000 when the file "
                "does not carry BOA_ADD_OFFSET/RADIO_ADD_OFFSET"
            )
    visible = [b for b in VISIBLE if b in bands]
    ref = reference["bands"]
    if visible and all(bands[b]["median"] > ref[b]["quantiles"]["p99"] for b in visible):
        causes.append(
            "the visible bands are brighter than 99 % of the training pixels: unmasked cloud, haze "
            "or snow; give a cloud mask (SCL, s2cloudless probability) with --mask"
        )
    if not causes:
        causes.append(
            "a different product or place: L2A surface reflectance against a model trained on L1C "
            "top-of-atmosphere data, another season, climate or sensor; check the product level, "
            "units and band order, and expect lower accuracy"
        )
    return causes
