"""Reference statistics of training inputs, kept in the package for later drift checks."""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]


def band_statistics(images: np.ndarray, band_names: list[str]) -> dict[str, dict[str, Any]]:
    """Per band: mean, std, min, max and quantiles of raw values over all pixels."""
    x = images.astype(np.float64)
    out: dict[str, dict[str, Any]] = {}
    for b, name in enumerate(band_names):
        v = x[:, b].ravel()
        q = np.quantile(v, QUANTILES)
        out[name] = {
            "mean": round(float(v.mean()), 4),
            "std": round(float(v.std()), 4),
            "min": float(v.min()),
            "max": float(v.max()),
            "quantiles": {f"p{int(p * 100):02d}": round(float(val), 4) for p, val in zip(QUANTILES, q)},
        }
    return out


def reference_statistics(
    images: np.ndarray, labels: np.ndarray, band_names: list[str], class_names: list[str]
) -> dict[str, Any]:
    counts = np.bincount(labels, minlength=len(class_names))
    return {
        "n_samples": int(len(labels)),
        "bands": band_statistics(images, band_names),
        "class_frequencies": {
            c: round(float(n) / max(1, len(labels)), 4) for c, n in zip(class_names, counts)
        },
    }


def zscore_scaling(images: np.ndarray) -> list[dict[str, Any]]:
    """MLM value_scaling entries that standardise each band with the training mean/std."""
    x = images.astype(np.float64)
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))
    std = np.where(std > 1e-6, std, 1.0)
    return [
        {"type": "z-score", "mean": round(float(m), 4), "stddev": round(float(s), 4)}
        for m, s in zip(mean, std)
    ]


#: A band whose median moved by more than this many reference IQRs is flagged. Measured here
#: (docs/scene-inference.md): clear Lahinch dates 0.2-0.3 (largest band 1.0), the same dates
#: +1000 DN 1.2-1.4, an unmasked cloud deck 2.7 (median over the 13 bands).
SHIFT_BAND_LIMIT = 1.0
#: The scene is unlike the training data when the median over its bands exceeds this.
SHIFT_SCENE_LIMIT = 0.75


def robust_shift(values: np.ndarray, reference: dict[str, Any], band_names: list[str]) -> dict[str, Any]:
    """Per band |median - reference median| / reference IQR of ``values`` (bands, n pixels).

    An effect size, not a test: neighbouring pixels are not independent, so p-values of pixel
    tests flag every scene. ``reference`` is a package's ``eodeploy:reference_stats``."""
    ref_bands = reference.get("bands", {})
    per_band: dict[str, dict[str, float]] = {}
    for name, v in zip(band_names, values):
        ref = ref_bands.get(name)
        if ref is None or not v.size:
            continue
        q = ref["quantiles"]
        iqr = max(float(q["p75"]) - float(q["p25"]), 1e-6)
        med = float(np.median(v))
        per_band[name] = {
            "median": round(med, 4),
            "reference_median": float(q["p50"]),
            "shift": round(abs(med - float(q["p50"])) / iqr, 3),
            "difference": round(med - float(q["p50"]), 4),
        }
    shifts = [b["shift"] for b in per_band.values()]
    overall = float(np.median(shifts)) if shifts else 0.0
    flagged = [b for b, r in per_band.items() if r["shift"] > SHIFT_BAND_LIMIT]
    return {
        "statistic": "|median - reference median| / reference IQR, clear pixels",
        "median_shift": round(overall, 3),
        "bands_flagged": flagged,
        "band_limit": SHIFT_BAND_LIMIT,
        "scene_limit": SHIFT_SCENE_LIMIT,
        "unlike_training": bool(shifts) and overall > SHIFT_SCENE_LIMIT,
        "bands": per_band,
    }
