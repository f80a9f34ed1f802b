"""The one preprocessing path: raw band values in, model-ready float32 tensors out.

Training, evaluation, the server, scene inference and monitoring all call ``preprocess``;
a second normalisation code beside it is how training/serving skew creeps in.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from eodeploy.errors import InvalidInputError
from eodeploy.package.bands import canonical_band
from eodeploy.package.spec import UNITS, ModelSpec

#: EuroSAT-RGB's rendering: digital numbers (reflectance x 10000) / RGB8_DN_MAX x 255, clipped.
RGB8_DN_MAX = 2750.0
#: Float inputs whose finite values stay at or below this are reflectance fractions (0-1, bright
#: cloud and snow up to ~1.7); digital numbers of real land are far above it.
REFLECTANCE_MAX = 3.0


def select_bands(x: np.ndarray, spec: ModelSpec, band_names: Sequence[str] | None) -> np.ndarray:
    """Pick and order the model's bands from ``x`` (N, C, H, W) whose bands are ``band_names``."""
    if band_names is None:
        if x.shape[1] != len(spec.bands):
            raise InvalidInputError(
                f"input has {x.shape[1]} bands but model {spec.name!r} expects "
                f"{len(spec.bands)} ({', '.join(spec.bands)}); send those bands in that order, "
                "or pass band_names so the bands can be matched by name"
            )
        return x
    given = list(band_names)
    if len(given) != x.shape[1]:
        raise InvalidInputError(f"{len(given)} band names given for an input of {x.shape[1]} bands")
    # 'B4', 'B04', 'red' and 'B04 (red)' are one band.
    names = [canonical_band(str(b)) for b in given]
    wanted = [canonical_band(b) for b in spec.bands]
    missing = [b for b, w in zip(spec.bands, wanted) if w not in names]
    if missing:
        raise InvalidInputError(
            f"input lacks band(s) {', '.join(missing)} that model {spec.name!r} needs "
            f"(input bands: {', '.join(map(str, given))})"
        )
    if names == wanted:
        return x
    return x[:, [names.index(w) for w in wanted]]


def guess_units(x: np.ndarray, model_units: str | None) -> str:
    """What raw values most likely are: 8-bit integers are a true-colour rendering, other
    integers Sentinel-2 digital numbers, floats at most ``REFLECTANCE_MAX`` reflectance; other
    floats are 8-bit values for an 8-bit model when they stay within 0-255, else digital numbers."""
    if x.dtype == np.uint8:
        return "rgb8"
    if not np.issubdtype(x.dtype, np.floating):
        return "dn"
    finite = x[np.isfinite(x)]
    top = float(finite.max()) if finite.size else 0.0
    if top <= REFLECTANCE_MAX:
        return "reflectance"
    if model_units == "rgb8" and top <= 255.0:
        return "rgb8"
    return "dn"


def convert_units(x: np.ndarray, source: str, target: str | None) -> np.ndarray:
    """Raw values in ``source`` units onto the ``target`` units a model was trained on.

    The only place the units meet: reflectance x 10000 = digital numbers; digital numbers
    / 2750 x 255, clipped to 0-255 and rounded, = EuroSAT's 8-bit rendering (and back, exact
    below saturation)."""
    for u in (source, target):
        if u is not None and u not in UNITS:
            raise InvalidInputError(f"units {u!r} are not one of {', '.join(sorted(UNITS))} (or 'auto')")
    if target is None or source == target:
        return x
    v = x.astype(np.float32, copy=True)
    if source == "reflectance":
        v *= 10000.0
    elif source == "rgb8":
        v *= RGB8_DN_MAX / 255.0
    # v is now in digital numbers
    if target == "reflectance":
        v /= 10000.0
    elif target == "rgb8":
        v *= 255.0 / RGB8_DN_MAX
        np.clip(v, 0.0, 255.0, out=v)
        np.rint(v, out=v)
    return v


def _per_band(scaling: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return scaling * n if len(scaling) == 1 else scaling


def scale_values(x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Apply the MLM ``value_scaling`` entries (one per band, or one for all) to float32 data."""
    out = x.astype(np.float32, copy=True)
    if not spec.value_scaling:
        return out
    steps = _per_band(spec.value_scaling, out.shape[1])
    kind = {s["type"] for s in steps}
    if kind == {"z-score"}:  # the common case, vectorised
        mean = np.array([s["mean"] for s in steps], np.float32)[None, :, None, None]
        std = np.array([s["stddev"] for s in steps], np.float32)[None, :, None, None]
        out -= mean
        out /= std
        return out
    for b, s in enumerate(steps):
        band = out[:, b]
        t = s["type"]
        if t == "z-score":
            band -= s["mean"]
            band /= s["stddev"]
        elif t == "min-max":
            band -= s["minimum"]
            band /= s["maximum"] - s["minimum"]
        elif t == "clip":
            np.clip(band, s["minimum"], s["maximum"], out=band)
        elif t == "clip-min":
            np.maximum(band, s["minimum"], out=band)
        elif t == "clip-max":
            np.minimum(band, s["maximum"], out=band)
        elif t == "offset":
            band -= s["value"]
        elif t == "scale":
            band /= s["value"]
    return out


def neutral_values(spec: ModelSpec) -> np.ndarray:
    """Raw band values that a z-score scaling maps to 0 (the training mean), else 0: what masked
    pixels (nodata, clouds) are filled with so they pull a window's prediction least."""
    n = len(spec.bands)
    fill = np.zeros(n, np.float32)
    for i, s in enumerate(_per_band(spec.value_scaling or [], n)):
        if s.get("type") == "z-score":
            fill[i] = s["mean"]
    return fill


def as_channels_first(x: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Accept channels-last patches (N, H, W, bands), as Keras users and GEE exports send them."""
    n_bands = len(spec.bands)
    if x.ndim == 4 and x.shape[1:] == (spec.height, spec.width, n_bands) and x.shape[1] != n_bands:
        return x.transpose(0, 3, 1, 2)
    return x


def preprocess(
    x: np.ndarray,
    spec: ModelSpec,
    band_names: Sequence[str] | None = None,
    units: str | None = None,
) -> np.ndarray:
    """Raw patches (N, C, H, W) or one patch (C, H, W) -> float32 tensor in the model's layout:
    ``to_model_units``, then the package's ``value_scaling`` (the part the fused ONNX graph of
    ``package.fused`` carries, for the browser and Triton), then the model's layout.

    ``units``: what the raw values are (``reflectance``, ``dn``, ``rgb8``, or ``auto`` to guess
    from dtype and range); they are converted onto the units the model was trained on. None:
    the values already are in the model's units."""
    out = scale_values(to_model_units(x, spec, band_names, units), spec)
    if spec.layout == "NHWC":
        out = np.ascontiguousarray(out.transpose(0, 2, 3, 1))
    return out


def to_model_units(
    x: np.ndarray,
    spec: ModelSpec,
    band_names: Sequence[str] | None = None,
    units: str | None = None,
) -> np.ndarray:
    """Checked raw patches (N, C, H, W) with the model's bands in its order, in the units it was
    trained on (before any scaling)."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise InvalidInputError(f"expected patches shaped (batch, bands, height, width), got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise InvalidInputError(f"input values must be numbers, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise InvalidInputError("empty batch: send at least one patch")
    if (x.shape[2], x.shape[3]) != (spec.height, spec.width):
        raise InvalidInputError(
            f"patch size {x.shape[2]}x{x.shape[3]} does not match model {spec.name!r}, "
            f"which takes {spec.height}x{spec.width}; cut the image into patches of that size "
            "(scene inference does this for whole scenes)"
        )
    x = select_bands(x, spec, band_names)
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = ~np.isfinite(x)
        rows = np.unique(np.nonzero(bad)[0])
        raise InvalidInputError(
            f"input holds {int(bad.sum())} NaN or infinite value(s) in patch(es) "
            f"{rows[:10].tolist()}; mask or fill nodata before predicting"
        )
    if units is not None and spec.units is not None:
        x = convert_units(x, guess_units(x, spec.units) if units == "auto" else units, spec.units)
    return x
