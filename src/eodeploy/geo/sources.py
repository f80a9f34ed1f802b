"""Scene inputs: a multi-band GeoTIFF/COG, one file per band (mixed 10/20/60 m), or a STAC Item.

Whatever the input, a ``Scene`` reads windows of the model's bands, by name and in the model's
order, on one 10 m-style reference grid, with a mask of valid pixels.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.data.offsets import baseline_offset, geotiff_offset
from eodeploy.errors import DataError
from eodeploy.package.bands import canonical_band, normalize_band

#: Scene classification (SCL) values that are not clear ground: no data, saturated, cloud shadow,
#: cloud medium/high probability, thin cirrus.
SCL_INVALID = (0, 1, 3, 8, 9, 10)
#: s2cloudless / L2A cloud probability (0-100) at or above which a pixel counts as cloud.
CLOUD_PROBABILITY = 40.0
#: QA60 bits: 10 opaque clouds, 11 cirrus.
QA60_CLOUD = (1 << 10) | (1 << 11)
#: Band descriptions recognised as a cloud layer inside a multi-band file, and how to read them.
MASK_BANDS = {"scl": "scl", "qa60": "qa60", "probability": "probability", "cloud_probability": "probability",
              "cld": "probability", "msk_cldprb": "probability", "cloud_mask": "binary"}  # fmt: skip


@dataclass
class BandRef:
    path: str
    index: int  # 1-based band index in the file
    offset: float = 0.0  # added to the stored values (Sentinel-2 baseline >= 04.00: -1000)


@dataclass
class Scene:
    """Windows of the model's bands on one grid; ``valid`` marks pixels to classify."""

    bands: dict[str, BandRef]
    order: list[str]
    crs: Any
    transform: Any
    width: int
    height: int
    mask_path: str | None = None
    #: How the mask layer reads: "scl", "binary" (> 0), "probability" (>= CLOUD_PROBABILITY), "qa60".
    mask_kind: str = "binary"
    mask_index: int = 1
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Pixel offset of this scene's grid in the files' grid (a scene cropped to an area).
    row_off: int = 0
    col_off: int = 0
    #: What the stored values are (reflectance, dn or rgb8; see ``package.spec.UNITS``).
    units: str = "dn"
    _open: dict[str, Any] = field(default_factory=dict, repr=False)

    def crop(self, bounds: tuple[float, float, float, float], pad: int = 0, align: int = 1) -> Scene:
        """The part of this scene inside ``bounds`` (scene CRS), grown by ``pad`` pixels, starting on
        a multiple of ``align`` pixels (the window stride: windows then fall where they would on
        the whole scene, so the map is the same); a ``DataError`` when they do not overlap."""
        from rasterio.transform import rowcol
        from rasterio.windows import Window
        from rasterio.windows import transform as window_transform

        x0, y0, x1, y1 = bounds
        rows, cols = rowcol(self.transform, [x0, x1, x0, x1], [y0, y0, y1, y1], op=float)
        r0 = max(int(np.floor(min(rows))) - pad, 0) // align * align
        c0 = max(int(np.floor(min(cols))) - pad, 0) // align * align
        r1 = min(int(np.ceil(max(rows))) + pad, self.height)
        c1 = min(int(np.ceil(max(cols))) + pad, self.width)
        if r1 <= r0 or c1 <= c0:
            raise DataError("the area lies outside the scene; choose a scene that covers it")
        win = Window(c0, r0, c1 - c0, r1 - r0)
        return Scene(
            self.bands, self.order, self.crs, window_transform(win, self.transform), c1 - c0, r1 - r0,
            self.mask_path, self.mask_kind, self.mask_index, dict(self.provenance),
            self.row_off + r0, self.col_off + c0, self.units,
        )  # fmt: skip

    def _dataset(self, path: str) -> Any:
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        if path not in self._open:
            src = rasterio.open(path)
            # The files' own grid: this scene's grid before any crop.
            full = self.transform * self.transform.translation(-self.col_off, -self.row_off)
            full_w, full_h = self.width + self.col_off, self.height + self.row_off
            if (src.crs, src.transform) == (self.crs, full) and src.width >= full_w and src.height >= full_h:
                self._open[path] = src
            else:  # a 20/60 m band or the cloud mask: resampled onto the reference grid
                nearest = path == self.mask_path
                self._open[path] = WarpedVRT(
                    src, crs=self.crs, transform=full, width=full_w, height=full_h,
                    resampling=Resampling.nearest if nearest else Resampling.bilinear,
                )  # fmt: skip
        return self._open[path]

    def read(
        self, row: int, col: int, height: int, width: int, out_shape: tuple[int, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(bands, h, w) float32 raw values in model order, ``nodata`` mask and ``cloud`` mask;
        ``out_shape`` (h, w) reads the window decimated (nearest; overviews when the file has them)."""
        from rasterio.windows import Window

        win = Window(col + self.col_off, row + self.row_off, width, height)
        h, w = out_shape or (height, width)
        out = np.empty((len(self.order), h, w), np.float32)
        nodata = np.zeros((h, w), bool)
        by_file: dict[str, list[int]] = {}
        for i, name in enumerate(self.order):
            by_file.setdefault(self.bands[name].path, []).append(i)
        for path, positions in by_file.items():
            ds = self._dataset(path)
            refs = [self.bands[self.order[i]] for i in positions]
            # One read per file: a pixel-interleaved multi-band tile is decoded once, not once per band.
            data = ds.read([r.index for r in refs], window=win, out_shape=(len(refs), h, w))
            for i, ref, band in zip(positions, refs, data):
                nd = ds.nodatavals[ref.index - 1]
                if nd is not None and not np.isnan(nd):
                    nodata |= band == nd
                if band.dtype.kind == "f":
                    nodata |= ~np.isfinite(band)
                out[i] = band  # one conversion, straight into the float32 output
                if ref.offset:
                    out[i] += ref.offset
                    np.maximum(out[i], 0, out=out[i])
        cloud = np.zeros((h, w), bool)
        if self.mask_path:
            m = self._dataset(self.mask_path).read(self.mask_index, window=win, out_shape=(h, w))
            if self.mask_kind == "scl":
                cloud = np.isin(m, SCL_INVALID)
            elif self.mask_kind == "probability":
                cloud = m >= CLOUD_PROBABILITY
            elif self.mask_kind == "qa60":
                cloud = (np.nan_to_num(m).astype(np.int64) & QA60_CLOUD) > 0
            else:
                cloud = m > 0
            cloud &= ~nodata
        return out, nodata, cloud

    def sample(self, max_side: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene decimated to at most ``max_side`` px a side: raw values (bands, h, w)
        and the mask of clear pixels (neither nodata nor cloud), for scene statistics."""
        f = max(1.0, max(self.height, self.width) / max_side)
        shape = (max(1, round(self.height / f)), max(1, round(self.width / f)))
        raw, nodata, cloud = self.read(0, 0, self.height, self.width, out_shape=shape)
        return raw, ~(nodata | cloud)

    def close(self) -> None:
        for ds in self._open.values():
            ds.close()
        self._open.clear()


def _open_checked(path: str | Path) -> Any:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except RasterioIOError as exc:
        raise DataError(
            f"{path}: cannot be read as a raster ({exc}); check the file is a complete GeoTIFF/COG"
        ) from exc


def open_scene(
    source: str | Path | list[str | Path],
    model_bands: list[str],
    band_names: list[str] | None = None,
    mask: str | Path | None = None,
    offset: float | None = None,
    units: str | None = None,
) -> Scene:
    """Open a GeoTIFF, a folder or list of band files, or a STAC Item JSON as a ``Scene``.

    ``units``: what the stored values are (reflectance, dn, rgb8); None: read from the data
    (8-bit: rgb8, other integers: dn, floats up to ~3: reflectance, else dn)."""
    scene = _open_scene(source, model_bands, band_names, mask, offset)
    scene.units = units or _detect_units(scene)
    scene.provenance["units"] = scene.units
    return scene


def _detect_units(scene: Scene) -> str:
    """Units of a scene from its first band: dtype, then a decimated read of its values."""
    from eodeploy.runtime.preprocess import guess_units

    ref = scene.bands[scene.order[0]]
    with _open_checked(ref.path) as ds:
        dtype = np.dtype(ds.dtypes[ref.index - 1])
        if dtype.kind != "f":
            return "rgb8" if dtype == np.uint8 else "dn"
        h, w = min(ds.height, 512), min(ds.width, 512)
        sample = ds.read(ref.index, out_shape=(h, w)).astype(np.float32)
        nd = ds.nodatavals[ref.index - 1]
    valid = np.isfinite(sample) & ((sample != nd) if nd is not None and not np.isnan(nd) else True)
    # A high quantile, not the maximum: a few saturated or glinting pixels prove nothing.
    top = np.float32(np.quantile(sample[valid], 0.99)) if valid.any() else np.float32(0)
    return guess_units(np.array([top], np.float32), None)


def _open_scene(
    source: str | Path | list[str | Path],
    model_bands: list[str],
    band_names: list[str] | None,
    mask: str | Path | None,
    offset: float | None,
) -> Scene:
    """Clouds: ``mask`` (an SCL file, or a 0/1 mask), else an SCL band file or asset, else a cloud
    band inside a multi-band file (described SCL, QA60 or probability/s2cloudless)."""
    refs: dict[str, BandRef] = {}
    prov: dict[str, Any] = {}
    paths: list[Path]
    mask_kind = "binary"
    if mask is not None:  # a scene classification layer, or a 0/1 cloud mask
        mask_kind = "scl" if "scl" in Path(mask).name.lower() else "binary"
    mask_index = 1
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        return _open_stac(source, model_bands, mask, mask_kind, offset)  # an item from a STAC API
    if isinstance(source, list):
        paths = [Path(p) for p in source]
    else:
        src = Path(source)
        if not src.exists():
            raise DataError(f"{src}: no such file or folder")
        if src.suffix.lower() == ".json":
            return _open_stac(src, model_bands, mask, mask_kind, offset)
        paths = (
            sorted(p for p in src.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".jp2"))
            if src.is_dir()
            else [src]
        )
    if not paths:
        raise DataError(f"{source}: holds no GeoTIFF/JP2 band files")
    if len(paths) == 1 and _open_checked(paths[0]).count > 1:
        refs, prov, cloud_band = _multiband(paths[0], model_bands, band_names, offset)
        if mask is None and cloud_band is not None:
            mask, mask_index, mask_kind = str(paths[0]), cloud_band[0], cloud_band[1]
            prov["cloud_mask"] = f"band {mask_index} ({mask_kind})"
    else:
        for p in paths:
            stem = normalize_band(p.stem)
            if stem is None:
                if re.search(r"scl|cloud|mask", p.stem, re.I) and mask is None:
                    mask, mask_kind = p, "scl" if re.search("scl", p.stem, re.I) else "binary"
                continue
            with _open_checked(p) as ds:
                refs[stem] = BandRef(str(p), 1, offset if offset is not None else geotiff_offset(ds, str(p)))
        prov = {"inputs": [str(p) for p in paths], "layout": "one file per band"}
    return _build(refs, model_bands, prov, mask, mask_kind, mask_index)


def _multiband(
    path: Path, model_bands: list[str], band_names: list[str] | None, offset: float | None
) -> tuple[dict[str, BandRef], dict[str, Any], tuple[int, str] | None]:
    with _open_checked(path) as ds:
        names = (
            [canonical_band(b) for b in band_names]
            if band_names
            else [normalize_band(d) if d else None for d in ds.descriptions]
        )
        how = "given" if band_names else "band descriptions"
        if band_names and len(band_names) != ds.count:
            raise DataError(f"{path}: {len(band_names)} band names given for {ds.count} bands")
        if not any(names):
            if ds.count != len(model_bands):
                raise DataError(
                    f"{path} has {ds.count} unnamed bands and the model needs {len(model_bands)} "
                    f"({', '.join(model_bands)}); name them with --bands B01,B02,..."
                )
            names, how = list(model_bands), "assumed to be the model's order (the file names no bands)"
        off = offset if offset is not None else geotiff_offset(ds, str(path))
        found = [(i + 1, MASK_BANDS[d.strip().lower()]) for i, d in enumerate(ds.descriptions)
                 if d and d.strip().lower() in MASK_BANDS]  # fmt: skip
        # The finest layer wins: SCL (20 m) or cloud probability over QA60's 60 m bitmask.
        cloud = min(found, key=lambda f: ["scl", "probability", "binary", "qa60"].index(f[1]), default=None)
    refs = {n: BandRef(str(path), i + 1, off) for i, n in enumerate(names) if n}
    return refs, {"inputs": [str(path)], "layout": "multi-band file", "band_names": how}, cloud


def _read_item(where: Path | str) -> dict[str, Any]:
    """An Item's JSON, read with a size bound; a URL through the URL guard (no redirects)."""
    from eodeploy.netguard import current_policy, fetch_bytes

    limit = current_policy().max_bytes
    if isinstance(where, Path):
        if where.stat().st_size > limit:
            raise DataError(f"{where}: {where.stat().st_size} bytes, over the {limit}-byte limit for an Item")
        return json.loads(where.read_text())  # type: ignore[no-any-return]
    return json.loads(fetch_bytes(where))  # type: ignore[no-any-return]


def _asset_path(item_path: Path | str, href: str) -> str:
    """Where an asset is read: a remote href only through the URL guard (http(s), no private
    addresses), a local one only inside its Item's folder (no ``../`` or absolute escapes)."""
    from urllib.parse import urljoin

    from eodeploy.netguard import BlockedURLError, check_url

    try:
        if "://" in href or href.startswith("file:"):
            return check_url(href)
        if isinstance(item_path, str):
            return check_url(urljoin(item_path, href))
    except BlockedURLError as exc:
        raise DataError(f"{item_path}: asset {href!r} refused: {exc}") from exc
    folder = item_path.parent.resolve()
    path = (folder / href).resolve()
    if not path.is_relative_to(folder):
        raise DataError(
            f"{item_path}: asset {href!r} points outside the Item's folder {folder}; local assets "
            "must lie in or below it"
        )
    return str(path)


def _open_stac(
    item_path: Path | str, model_bands: list[str], mask: Any, mask_kind: str, offset: float | None
) -> Scene:
    """A STAC Item from a file or a URL (a STAC API's /collections/C/items/ID); assets are read
    where they are: local paths, or http(s) URLs through GDAL's /vsicurl/ range requests."""
    try:
        item = _read_item(item_path)
    except DataError:
        raise
    except (OSError, ValueError) as exc:  # BlockedURLError and PayloadTooLargeError are ValueErrors
        raise DataError(f"{item_path}: not a readable STAC Item ({exc})") from exc
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise DataError(f"{item_path}: not a STAC Item (a GeoJSON Feature with assets)")
    props = item.get("properties", {})
    refs: dict[str, BandRef] = {}
    for key, asset in (item.get("assets") or {}).items():
        if not isinstance(asset, dict):
            raise DataError(f"{item_path}: asset {key!r} is not an object with an href")
        bands = asset.get("eo:bands") or asset.get("bands") or [{}]
        first = bands[0] if isinstance(bands, list) and bands and isinstance(bands[0], dict) else {}
        name = normalize_band(str(first.get("name", "") or "")) or normalize_band(key)
        is_mask = key.lower() == "scl" and mask is None
        if name is None and not is_mask:
            continue  # thumbnails, metadata...: never opened, never checked
        href = asset.get("href")
        if not isinstance(href, str) or not href:
            raise DataError(f"{item_path}: asset {key!r} has no href; every asset needs one")
        path = _asset_path(item_path, href)
        if is_mask or name is None:
            mask, mask_kind = (path, "scl") if is_mask else (mask, mask_kind)
            continue
        raster = (asset.get("raster:bands") or [{}])[0]
        off = offset
        if off is None:  # physical offset -0.1 at scale 1e-4 is the DN offset -1000 of baseline >= 04.00
            scale = raster.get("scale", 1.0) or 1.0
            off = raster.get("offset", 0.0) / scale if raster.get("offset") else baseline_offset(
                {"PROCESSING_BASELINE": str(props.get("s2:processing_baseline", ""))} if props.get("s2:processing_baseline") else {}, 0.0
            )  # fmt: skip
        refs[name] = BandRef(path, 1, float(off))
    prov = {
        "inputs": [str(item_path)],
        "layout": "STAC Item",
        "stac_id": item.get("id"),
        "datetime": props.get("datetime"),
    }
    return _build(refs, model_bands, prov, mask, mask_kind)


def _build(
    refs: dict[str, BandRef],
    model_bands: list[str],
    prov: dict[str, Any],
    mask: Any,
    mask_kind: str,
    mask_index: int = 1,
) -> Scene:
    missing = [b for b in model_bands if b not in refs]
    if missing:
        raise DataError(
            f"the input lacks band(s) {', '.join(missing)} that the model needs "
            f"(found: {', '.join(sorted(refs)) or 'none'}); give a scene with those bands"
        )
    # The reference grid is that of the finest band the model uses (10 m for Sentinel-2).
    grids = []
    for b in model_bands:
        with _open_checked(refs[b].path) as ds:
            if ds.crs is None:
                raise DataError(
                    f"{refs[b].path} has no CRS; a georeferenced GeoTIFF is needed to map and measure areas"
                )
            grids.append((abs(ds.transform.a), ds.crs, ds.transform, ds.width, ds.height))
    _, crs, transform, width, height = min(grids, key=lambda g: g[0])
    prov["offsets"] = {b: refs[b].offset for b in model_bands if refs[b].offset}
    return Scene(
        {b: refs[b] for b in model_bands}, list(model_bands), crs, transform, width, height,
        str(mask) if mask else None, mask_kind, mask_index, prov,
    )  # fmt: skip
