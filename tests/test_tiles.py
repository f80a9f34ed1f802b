"""Map tiles of observation COGs: class colours of the pixels beneath, transparent nodata, MODE
overviews, the true-colour COG, bad tile addresses, and the tile cache with its ETags."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, linear_onnx, linear_spec
from eodeploy.errors import InvalidInputError, NotFoundError
from eodeploy.geo import predict_scene
from eodeploy.geo.infer import NODATA
from eodeploy.package import ModelRepository
from test_scene import BANDS, LEFT, RIGHT, scene_array, write_scene

S2 = SHARED / "data" / "sentinel2"
MODELS = Path(__file__).resolve().parents[1] / "models"
ORIGIN = (500000.0, 5000000.0)  # EPSG:32633: about 15.0 E, 45.1 N


def produced(
    repo: ModelRepository,
    tmp_path: Path,
    arr: np.ndarray | None = None,
    origin: tuple[float, float] = ORIGIN,
    **kwargs: object,
) -> Path:
    """A real observation folder: the tiny model over a generated scene with a nodata corner."""
    if arr is None:
        arr = scene_array()
        arr[:, :20, :30] = 0  # nodata (the file's nodata is 0)
    src = write_scene(tmp_path / "scene.tif", arr, origin=origin)
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


# --- tiles -----------------------------------------------------------------------------------------


def test_class_tile_shows_the_class_colours_beneath_and_nodata_transparent(
    repo: ModelRepository, tmp_path: Path
) -> None:
    from eodeploy.web.tiles import colormap_for, render_tile

    out = produced(repo, tmp_path)
    cmap = colormap_for(repo.get("tiny").spec)
    z, x, y = tile_of(*lonlat(ORIGIN[0] + 150, ORIGIN[1] - 100), 16)  # over the nodata corner
    tile = render_tile(out / "classes.tif", "classes", z, x, y, cache=None)
    assert tile is not None
    rgba = decode(tile.png)
    values, inside = pixels_beneath(out / "classes.tif", z, x, y)
    assert inside.any() and (~inside).any() and (values == NODATA).any() and (values == LEFT).any()
    lut = np.array([cmap[v] for v in range(256)], np.uint8)
    expected = np.where(inside[..., None], lut[np.clip(values, 0, 255)], 0)
    assert (rgba == expected).all(axis=-1).mean() > 0.99  # off only where a pixel edge is a rounding away
    assert (rgba[values == NODATA, 3] == 0).mean() > 0.99 and (rgba[~inside, 3] == 0).mean() > 0.99
    assert (rgba[values == LEFT] == cmap[LEFT]).all(axis=-1).mean() > 0.99
    # The same colours from the item's classification:classes, and from the file's own table.
    item = json.loads((out / "item.json").read_text())
    assert colormap_for(item["assets"]["classes"]["classification:classes"]) == cmap
    given = render_tile(out / "classes.tif", "classes", z, x, y, colormap=cmap, cache=None)
    assert given is not None and (decode(given.png) == rgba).all()


def test_class_tile_of_a_speckled_map_is_never_interpolated(tmp_path: Path) -> None:
    """Every pixel its own random class (nodata among them): any interpolation would show up as
    colours of the wrong class or no class; nearest resampling gives exactly the pixels beneath,
    zoomed in or out."""
    import rasterio
    from rasterio.transform import from_origin

    from eodeploy.geo.outputs import to_cog
    from eodeploy.web.tiles import colormap_for, render_tile

    spec = linear_spec()
    cmap = colormap_for(spec)
    data = np.random.default_rng(5).choice(np.array([0, 1, 2, NODATA], np.uint8), (300, 300))
    work, tif = tmp_path / "work.tif", tmp_path / "classes.tif"
    with rasterio.open(work, "w", driver="GTiff", width=300, height=300, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(*ORIGIN, 10, 10), nodata=NODATA) as dst:  # fmt: skip
        dst.write(data, 1)
    to_cog(work, tif, "MODE")
    lut = np.array([cmap[v] for v in range(256)], np.uint8)
    palette = {tuple(c) for c in lut}
    for zoom in (17, 13):
        z, x, y = tile_of(*lonlat(ORIGIN[0] + 1500, ORIGIN[1] - 1500), zoom)
        tile = render_tile(tif, "classes", z, x, y, colormap=cmap, cache=None)
        assert tile is not None
        rgba = decode(tile.png)
        assert {tuple(c) for c in rgba.reshape(-1, 4)} <= palette
        if zoom == 17:  # 1.2 m pixels over 10 m ones: each tile pixel has one pixel beneath
            values, inside = pixels_beneath(tif, z, x, y)
            expected = np.where(inside[..., None], lut[np.clip(values, 0, 255)], 0)
            assert inside.all() and (rgba == expected).all(axis=-1).mean() > 0.99


def test_truecolor_tile_has_the_mask_as_alpha(repo: ModelRepository, tmp_path: Path) -> None:
    from eodeploy.web.tiles import render_tile

    out = produced(repo, tmp_path)
    z, x, y = tile_of(*lonlat(ORIGIN[0] + 150, ORIGIN[1] - 100), 16)
    tile = render_tile(out / "truecolor.tif", "truecolor", z, x, y, cache=None)
    assert tile is not None
    rgba = decode(tile.png)
    values, inside = pixels_beneath(out / "classes.tif", z, x, y)  # same grid as the picture
    valid = inside & (values != NODATA)
    assert (rgba[~inside, 3] == 0).mean() > 0.99 and (rgba[values == NODATA, 3] == 0).mean() > 0.97
    assert (rgba[valid, 3] == 255).mean() > 0.97
    forest = rgba[valid & (values == LEFT)][:, :3].mean(axis=0)
    np.testing.assert_allclose(forest, [700 * 255 / 2750, 900 * 255 / 2750, 1000 * 255 / 2750], atol=4)


def test_tiles_are_the_pixels_of_rio_tilers_own_reader(repo: ModelRepository, tmp_path: Path) -> None:
    """``render_tile`` warps straight onto the tile's grid from the overview GDAL would pick; a
    plain ``Reader.tile`` warps at the file's resolution and decimates. Same pixels, every zoom
    from the whole map in one tile (overviews) to finer than the pixels. At 60 N a z12 tile's
    pixels are 1.9 of the map's: GDAL reads the 2x overview there (its 1.2 oversampling
    threshold), a "finer than the tile" rule would read full resolution."""
    import morecantile
    from rio_tiler.errors import TileOutsideBounds
    from rio_tiler.io import Reader

    from eodeploy.web.tiles import cog_bounds_wgs84, colormap_for, render_tile

    arr = scene_array(600, 1100)
    arr[:, 100:400, 200:500] = scene_array(300, 1100)[:, :, 600:900]  # a SeaLake block in the Forest half
    arr[:, :20, :30] = 0
    out = produced(repo, tmp_path, arr, origin=(500000.0, 6650000.0))
    lut = np.array([colormap_for(repo.get("tiny").spec)[v] for v in range(256)], np.uint8)
    tms = morecantile.tms.get("WebMercatorQuad")
    compared = 0
    for kind in ("classes", "truecolor"):
        tif = out / f"{kind}.tif"
        with Reader(str(tif)) as src:
            assert src.dataset.overviews(1) == [2, 4]
            for z in range(10, 18):
                tiles = list(tms.tiles(*cog_bounds_wgs84(tif), zooms=[z]))
                for t in tiles[:: max(1, len(tiles) // 4)]:
                    tile = render_tile(tif, kind, t.z, t.x, t.y, cache=None)
                    try:
                        ref = src.tile(
                            t.x, t.y, t.z, reproject_method="nearest" if kind == "classes" else "bilinear"
                        )
                    except TileOutsideBounds:
                        assert tile is None
                        continue
                    assert tile is not None
                    if kind == "classes":
                        expected = np.where(ref.mask[..., None] > 0, lut[ref.data[0]], 0)
                    else:
                        expected = np.dstack([*ref.data, ref.mask])
                    np.testing.assert_array_equal(decode(tile.png), expected)
                    compared += 1
    assert compared > 20


def test_tiles_outside_the_map_and_bounds(repo: ModelRepository, tmp_path: Path) -> None:
    from eodeploy.web.tiles import cog_bounds_wgs84, render_tile

    out = produced(repo, tmp_path)
    west, south, east, north = cog_bounds_wgs84(out / "classes.tif")
    bbox = json.loads((out / "item.json").read_text())["bbox"]
    np.testing.assert_allclose([west, south, east, north], bbox, atol=1e-6)
    assert render_tile(out / "classes.tif", "classes", *tile_of(west - 0.01, north, 16)) is None
    assert render_tile(out / "truecolor.tif", "truecolor", *tile_of(-70.0, -30.0, 9)) is None
    assert render_tile(out / "classes.tif", "classes", *tile_of(west, north, 0)) is not None  # the world


@pytest.mark.parametrize(
    ("kind", "z", "x", "y", "error"),
    [
        ("classes", -1, 0, 0, InvalidInputError),
        ("classes", 25, 0, 0, InvalidInputError),
        ("classes", 3, -1, 0, InvalidInputError),
        ("classes", 3, 0, -2, InvalidInputError),
        ("classes", 3, 8, 0, NotFoundError),
        ("classes", 3, 0, 8, NotFoundError),
        ("classes", 0, 1, 0, NotFoundError),
        ("confidence", 3, 0, 0, InvalidInputError),
        ("../classes", 3, 0, 0, InvalidInputError),
    ],
)
def test_bad_tile_addresses_are_clear_errors(
    repo: ModelRepository, tmp_path: Path, kind: str, z: int, x: int, y: int, error: type[Exception]
) -> None:
    from eodeploy.web.tiles import render_tile, tile_etag

    tif = tmp_path / "classes.tif"
    tif.write_bytes(b"")  # never opened: the address is refused first
    with pytest.raises(error):
        render_tile(tif, kind, z, x, y)
    with pytest.raises(error):
        tile_etag(tif, kind, z, x, y)


def test_missing_or_broken_map(tmp_path: Path) -> None:
    from eodeploy.errors import DataError
    from eodeploy.web.tiles import cog_bounds_wgs84, render_tile

    with pytest.raises(NotFoundError, match="no such map"):
        render_tile(tmp_path / "gone.tif", "classes", 3, 1, 1)
    with pytest.raises(NotFoundError):
        cog_bounds_wgs84(tmp_path / "gone.tif")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="cannot be read"):
        render_tile(tmp_path / "bad.tif", "classes", 3, 1, 1, cache=None)


def test_cache_hit_same_bytes_same_etag_and_a_new_file_a_new_etag(
    repo: ModelRepository, tmp_path: Path
) -> None:
    from eodeploy.web.tiles import TileCache, render_tile, tile_etag

    out = produced(repo, tmp_path)
    tif = out / "classes.tif"
    z, x, y = tile_of(*lonlat(ORIGIN[0] + 1000, ORIGIN[1] - 750), 15)
    cache = TileCache()
    first = render_tile(tif, "classes", z, x, y, cache=cache)
    again = render_tile(tif, "classes", z, x, y, cache=cache)
    assert first is not None and again is first and (cache.hits, cache.misses) == (1, 1)
    uncached = render_tile(tif, "classes", z, x, y, cache=None)
    assert uncached == first and first.etag == tile_etag(tif, "classes", z, x, y)
    assert first.etag.startswith('"') and first.etag.endswith('"')
    other = render_tile(out / "truecolor.tif", "truecolor", z, x, y, cache=cache)
    assert other is not None and other.etag != first.etag
    st = tif.stat()
    os.utime(tif, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a re-run replaces the file
    fresh = render_tile(tif, "classes", z, x, y, cache=cache)
    assert fresh is not None and fresh is not first and fresh.etag != first.etag and cache.misses == 3


def test_cache_is_bounded_and_thread_safe(repo: ModelRepository, tmp_path: Path) -> None:
    import morecantile

    from eodeploy.web.tiles import TileCache, cog_bounds_wgs84, render_tile

    out = produced(repo, tmp_path)
    tiles = list(
        morecantile.tms.get("WebMercatorQuad").tiles(*cog_bounds_wgs84(out / "classes.tif"), zooms=[17])
    )
    assert len(tiles) >= 12
    truth = {t: render_tile(out / "classes.tif", "classes", t.z, t.x, t.y, cache=None) for t in tiles}
    biggest = max(len(v.png) for v in truth.values() if v)
    cache = TileCache(max_bytes=4 * biggest)
    errors: list[BaseException] = []

    def work(order: list[morecantile.Tile]) -> None:
        try:
            for t in order * 3:
                assert render_tile(out / "classes.tif", "classes", t.z, t.x, t.y, cache=cache) == truth[t]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(tiles[i:] + tiles[:i],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert 0 < len(cache) and sum(len(v.png) for v in cache._items.values() if v) <= 4 * biggest
    assert cache.hits > 0 and cache.misses > len(tiles)  # evictions forced re-renders


def test_colormap_gives_every_value_and_refuses_bad_colours() -> None:
    from eodeploy.web.tiles import TRANSPARENT, colormap_for

    spec = linear_spec()
    cmap = colormap_for(spec)
    assert len(cmap) == 256 and cmap[NODATA] == TRANSPARENT and cmap[200] == TRANSPARENT
    first = spec.classes[0].color.lstrip("#")
    assert cmap[0] == (int(first[:2], 16), int(first[2:4], 16), int(first[4:], 16), 255)
    with pytest.raises(InvalidInputError):
        colormap_for([{"value": NODATA, "name": "x", "color_hint": "ff0000"}])
    with pytest.raises(InvalidInputError):
        colormap_for([{"value": 1, "name": "x", "color_hint": "red"}])
