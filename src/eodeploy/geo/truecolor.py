"""``truecolor.tif``: the input scene as a display RGB COG on the class map's grid, so the dashboard
can show what the model saw (clouds included) under or beside the class map.

The red, green and blue bands are found by name (B04, B03, B02), whatever bands the model uses;
a scene without them gets no true-colour image. The display stretch is EuroSAT's 8-bit rendering
(reflectance 0-0.275 linear onto 0-255, ``runtime.preprocess.convert_units`` to "rgb8"): the one
rendering the project already has, fixed, so two dates of an area look alike and a cloud does not
darken the land. A per-scene 2-98 % stretch did: on the Tawi-Tawi scene clouds pushed the 98th
percentile to reflectance 0.63 and the forest (0.03) came out nearly black.

Valid pixels map to 1..255 and nodata to 0; which pixels are valid is the file's internal mask
(lossless), so the picture itself can be JPEG (YCbCr, quality 85): 7x smaller than DEFLATE on the
Tawi-Tawi scene (229 KB against 1.6 MB), where nodata=0 alone would not survive lossy compression.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.errors import DataError
from eodeploy.geo.outputs import to_cog
from eodeploy.geo.sources import Scene, open_scene
from eodeploy.runtime.preprocess import convert_units

#: Red, green, blue as Sentinel-2 band ids (``package.bands`` maps 'red', 'B4', 'B04 (red)' to them).
RGB_BANDS = ["B04", "B03", "B02"]
#: Rows x columns written at a time: memory stays flat whatever the scene size.
BLOCK_ROWS, BLOCK_COLS = 512, 2048


def rgb_scene(scene: Scene, source: Any, **open_args: Any) -> Scene | None:
    """The scene's red, green and blue bands on ``scene``'s grid (crop included), or None when the
    input has no bands named so. The model's own band references are used when it reads all three
    (an unnamed file then follows the model's assumed order, as the class map does); otherwise the
    input is opened again for them, and unnamed bands are never guessed to be RGB."""
    if all(b in scene.bands for b in RGB_BANDS):
        refs = {b: scene.bands[b] for b in RGB_BANDS}
        units = scene.units
    else:
        try:
            other = open_scene(source, RGB_BANDS, **open_args)
        except DataError:
            return None
        if "assumed" in str(other.provenance.get("band_names", "")):
            other.close()
            return None
        refs, units = dict(other.bands), other.units
        other.close()
    # No cloud mask: the picture shows the clouds.
    return Scene(
        refs, list(RGB_BANDS), scene.crs, scene.transform, scene.width, scene.height,
        provenance={}, row_off=scene.row_off, col_off=scene.col_off, units=units,
    )  # fmt: skip


def to_display(raw: np.ndarray, nodata: np.ndarray, units: str) -> np.ndarray:
    """(3, h, w) raw values in ``units`` -> uint8: EuroSAT's rendering, valid pixels 1..255, nodata 0."""
    out = np.clip(np.nan_to_num(convert_units(raw, units, "rgb8")), 1, 255).round().astype(np.uint8)
    out[:, nodata] = 0
    return out


def write_truecolor(rgb: Scene, dst: Path, work: Path) -> None:
    """Write the stretched RGB and its mask to a working GeoTIFF block by block, then to the COG
    ``dst`` (AVERAGE overviews: a picture may be averaged, unlike a class map)."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.windows import Window

    profile = {
        "driver": "GTiff", "width": rgb.width, "height": rgb.height, "count": 3, "dtype": "uint8",
        "crs": rgb.crs, "transform": rgb.transform, "tiled": True, "blockxsize": 512,
        "blockysize": 512, "photometric": "RGB", "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    try:
        with rasterio.open(work, "w", **profile) as out:
            out.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
            out.update_tags(STRETCH=f"EuroSAT 8-bit rendering of {rgb.units}: reflectance 0-0.275 onto 0-255")
            for i, band in enumerate(RGB_BANDS, 1):
                out.set_band_description(i, band)
            for r0 in range(0, rgb.height, BLOCK_ROWS):
                h = min(BLOCK_ROWS, rgb.height - r0)
                for c0 in range(0, rgb.width, BLOCK_COLS):
                    w = min(BLOCK_COLS, rgb.width - c0)
                    raw, nodata, _ = rgb.read(r0, c0, h, w)
                    window = Window(c0, r0, w, h)
                    out.write(to_display(raw, nodata, rgb.units), window=window)
                    out.write_mask(np.where(nodata, 0, 255).astype(np.uint8), window=window)
        to_cog(work, dst, "AVERAGE", compress="JPEG")
    finally:
        rgb.close()
        work.unlink(missing_ok=True)
