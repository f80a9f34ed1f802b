"""Read one image patch (GeoTIFF, JPEG/PNG or .npy) as a raw channels-first array."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.data.offsets import apply_offset, geotiff_offset
from eodeploy.errors import DataError, EodeployError, PayloadTooLargeError
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
        if suffix in PICTURE_SUFFIXES:  # a local file: no upload limits
            return apply_offset(
                _read_picture(path, str(path), ImageLimits(max_pixels=2**62, max_bands=2**31)), offset or 0.0
            )
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


@dataclass(frozen=True)
class ImageLimits:
    """What an uploaded image may declare, checked from its header before any pixel is decoded:
    a small compressed file can declare a 50 000 x 50 000 x 13 raster (tens of GB once read)."""

    #: Largest height x width; above it the upload is refused as too large (413).
    max_pixels: int = 4096 * 4096
    max_bands: int = 64
    #: (height, width) the model takes; another size is refused (400) before decoding.
    shape: tuple[int, int] | None = None


_DTYPES = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"}


def check_header(name: str, bands: int, height: int, width: int, dtype: str, limits: ImageLimits) -> None:
    """Refuse, from the header alone, what is too large or not what the model takes."""
    if height * width > limits.max_pixels or bands > limits.max_bands:
        raise PayloadTooLargeError(
            f"{name}: declares {width} x {height} pixels x {bands} band(s), above the limit of "
            f"{limits.max_pixels} pixels and {limits.max_bands} bands per image; send patches of "
            "the model's size" + (f" ({limits.shape[1]} x {limits.shape[0]})" if limits.shape else "")
        )
    if str(dtype) not in _DTYPES:
        raise DataError(f"{name}: pixel type {dtype} is not supported; send integer or float32 band values")
    if limits.shape is not None and (height, width) != tuple(limits.shape):
        h, w = limits.shape
        raise DataError(
            f"{name}: image is {width} x {height} pixels but the model takes {w} x {h} patches; "
            "cut the image into patches of that size"
        )


def decode_image(
    data: bytes, name: str = "upload", limits: ImageLimits | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """Decode an uploaded file's bytes (GeoTIFF, PNG/JPEG or .npy, told apart by content) into
    (bands, height, width) pixels, and the Sentinel-2 band names its GeoTIFF band descriptions
    give (None unless every band is named so). The header is checked against ``limits`` first.
    Blocking: call it from a worker thread in a server."""
    import io

    limits = limits or ImageLimits()
    if not data:
        raise DataError(f"{name}: the file is empty; send a GeoTIFF, PNG/JPEG or .npy patch")
    try:
        if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            return _decode_geotiff(data, name, limits)
        if data[:6] == b"\x93NUMPY":
            return _decode_npy(io.BytesIO(data), name, limits), None
        if data[:8] == b"\x89PNG\r\n\x1a\n" or data[:3] == b"\xff\xd8\xff":
            return _read_picture(io.BytesIO(data), name, limits), None
    except EodeployError:
        raise
    except Exception as exc:
        raise DataError(
            f"{name}: cannot be decoded ({exc}); check that the file is complete and not damaged"
        ) from exc
    raise DataError(
        f"{name}: not a GeoTIFF, PNG, JPEG or .npy file (unrecognised content); send one of those formats"
    )


def _decode_geotiff(data: bytes, name: str, limits: ImageLimits) -> tuple[np.ndarray, list[str] | None]:
    import warnings

    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(data) as mem, mem.open() as src:
            for dtype in set(src.dtypes):
                check_header(name, src.count, src.height, src.width, dtype, limits)
            names = [normalize_band(d) if d else None for d in src.descriptions]
            return apply_offset(src.read(), geotiff_offset(src, name)), (names if all(names) else None)  # type: ignore[return-value]


def _decode_npy(fh: Any, name: str, limits: ImageLimits) -> np.ndarray:
    from numpy.lib import format as npy

    major, _ = npy.read_magic(fh)
    read_header = npy.read_array_header_1_0 if major == 1 else npy.read_array_header_2_0
    shape, _, dtype = read_header(fh)
    if len(shape) in (2, 3):
        dims = (1, *shape) if len(shape) == 2 else shape
        # The same (H, W, C) rule as _as_chw: last axis smaller than the first and at most 32.
        c, h, w = (dims[2], dims[0], dims[1]) if dims[2] < dims[0] and dims[2] <= 32 else dims
        check_header(name, c, h, w, str(dtype) if dtype.kind in "iuf" else dtype.str, limits)
    fh.seek(0)
    return _as_chw(np.load(fh, allow_pickle=False), name)


def _read_geotiff(path: Path, offset: float | None = None) -> np.ndarray:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return apply_offset(src.read(), geotiff_offset(src, str(path)) if offset is None else offset)


def _read_picture(path: Path | Any, name: str = "", limits: ImageLimits | None = None) -> np.ndarray:
    import warnings

    from PIL import Image

    limits = limits or ImageLimits()
    with warnings.catch_warnings():
        # PIL's own decompression-bomb guard, as an error: our limit below is the stricter one.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise PayloadTooLargeError(
                f"{name or path}: declares an image above the limit of {limits.max_pixels} pixels "
                f"({exc}); send patches of the model's size"
            ) from None
    with img:
        bands = len(img.getbands())
        check_header(name or str(path), bands, img.height, img.width, "uint8", limits)
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
