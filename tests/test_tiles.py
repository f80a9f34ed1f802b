"""Map tiles of observation COGs: class colours of the pixels beneath, transparent nodata, MODE
overviews, the true-colour COG, bad tile addresses, and the tile cache with its ETags."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, linear_onnx, linear_spec
from eodeploy.geo import predict_scene
from eodeploy.geo.infer import NODATA
from eodeploy.package import ModelRepository
from test_scene import BANDS, LEFT, RIGHT, scene_array, write_scene

S2 = SHARED / "data" / "sentinel2"
MODELS = Path(__file__).resolve().parents[1] / "models"
ORIGIN = (500000.0, 5000000.0)  # EPSG:32633: about 15.0 E, 45.1 N


def produced(repo: ModelRepository, tmp_path: Path, arr: np.ndarray | None = None, **kwargs: object) -> Path:
    """A real observation folder: the tiny model over a generated scene with a nodata corner."""
    if arr is None:
        arr = scene_array()
        arr[:, :20, :30] = 0  # nodata (the file's nodata is 0)
    src = write_scene(tmp_path / "scene.tif", arr)
    out = tmp_path / "out"
    predict_scene(repo.get("tiny"), src, out, stride=32, polygons=False, **kwargs)  # type: ignore[arg-type]
    return out


def decode(png: bytes) -> np.ndarray:
    from PIL import Image

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


def tile_of(lon: float, lat: float, z: int) -> tuple[int, int, int]:
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, z)
    return t.z, t.x, t.y


def lonlat(x: float, y: float, crs: str = "EPSG:32633") -> tuple[float, float]:
    from pyproj import Transformer

    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(x, y)  # type: ignore[no-any-return]


def pixels_beneath(tif: Path, z: int, x: int, y: int) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel centre of tile z/x/y: the COG's value beneath it and whether it is inside."""
    import morecantile
    import rasterio
    from pyproj import Transformer

    b = morecantile.tms.get("WebMercatorQuad").xy_bounds(morecantile.Tile(x, y, z))
    step_x, step_y = (b.right - b.left) / 256, (b.top - b.bottom) / 256
    mx, my = np.meshgrid(b.left + (np.arange(256) + 0.5) * step_x, b.top - (np.arange(256) + 0.5) * step_y)
    with rasterio.open(tif) as src:
        data = src.read(1)
        px, py = Transformer.from_crs("EPSG:3857", src.crs, always_xy=True).transform(mx, my)
        cols, rows = ~src.transform * (px, py)
    rows, cols = np.floor(rows).astype(int), np.floor(cols).astype(int)
    inside = (rows >= 0) & (rows < data.shape[0]) & (cols >= 0) & (cols < data.shape[1])
    values = np.full((256, 256), -1)
    values[inside] = data[rows[inside], cols[inside]]
    return values, inside


# --- MODE overviews of class maps ---------------------------------------------------------------


def test_to_cog_mode_overviews_take_the_majority_not_a_sample(tmp_path: Path) -> None:
    """Every 2x2 block holds three pixels of one class and one of another, the odd one anywhere:
    a MODE overview is the majority everywhere; nearest decimation would keep the odd pixel in
    about a quarter of the blocks."""
    import rasterio
    from rasterio.transform import from_origin

    from eodeploy.geo.outputs import to_cog

    rng = np.random.default_rng(3)
    n = 1024
    major = rng.integers(0, 5, (n // 2, n // 2)).astype(np.uint8)
    data = np.repeat(np.repeat(major, 2, 0), 2, 1)
    odd = rng.integers(0, 4, major.shape)
    rr, cc = np.indices(major.shape)
    data[2 * rr + odd // 2, 2 * cc + odd % 2] = (major + 1 + rng.integers(0, 4, major.shape)) % 5
    work, cog = tmp_path / "work.tif", tmp_path / "classes.tif"
    with rasterio.open(work, "w", driver="GTiff", width=n, height=n, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(*ORIGIN, 10, 10), nodata=NODATA, tiled=True) as dst:  # fmt: skip
        dst.write(data, 1)
    to_cog(work, cog, "MODE")
    with rasterio.open(cog) as src:
        assert src.overviews(1) == [2]
        assert src.tags()["OVR_RESAMPLING_ALG"] == "MODE"
        ovr = src.read(1, out_shape=(n // 2, n // 2))  # served from the overview
    np.testing.assert_array_equal(ovr, major)
    for dy in (0, 1):  # whichever pixel nearest decimation samples, it is not the overview
        for dx in (0, 1):
            assert (data[dy::2, dx::2] != ovr).mean() > 0.2


def test_produced_class_map_has_mode_overviews(repo: ModelRepository, tmp_path: Path) -> None:
    """A class map large enough for overviews (1100 px wide) gets MODE ones, recorded in the file;
    where a 2x2 block has a clear majority, the overview pixel is that class."""
    import rasterio

    arr = scene_array(600, 1100)
    arr[:, 300:, 550:] = scene_array(300, 1100)[:, :, :550]  # a Forest block in the SeaLake half
    out = produced(repo, tmp_path, arr)
    with rasterio.open(out / "classes.tif") as src:
        assert src.overviews(1)[0] == 2
        assert src.tags()["OVR_RESAMPLING_ALG"] == "MODE"
        full = src.read(1)
        ovr = src.read(1, out_shape=(300, 550))
    assert {LEFT, RIGHT} <= set(np.unique(full).tolist())
    blocks = full.reshape(300, 2, 550, 2).transpose(0, 2, 1, 3).reshape(300, 550, 4)
    counts = np.stack([(blocks == v).sum(-1) for v in range(256)], -1)
    clear = counts.max(-1) >= 3
    np.testing.assert_array_equal(ovr[clear], counts.argmax(-1)[clear])
    with rasterio.open(out / "confidence.tif") as src:
        assert src.tags()["OVR_RESAMPLING_ALG"] == "AVERAGE"


# --- truecolor.tif ---------------------------------------------------------------------------------


def test_truecolor_cog_on_the_class_grid_with_transparent_nodata(
    repo: ModelRepository, tmp_path: Path
) -> None:
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    out = produced(repo, tmp_path)
    tc = out / "truecolor.tif"
    assert cog_validate(str(tc))[0]
    with rasterio.open(tc) as t, rasterio.open(out / "classes.tif") as c:
        assert (t.count, t.dtypes, t.shape, t.transform, t.crs) == (
            3,
            ("uint8",) * 3,
            c.shape,
            c.transform,
            c.crs,
        )
        assert t.descriptions == ("B04", "B03", "B02")
        assert t.compression.name == "jpeg"
        rgb, mask = t.read(), t.dataset_mask()
        classes = c.read(1)
    assert (mask[:20, :30] == 0).all() and (mask == 0).sum() == 20 * 30  # exactly the nodata corner
    assert (classes[:20, :30] == NODATA).all()
    # Forest spectrum B04 700, B03 900, B02 1000 DN in EuroSAT's rendering (x 255 / 2750).
    left = rgb[:, 40:, 10:90].reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(left, [700 * 255 / 2750, 900 * 255 / 2750, 1000 * 255 / 2750], atol=2)
    asset = json.loads((out / "item.json").read_text())["assets"]["truecolor"]
    assert asset["href"] == "./truecolor.tif" and asset["roles"] == ["overview", "visual"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["truecolor_seconds"] is not None


def test_truecolor_follows_the_crop_to_an_area(repo: ModelRepository, tmp_path: Path) -> None:
    import rasterio
    from shapely.geometry import box

    aoi = box(*lonlat(ORIGIN[0] + 700, ORIGIN[1] - 1200), *lonlat(ORIGIN[0] + 1300, ORIGIN[1] - 800))
    out = produced(repo, tmp_path, scene_array(), aoi=aoi)
    with rasterio.open(out / "truecolor.tif") as t, rasterio.open(out / "classes.tif") as c:
        assert c.width < 200 and (t.shape, t.transform) == (c.shape, c.transform)
        assert t.dataset_mask().all()


def test_truecolor_whatever_the_model_bands_and_none_without_rgb(tmp_path: Path) -> None:
    """Red, green and blue are found by name even when the model reads none of them; a scene
    without them gets no true-colour image, and no error."""
    import rasterio

    spec = linear_spec("nir")
    spec = dataclasses.replace(spec, bands=["B05", "B06", "B07"])
    pkg = ModelRepository(tmp_path / "m").add("nir", linear_onnx(np.ones((3, 3)), np.zeros(3)), spec)
    arr = scene_array()
    full = write_scene(tmp_path / "all.tif", arr)
    predict_scene(pkg, full, tmp_path / "a", polygons=False)
    with rasterio.open(tmp_path / "a" / "truecolor.tif") as t:
        assert t.descriptions == ("B04", "B03", "B02") and t.dataset_mask().all()
    no_rgb = [BANDS.index(b) for b in ("B05", "B06", "B07")]
    part = write_scene(tmp_path / "nir.tif", arr[no_rgb], names=["B05", "B06", "B07"])
    predict_scene(pkg, part, tmp_path / "b", polygons=False)
    assert (tmp_path / "b" / "classes.tif").exists() and not (tmp_path / "b" / "truecolor.tif").exists()
    assert "truecolor" not in json.loads((tmp_path / "b" / "item.json").read_text())["assets"]
    assert json.loads((tmp_path / "b" / "stats.json").read_text())["truecolor_seconds"] is None


@pytest.mark.shared_data
@pytest.mark.skipif(not S2.is_dir(), reason="../shared/data is not here")
def test_truecolor_of_the_real_lahinch_scene(tmp_path: Path) -> None:
    """The 13-band L1C scene through the 13-band model: its NaN pixels are the masked ones."""
    import rasterio

    src = S2 / "lahinch_IE_s2l1c_2017-09-18.tif"
    predict_scene(ModelRepository(MODELS).get("eurosat-cnn"), src, tmp_path / "o", polygons=False)
    with rasterio.open(src) as s:
        missing = ~np.isfinite(s.read([2, 3, 4])).all(axis=0)
    with rasterio.open(tmp_path / "o" / "truecolor.tif") as t:
        assert (t.count, t.dtypes[0], t.shape) == (3, "uint8", missing.shape)
        np.testing.assert_array_equal(t.dataset_mask() == 0, missing)
        assert missing.any() and 40 < t.read()[:, ~missing].mean() < 200
