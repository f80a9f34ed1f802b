"""Read one image patch (GeoTIFF, JPEG/PNG or .npy) as a raw channels-first array."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.data.offsets import apply_offset, geotiff_offset
from eodeploy.errors import DataError
from eodeploy.package.bands import normalize_band

GEOTIFF_SUFFIXES = {".tif", ".tiff"}
PICTURE_SUFFIXES = {".jpg", ".jpeg", ".png"}
NUMPY_SUFFIXES = {".npy"}
IMAGE_SUFFIXES = GEOTIFF_SUFFIXES | PICTURE_SUFFIXES | NUMPY_SUFFIXES


def read_image(path: str | Path, offset: float | None = None) -> np.ndarray:
    """Return the file's pixels as (bands, height, width), unscaled; a GeoTIFF's declared
    Sentinel-2 offset is applied (``data.offsets``, the one path scenes and uploads share), or
    ``offset`` when given (any format: ``eodeploy predict --offset``)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if suffix in GEOTIFF_SUFFIXES:
            return _read_geotiff(path, offset)
        if suffix in PICTURE_SUFFIXES:
            return apply_offset(_read_picture(path), offset or 0.0)
        if suffix in NUMPY_SUFFIXES:
            return apply_offset(_read_npy(path), offset or 0.0)
    except DataError:
        raise
    except Exception as exc:  # the readers raise many types for a damaged file
        raise DataError(
            f"{path}: cannot be read as a {suffix} image ({exc}); "
            "check that the file is complete and not damaged"
        ) from exc
    raise DataError(f"{path}: unsupported file type {suffix!r}; use GeoTIFF (.tif), JPEG/PNG or .npy")


def decode_image(data: bytes, name: str = "upload") -> tuple[np.ndarray, list[str] | None]:
    """Decode an uploaded file's bytes (GeoTIFF, PNG/JPEG or .npy, told apart by content) into
    (bands, height, width) pixels, and the Sentinel-2 band names its GeoTIFF band descriptions
    give (None unless every band is named so)."""
    import io

    if not data:
        raise DataError(f"{name}: the file is empty; send a GeoTIFF, PNG/JPEG or .npy patch")
    try:
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            from rasterio.io import MemoryFile

            with MemoryFile(data) as mem, mem.open() as src:
                names = [normalize_band(d) if d else None for d in src.descriptions]
                return apply_offset(src.read(), geotiff_offset(src, name)), (names if all(names) else None)  # type: ignore[return-value]
        if data[:6] == b"\x93NUMPY":
            return _as_chw(np.load(io.BytesIO(data), allow_pickle=False), name), None
        if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
            return _read_picture(io.BytesIO(data)), None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"{name}: cannot be decoded ({exc}); check that the file is complete and not damaged"
        ) from exc
    raise DataError(
        f"{name}: not a GeoTIFF, PNG, JPEG or .npy file (unrecognised content); send one of those formats"
    )


def _read_geotiff(path: Path, offset: float | None = None) -> np.ndarray:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return apply_offset(src.read(), geotiff_offset(src, str(path)) if offset is None else offset)


def _read_picture(path: Path | Any) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        arr = np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _read_npy(path: Path) -> np.ndarray:
    return _as_chw(np.load(path, allow_pickle=False), str(path))


def _as_chw(arr: np.ndarray, path: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DataError(f"{path}: expected a (bands, height, width) array, got shape {arr.shape}")
    # Accept (H, W, C) as saved by most exporters when the last axis is clearly the band axis.
    if arr.shape[2] < arr.shape[0] and arr.shape[2] <= 32:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
