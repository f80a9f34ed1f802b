"""Scene inference on generated georeferenced scenes: outputs, areas, band matching, masks,
mixed resolutions, STAC items, Dask, and every bad input the command handles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASSES, SPECTRA, reference_proba, require
from eodeploy.errors import DataError
from eodeploy.geo import OutputExistsError, predict_scene
from eodeploy.geo.infer import NODATA
from eodeploy.geo.tiling import blend_weights, offsets
from eodeploy.package import ModelRepository


def _expected(name: str) -> int:
    """The tiny (random linear) model's class for a uniform patch of one spectrum, in NumPy."""
    return int(
        reference_proba(
            np.array(SPECTRA[name], float)[None, :, None, None] * np.ones((1, 13, 64, 64))
        ).argmax()
    )


LEFT, RIGHT = _expected("Forest"), _expected("SeaLake")  # the two halves of the generated scenes
BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]


def scene_array(h: int = 150, w: int = 200, seed: int = 0) -> np.ndarray:
    """Left half Forest spectra, right half SeaLake spectra (classes LEFT and RIGHT), EuroSAT band order."""
    rng = np.random.default_rng(seed)
    arr = np.empty((13, h, w), np.float64)
    arr[:, :, : w // 2] = np.array(SPECTRA["Forest"])[:, None, None]
    arr[:, :, w // 2 :] = np.array(SPECTRA["SeaLake"])[:, None, None]
    return np.clip(arr + rng.normal(0, 30, arr.shape), 1, 18000).astype(np.uint16)


def write_scene(path: Path, arr: np.ndarray, names: list[str] | None = BANDS, crs: str | None = "EPSG:32633",
                res: float = 10.0, origin: tuple[float, float] = (500000, 5000000), nodata: int | None = 0,
                tags: dict[str, str] | None = None) -> Path:  # fmt: skip
    import rasterio
    from rasterio.transform import from_origin

    profile = {"driver": "GTiff", "width": arr.shape[2], "height": arr.shape[1], "count": arr.shape[0],
               "dtype": arr.dtype, "transform": from_origin(origin[0], origin[1], res, res), "nodata": nodata}  # fmt: skip
    if crs:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
        if names:
            for i, n in enumerate(names, 1):
                dst.set_band_description(i, n)
        if tags:
            dst.update_tags(**tags)
    return path


def read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1)


def test_window_grid_and_taper() -> None:
    assert offsets(150, 64, 32) == [0, 32, 64, 86]  # last window ends at the edge
    assert offsets(63, 64, 32) == []
    w = blend_weights(64)
    assert w.max() == 1 and w[0, 0] < w[16, 16] < w[32, 32] and np.allclose(w, w.T) and w.min() > 0
    assert w[32, 0] < 0.001  # vanishes at the window edge (no seam there)
    flat = blend_weights(64, left=True)
    assert flat[32, 0] == flat[32, 31] and flat[32, 63] < 0.001


def test_scene_outputs_areas_and_nodata(repo: ModelRepository, tmp_path: Path) -> None:
    from rio_cogeo.cogeo import cog_validate

    arr = scene_array()
    arr[:, :20, :30] = 0  # a nodata corner
    order = BANDS[::-1]  # bands stored in reverse order: matched by name
    src = write_scene(tmp_path / "scene.tif", arr[::-1].copy(), names=order)
    out = tmp_path / "out"
    stats = predict_scene(repo.get("tiny"), src, out, stride=32)
    for name in (
        "classes.tif",
        "confidence.tif",
        "polygons.geojson",
        "stats.json",
        "item.json",
        "preview.png",
    ):
        assert (out / name).is_file(), name
    for cog in ("classes.tif", "confidence.tif"):
        valid, errors, _ = cog_validate(str(out / cog))
        assert valid, errors
    classes = read(out / "classes.tif")
    assert LEFT != RIGHT and classes[75, 40] == LEFT and classes[75, 160] == RIGHT
    assert (classes[:20, :30] == NODATA).all() and classes[100, 100] != NODATA
    assert stats["nodata_ha"] == pytest.approx(20 * 30 * 100 / 1e4, rel=0.01)
    left, right = stats["areas_ha"][CLASSES[LEFT]], stats["areas_ha"][CLASSES[RIGHT]]
    # A patch classifier puts the boundary where mixed windows tip over, not exactly mid-scene.
    assert left > 0.25 * stats["total_ha"] and right > 0.25 * stats["total_ha"]
    assert sum(stats["areas_ha"].values()) + stats["nodata_ha"] == pytest.approx(stats["total_ha"], rel=1e-6)
    assert stats["total_ha"] == pytest.approx(150 * 200 * 100 / 1e4, rel=0.002)  # UTM: close to nominal
    feats = json.loads((out / "polygons.geojson").read_text())["features"]
    assert {f["properties"]["class"] for f in feats} == {CLASSES[LEFT], CLASSES[RIGHT]}
    item = json.loads((out / "item.json").read_text())
    assert item["assets"]["classes"]["classification:classes"][0]["name"] == "Forest"
    assert any("item.json" in link["href"] for link in item["links"])


def test_geographic_crs_areas_are_geodesic(repo: ModelRepository, tmp_path: Path) -> None:
    """At 60°N a degree-grid pixel is half as wide as tall: naive pixel x nominal size is wrong."""
    from pyproj import Geod

    res = 0.0002
    src = write_scene(
        tmp_path / "geo.tif", scene_array(100, 100), crs="EPSG:4326", res=res, origin=(10.0, 60.0)
    )
    stats = predict_scene(repo.get("tiny"), src, tmp_path / "out", stride=64, polygons=False)
    lons = [10.0, 10.0 + 100 * res, 10.0 + 100 * res, 10.0]
    lats = [60.0, 60.0, 60.0 - 100 * res, 60.0 - 100 * res]
    truth = abs(Geod(ellps="WGS84").polygon_area_perimeter(lons, lats)[0]) / 1e4
    assert stats["total_ha"] == pytest.approx(truth, rel=1e-3)


def test_band_files_at_mixed_resolution(repo: ModelRepository, tmp_path: Path) -> None:
    """One file per band, 20 m and 60 m bands resampled onto the 10 m grid, names from file names."""
    arr = scene_array(120, 180)
    folder = tmp_path / "bands"
    folder.mkdir()
    coarse = {"B05": 2, "B06": 2, "B07": 2, "B8A": 2, "B11": 2, "B12": 2, "B01": 6, "B09": 6, "B10": 6}
    for i, name in enumerate(BANDS):
        f = coarse.get(name, 1)
        band = arr[i : i + 1, ::f, ::f].copy()
        write_scene(folder / f"T33UUU_20240101_{name}_{10 * f}m.tif", band, names=None, res=10.0 * f)
    stats = predict_scene(repo.get("tiny"), folder, tmp_path / "out", stride=32)
    classes = read(tmp_path / "out" / "classes.tif")
    assert classes.shape == (120, 180)
    assert classes[60, 30] == LEFT and classes[60, 150] == RIGHT
    assert stats["input"]["layout"] == "one file per band"


def test_stac_item_with_baseline_offset(repo: ModelRepository, tmp_path: Path) -> None:
    """Processing baseline >= 04.00 stores DN + 1000; the raster offset in the item removes it."""
    arr = scene_array(100, 128)
    for i, name in enumerate(BANDS):
        write_scene(tmp_path / f"{name}.tif", arr[i : i + 1] + np.uint16(1000), names=None)
    assets = {
        name: {"href": f"./{name}.tif", "eo:bands": [{"name": name}],
               "raster:bands": [{"scale": 0.0001, "offset": -0.1}]}
        for name in BANDS
    }  # fmt: skip
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "S2X_TEST", "geometry": None,
            "properties": {"datetime": "2024-05-01T02:00:00Z", "s2:processing_baseline": "05.10"}, "assets": assets}  # fmt: skip
    (tmp_path / "item.json").write_text(json.dumps(item))
    stats = predict_scene(
        repo.get("tiny"), tmp_path / "item.json", tmp_path / "out", stride=64, polygons=False
    )
    assert stats["input"]["offsets"]["B02"] == -1000
    plain = predict_scene(
        repo.get("tiny"),
        write_scene(tmp_path / "plain.tif", arr),
        tmp_path / "out2",
        stride=64,
        polygons=False,
    )
    np.testing.assert_array_equal(
        read(tmp_path / "out" / "classes.tif"), read(tmp_path / "out2" / "classes.tif")
    )
    assert stats["areas_ha"] == plain["areas_ha"]
    assert (
        json.loads((tmp_path / "out" / "item.json").read_text())["properties"]["datetime"]
        == "2024-05-01T02:00:00Z"
    )


def test_scl_clouds_are_masked_and_reported(repo: ModelRepository, tmp_path: Path) -> None:
    src = write_scene(tmp_path / "scene.tif", scene_array(128, 128))
    scl = np.full((1, 64, 64), 4, np.uint8)  # 20 m SCL: vegetation ...
    scl[0, :16, :16] = 9  # ... with a high-probability cloud over the top-left 32x32 (10 m) pixels
    write_scene(tmp_path / "SCL_20m.tif", scl, names=None, res=20.0, nodata=None)
    stats = predict_scene(
        repo.get("tiny"), src, tmp_path / "out", stride=32, mask=tmp_path / "SCL_20m.tif", polygons=False
    )
    classes = read(tmp_path / "out" / "classes.tif")
    assert (classes[:32, :32] == NODATA).all() and (classes[40:, 40:] != NODATA).all()
    assert stats["cloud_ha"] == pytest.approx(32 * 32 * 100 / 1e4, rel=0.01)


def _no_partials(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize(
    "case, words",
    [
        ("unreadable", "cannot be read"),
        ("no crs", "no CRS"),
        ("missing band", "lacks band(s) B10"),
        ("all nodata", "every pixel is nodata"),
        ("too small", "smaller than one 64x64 patch"),
        ("missing file", "no such file"),
    ],
)
def test_bad_scenes_are_clear_errors_and_leave_nothing(
    repo: ModelRepository, tmp_path: Path, case: str, words: str
) -> None:
    src = tmp_path / "scene.tif"
    if case == "unreadable":
        src.write_bytes(b"II*\x00" + b"\x00" * 100)
    elif case == "no crs":
        write_scene(src, scene_array(80, 80), crs=None)
    elif case == "missing band":
        write_scene(src, scene_array(80, 80)[:12], names=[b for b in BANDS if b != "B10"])
    elif case == "all nodata":
        write_scene(src, np.zeros((13, 80, 80), np.uint16))
    elif case == "too small":
        write_scene(src, scene_array(40, 80))
    with pytest.raises(DataError, match=words.replace("(", r"\(").replace(")", r"\)")):
        predict_scene(
            repo.get("tiny"), src if case != "missing file" else tmp_path / "nope.tif", tmp_path / "out"
        )
    assert not (tmp_path / "out").exists() and _no_partials(tmp_path)


def test_existing_output_is_refused_then_replaced(repo: ModelRepository, tmp_path: Path) -> None:
    src = write_scene(tmp_path / "scene.tif", scene_array(80, 80))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        predict_scene(repo.get("tiny"), src, out)
    assert (out / "keep.txt").read_text() == "earlier results"
    predict_scene(repo.get("tiny"), src, out, overwrite=True, polygons=False)
    assert (out / "classes.tif").is_file() and not (out / "keep.txt").exists() and _no_partials(tmp_path)


def test_dask_gives_the_same_maps(repo: ModelRepository, tmp_path: Path) -> None:
    require("distributed")
    from eodeploy.geo.distributed import predict_scenes

    srcs = [write_scene(tmp_path / f"s{i}.tif", scene_array(96, 128, seed=i)) for i in range(2)]
    results = predict_scenes(
        repo.get("tiny").path, srcs, tmp_path / "dask", n_workers=1, stride=32, polygons=False
    )
    assert len(results) == 2
    for s in srcs:
        single = tmp_path / f"single-{s.stem}"
        predict_scene(repo.get("tiny"), s, single, stride=32, polygons=False)
        np.testing.assert_array_equal(
            read(single / "classes.tif"), read(tmp_path / "dask" / s.stem / "classes.tif")
        )


def test_cli_predict(repo: ModelRepository, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from eodeploy.cli.main import app

    src = write_scene(tmp_path / "scene.tif", scene_array(80, 256))
    args = [
        "predict",
        "tiny",
        str(src),
        "--out",
        str(tmp_path / "out"),
        "--repo",
        str(repo.root),
        "--stride",
        "32",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert CLASSES[LEFT] in r.output and "hectares" in r.output
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_gee_patch_folder(repo: ModelRepository, tmp_path: Path) -> None:
    """The guide's GEE option 1: a folder of exported 64x64 patches, GeoTIFF (mapped) or .npy."""
    from eodeploy.geo.patches import is_patch_folder, predict_patches
    from eodeploy.runtime.predictor import Predictor

    folder = tmp_path / "gee"
    folder.mkdir()
    arr = scene_array(64, 256)
    for i in range(3):
        write_scene(
            folder / f"patch_{i}.tif",
            arr[:, :, i * 64 : (i + 1) * 64].copy(),
            origin=(500000 + 640 * i, 5000000),
        )
    np.save(folder / "patch_3.npy", arr[:, :, 192:].transpose(1, 2, 0))  # channels-last, no georeference
    assert is_patch_folder(folder, 64) and not is_patch_folder(tmp_path, 64)
    stats = predict_patches(Predictor(repo.get("tiny")), folder, tmp_path / "out")
    rows = (tmp_path / "out" / "patches.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[1].startswith("patch_0.tif," + CLASSES[LEFT])
    assert rows[4].startswith("patch_3.npy," + CLASSES[RIGHT])
    feats = json.loads((tmp_path / "out" / "patches.geojson").read_text())["features"]
    assert len(feats) == 3 and stats["georeferenced"] == 3
    assert sum(stats["areas_ha"].values()) == pytest.approx(3 * 64 * 64 * 100 / 1e4, rel=0.002)


def test_column_bands_give_the_same_map(repo: ModelRepository, tmp_path: Path) -> None:
    """Memory is bounded by processing column bands; the seams between bands must not show."""
    from eodeploy.geo.infer import classify_scene
    from eodeploy.geo.sources import open_scene
    from eodeploy.runtime.predictor import Predictor

    class Collect:
        def __init__(self, h: int, w: int) -> None:
            self.classes = np.full((h, w), 254, np.uint8)
            self.conf = np.zeros((h, w), np.uint8)

        def write(self, row0: int, col0: int, classes: np.ndarray, conf: np.ndarray) -> None:
            self.classes[row0 : row0 + classes.shape[0], col0 : col0 + classes.shape[1]] = classes
            self.conf[row0 : row0 + classes.shape[0], col0 : col0 + classes.shape[1]] = conf

    arr = scene_array(130, 300, seed=5)
    arr[:, 60:70, 140:170] = 0  # nodata across a band edge
    src = write_scene(tmp_path / "s.tif", arr)
    predictor = Predictor(repo.get("tiny"))
    maps = []
    for band_width in (10_000, 100, 64):
        sink = Collect(130, 300)
        stats = classify_scene(predictor, open_scene(src, BANDS), sink, stride=16, band_width=band_width)  # type: ignore[arg-type]
        maps.append((sink.classes, sink.conf, stats.class_m2.sum() + stats.nodata_m2))
    for classes, conf, total in maps[1:]:
        np.testing.assert_array_equal(classes, maps[0][0])
        assert np.abs(conf.astype(int) - maps[0][1]).max() <= 1  # float summation order
        assert total == pytest.approx(maps[0][2], rel=1e-9)
    assert (maps[0][0] != 254).all()  # every pixel written exactly by some band


def test_segmentation_model_blends_per_pixel(tmp_path: Path) -> None:
    """A dense model (N, classes, H, W) is blended pixel by pixel: the map follows its pixels."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import WEIGHTS, linear_spec

    w = (5 * WEIGHTS.T).astype(np.float32)[:, :, None, None]  # 1x1 conv: (3 classes, 13 bands, 1, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "W"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=1),
        ],
        "seg",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 13, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    repo = ModelRepository(tmp_path / "models")
    pkg = repo.add("seg", model.SerializeToString(), linear_spec("seg"))
    arr = scene_array(100, 150, seed=2)
    src = write_scene(tmp_path / "scene.tif", arr, nodata=None)
    predict_scene(pkg, src, tmp_path / "out", stride=32, polygons=False)
    z = (arr.astype(np.float64) - 1000) / 500
    expected = np.einsum("chw,kc->khw", z, w[:, :, 0, 0]).argmax(axis=0)
    got = read(tmp_path / "out" / "classes.tif")
    assert (got == expected).mean() > 0.999


def test_stac_item_from_an_http_api(repo: ModelRepository, tmp_path: Path) -> None:
    """An item URL as a STAC API serves it; assets read over HTTP range requests (GDAL /vsicurl/)."""
    import functools
    import http.server
    import threading

    class RangeHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def send_head(self):  # type: ignore[no-untyped-def]
            rng = self.headers.get("Range")
            path = Path(self.translate_path(self.path))
            if not rng or not path.is_file():
                return super().send_head()
            start_s, _, end_s = rng.removeprefix("bytes=").partition("-")
            data = path.read_bytes()
            start, end = int(start_s), min(int(end_s or len(data) - 1), len(data) - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            import io

            return io.BytesIO(data[start : end + 1])

    root = tmp_path / "api" / "collections" / "s2" / "items"
    root.mkdir(parents=True)
    arr = scene_array(80, 128)
    for i, name in enumerate(BANDS):
        write_scene(root / f"{name}.tif", arr[i : i + 1], names=None)
    assets = {name: {"href": f"{name}.tif", "eo:bands": [{"name": name}]} for name in BANDS}
    item = {"type": "Feature", "stac_version": "1.1.0", "id": "ITEM1", "geometry": None,
            "properties": {"datetime": "2025-03-01T02:00:00Z"}, "assets": assets}  # fmt: skip
    (root / "ITEM1").write_text(json.dumps(item))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(tmp_path / "api"))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/collections/s2/items/ITEM1"
        from eodeploy.netguard import URLPolicy, using

        with using(URLPolicy(allowed_hosts=("127.0.0.1",))):  # loopback is refused by default
            stats = predict_scene(repo.get("tiny"), url, tmp_path / "out", stride=64, polygons=False)
        local = predict_scene(
            repo.get("tiny"),
            write_scene(tmp_path / "l.tif", arr),
            tmp_path / "out2",
            stride=64,
            polygons=False,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert stats["areas_ha"] == local["areas_ha"] and stats["input"]["stac_id"] == "ITEM1"
    np.testing.assert_array_equal(
        read(tmp_path / "out" / "classes.tif"), read(tmp_path / "out2" / "classes.tif")
    )


def test_cloud_band_inside_the_file_and_crop_to_an_area(repo: ModelRepository, tmp_path: Path) -> None:
    """A cloud-probability band described in the file masks clouds by itself; ``aoi`` classifies
    only a window around the area, identical to the same pixels of the whole-scene map."""
    from pyproj import Transformer
    from shapely.geometry import box

    arr = scene_array(160, 256)
    prob = np.zeros((1, 160, 256), np.uint16)
    prob[0, :, 200:] = 90  # cloudy right edge
    path = write_scene(
        tmp_path / "s.tif", np.concatenate([arr, prob]), names=[*BANDS, "probability"], nodata=None
    )
    whole = predict_scene(repo.get("tiny"), path, tmp_path / "whole", polygons=False)
    assert whole["input"]["cloud_mask"] == "band 14 (probability)"
    assert whole["cloud_ha"] == pytest.approx(160 * 56 * 100 / 1e4, rel=0.01)
    t = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    x0, y0 = t.transform(500000 + 1500, 5000000 - 1000)
    x1, y1 = t.transform(500000 + 1700, 5000000 - 600)
    part = predict_scene(repo.get("tiny"), path, tmp_path / "part", polygons=False, aoi=box(x0, y0, x1, y1))
    win = part["input"]["window"]
    assert part["size_px"][0] < 256 and win["col_off"] > 0
    full, cropped = read(tmp_path / "whole" / "classes.tif"), read(tmp_path / "part" / "classes.tif")
    h, w = cropped.shape
    inner = (slice(64, h - 64), slice(64, w - 64))  # away from the crop's own edges
    window = full[win["row_off"] : win["row_off"] + h, win["col_off"] : win["col_off"] + w]
    assert (cropped[inner] == window[inner]).mean() > 0.99
    far = box(100, 10, 100.01, 10.01)
    with pytest.raises(DataError, match="outside the scene"):
        predict_scene(repo.get("tiny"), path, tmp_path / "far", aoi=far)


def test_no_seam_on_window_edges(tmp_path: Path) -> None:
    """Where the windows around a pixel are unsure, a window starting there must not switch the
    class at its first column. With a floor of 0.05 on the taper it did: a straight class edge on
    the window boundary (column 128 of the Lahinch map, where confidence was 20-23 %)."""
    from conftest import linear_onnx, linear_spec

    w = np.zeros((13, 3))
    w[0] = [-2.0, 2.0, 0.0]  # class 0 for a dark band 1, class 1 for a bright one, 2 in between
    pkg = ModelRepository(tmp_path / "m").add("edge", linear_onnx(w, np.zeros(3)), linear_spec("edge"))
    arr = np.full((13, 64, 256), 1000, np.uint16)  # z-score 0 except band 1
    arr[0, :, :128] = 500  # z = -1: class 0, sure
    arr[0, :, 128:] = 1480  # z = 0.96: class 1; the window at 96 (half each) is unsure, 0 by a hair
    out = tmp_path / "out"
    predict_scene(pkg, write_scene(tmp_path / "s.tif", arr, nodata=None), out, stride=32, polygons=False)
    row = read(out / "classes.tif")[32]
    assert row[127] == 0 and row[128] == 0, "class switched exactly at the window edge"
    assert row[200] == 1
    switch = int(np.argmax(row == 1))
    assert 128 < switch < 160  # a gradual hand-over inside the overlap


def test_polygons_respect_the_minimum_mapping_unit_around_clouds(tmp_path: Path) -> None:
    """A fragment walled in by cloud/nodata has no class neighbour to merge into: it must not
    survive as a polygon under the unit (188 of 195 polygons on a cloudy Lahinch date did)."""
    import rasterio
    from rasterio.transform import from_origin

    from conftest import linear_spec
    from eodeploy.geo.outputs import write_polygons

    data = np.zeros((100, 100), np.uint8)
    data[40:60, 40:60] = NODATA  # a cloud
    data[49:52, 49:52] = 1  # a 9-pixel (0.09 ha) fragment inside it
    data[0:30, 70:100] = 2  # a 9 ha region: kept
    tif = tmp_path / "classes.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 10, 10), nodata=NODATA) as dst:  # fmt: skip
        dst.write(data, 1)
    n = write_polygons(tif, tmp_path / "p.geojson", linear_spec(), mmu_ha=0.5)
    feats = json.loads((tmp_path / "p.geojson").read_text())["features"]
    assert n == len(feats) == 2
    assert min(f["properties"]["area_ha"] for f in feats) >= 0.5
    assert {f["properties"]["class_id"] for f in feats} == {0, 2}


def test_stac_item_id_time_and_movable_links(repo: ModelRepository, tmp_path: Path) -> None:
    """The item's id comes from the output name (not the temporary folder), its datetime from the
    scene (file name; a composite's period from its tags), never the processing time; links are
    relative so inputs, models and outputs can move together."""
    src = write_scene(tmp_path / "S2A_20210304T101021_tile.tif", scene_array())
    predict_scene(repo.get("tiny"), src, tmp_path / "out", stride=32)
    item = json.loads((tmp_path / "out" / "item.json").read_text())
    assert item["id"] == "tiny-v1-out"
    assert item["properties"]["datetime"] == "2021-03-04T10:10:21Z"
    assert item["properties"]["created"] != item["properties"]["datetime"]
    hrefs = [link["href"] for link in item["links"]]
    assert all(not h.startswith("/") for h in hrefs)
    assert (tmp_path / "out" / hrefs[0]).resolve() == src.resolve()
    assert (tmp_path / "out" / hrefs[-1]).resolve() == (repo.get("tiny").path / "item.json").resolve()
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["acquired"] == {"datetime": "2021-03-04T10:10:21Z"}

    mosaic = write_scene(tmp_path / "mosaic.tif", scene_array(),
                         tags={"PRODUCT": "leastCC mosaic over 2024-06-01..2025-06-10"})  # fmt: skip
    predict_scene(repo.get("tiny"), mosaic, tmp_path / "m", stride=32)
    props = json.loads((tmp_path / "m" / "item.json").read_text())["properties"]
    assert props["datetime"] is None
    assert (props["start_datetime"], props["end_datetime"]) == (
        "2024-06-01T00:00:00Z",
        "2025-06-10T00:00:00Z",
    )


def test_preview_axes_name_the_crs_and_unit() -> None:
    from rasterio.crs import CRS

    from eodeploy.geo.outputs import axis_labels

    assert axis_labels(CRS.from_epsg(32629)) == ("easting (m), EPSG:32629", "northing (m), EPSG:32629")
    assert axis_labels(CRS.from_epsg(4326))[0] == "longitude (degrees), EPSG:4326"


def test_scene_area_for_progress_is_geodesic(tmp_path: Path) -> None:
    """A geographic (degrees) scene's area is not a product of pixel sizes: 0.0 km² before."""
    from eodeploy.geo.predict import scene_km2
    from eodeploy.geo.sources import open_scene

    src = write_scene(tmp_path / "g.tif", scene_array(), crs="EPSG:4326", res=0.0001, origin=(120.0, 5.0))
    scene = open_scene(src, BANDS)
    # 200 x 150 px of 0.0001 degrees at 5 deg N: about 2.2 km x 1.66 km
    assert scene_km2(scene) == pytest.approx(2.2 * 1.66, rel=0.02)
