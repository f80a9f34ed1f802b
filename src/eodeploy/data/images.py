"""Read one image patch (GeoTIFF, JPEG/PNG or .npy) as a raw channels-first array."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eodeploy.errors import DataError

GEOTIFF_SUFFIXES = {".tif", ".tiff"}
PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png"}
NUMPY_SUFFIXES = {".npy"}
IMAGE_SUFFIXES = GEOTIFF_SUFFIXES | PICTURE_SUFFIXES | NUMPY_SUFFIXES


def read_image(path: str | Path) -> np.ndarray:
    """Return the file's pixels as (bands, height, width), values untouched (no scaling)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if suffix in GEOTIFF_SUFFIXES:
            return _read_geotiff(path)
        if suffix in PICTURE_SUFFIXES:
            return _read_picture(path)
        if suffix in NUMPY_SUFFIXES:
            return _read_npy(path)
    except DataError:
        raise
    except Exception as exc:  # the readers raise many types for a damaged file
        raise DataError(
            f"{path}: cannot be read as a {suffix} image ({exc}); "
            "check that the file is complete and not damaged"
        ) from exc
    raise DataError(f"{path}: unsupported file type {suffix!r}; use GeoTIFF (.tif), JPEG/PNG or .npy")


def _read_geotiff(path: Path) -> np.ndarray:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


def _read_picture(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _read_npy(path: Path) -> np.ndarray:
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a (bands, height, width) array, got shape {arr.shape}")
    # Accept (H, W, C) as saved by most exporters when the last axis is clearly the band axis.
    if arr.shape[2] < arr.shape[0] and arr.shape[2] <= 32:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
