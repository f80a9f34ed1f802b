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
