"""The bundled true-colour model, `eurosat-rgb`, on real data through every input path: the
guide's upload of real EuroSAT-RGB JPEGs, the 13-band twin of the same ground patch, OIP and
TF-Serving tensors with band names, and whole real scenes (13-band L1C, float reflectance)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import SHARED, require
from eodeploy.data.eurosat import EUROSAT_MS_BANDS
from eodeploy.package import ModelRepository
from servers import LiveServer, live_server

MODELS = Path(__file__).resolve().parents[1] / "models"
RGB_DIR = SHARED / "data" / "eurosat_rgb_more"
MS_DIR = SHARED / "data" / "eurosat"
S2 = SHARED / "data" / "sentinel2"


@pytest.fixture(scope="module")
def package():  # type: ignore[no-untyped-def]
    return ModelRepository(MODELS).get("eurosat-rgb")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    require("fastapi")
    root = tmp_path_factory.mktemp("rgb")
    with live_server(MODELS, root / "server.log", EODEPLOY_DEFAULT_MODEL="eurosat-rgb") as srv:
        yield srv


def test_files(package, per_class: int) -> list[str]:  # type: ignore[no-untyped-def]
    """The first files of each class in the package's recorded test split (never trained on)."""
    split = json.loads((package.path / "split.json").read_text())["test"]
    out: list[str] = []
    for cls in package.spec.class_names:
        out += [f for f in split if f.startswith(cls + "/")][:per_class]
    return out


test_files.__test__ = False  # type: ignore[attr-defined]


def test_package_is_valid_and_meets_its_target(package) -> None:  # type: ignore[no-untyped-def]
    from eodeploy.package.validate import validate_item

    validate_item(package.item)
    m = package.properties["eodeploy:metrics"]
    assert m["accuracy"] >= 0.97 and m["n"] > 4000
    assert package.spec.units == "rgb8" and package.spec.bands == ["B04", "B03", "B02"]


def test_guides_flask_upload_of_real_jpegs(server: LiveServer, package) -> None:  # type: ignore[no-untyped-def]
    """The guide's Flask example: POST /predict with the file in the field "image"."""
    files = test_files(package, 3)
    right = 0
    for f in files:
        with open(RGB_DIR / f, "rb") as fh:
            r = requests.post(
                f"{server.http}/predict", files={"image": (Path(f).name, fh, "image/jpeg")}, timeout=30
            )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "eurosat-rgb"
        right += body["class"] == f.split("/")[0]
    assert right >= len(files) - 1, f"{right} of {len(files)} real test JPEGs classified right"


def test_one_ground_patch_as_jpeg_13_band_geotiff_and_reflectance(server: LiveServer, package) -> None:  # type: ignore[no-untyped-def]
    """Real twins: the EuroSAT-MS GeoTIFF (uint16, 13 bands, DN) and the EuroSAT-RGB JPEG of one patch,
    plus the JPEG's values as uint16 B04/B03/B02 x 10000 and as float reflectance: one class."""
    import rasterio
    from rasterio.io import MemoryFile

    split = set(json.loads((package.path / "split.json").read_text())["test"])
    twins = [p for p in sorted(MS_DIR.glob("*/*.tif")) if f"{p.parent.name}/{p.stem}.jpg" in split][:20]
    assert len(twins) >= 10
    agree_ms = 0
    for tif in twins:
        jpg = RGB_DIR / tif.parent.name / f"{tif.stem}.jpg"
        as_jpeg = requests.post(
            f"{server.http}/predict", files={"image": jpg.read_bytes()}, timeout=30
        ).json()
        from PIL import Image

        rgb8 = np.asarray(Image.open(jpg)).transpose(2, 0, 1).astype(np.float64)
        dn = np.rint(rgb8 * 2750 / 255).astype(np.uint16)
        for arr, dtype in ((dn, "uint16"), ((dn / 10000).astype(np.float32), "float32")):
            with MemoryFile() as mem:
                with mem.open(driver="GTiff", width=64, height=64, count=3, dtype=dtype) as dst:
                    dst.write(arr)
                    dst.descriptions = ("B04", "B03", "B02")
                data = mem.read()
            other = requests.post(f"{server.http}/predict", files={"image": data}, timeout=30).json()
            assert other["class"] == as_jpeg["class"], (tif.name, dtype)
            assert other["confidence"] == pytest.approx(as_jpeg["confidence"], abs=1e-4)
        bands = ",".join(EUROSAT_MS_BANDS)
        with rasterio.open(tif) as src:
            assert src.count == 13
        ms = requests.post(
            f"{server.http}/predict?band_names={bands}", files={"image": tif.read_bytes()}, timeout=30
        )
        assert ms.status_code == 200, ms.text
        agree_ms += ms.json()["class"] == as_jpeg["class"]
    # The twins are two renderings (JPEG-compressed 8-bit vs 16-bit DN) of one acquisition.
    assert agree_ms >= 0.85 * len(twins), f"{agree_ms} of {len(twins)} twins agree"


def test_tensors_with_band_names_over_oip_and_tf_serving(server: LiveServer, package) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    files = test_files(package, 1)
    rgb = np.stack([np.asarray(Image.open(RGB_DIR / f)).transpose(2, 0, 1) for f in files])
    expected = [f.split("/")[0] for f in files]
    names = package.spec.class_names
    bgr_dn = np.rint(rgb[:, ::-1].astype(np.float64) * 2750 / 255).astype(np.uint16)  # B02, B03, B04 as DN
    th = require("tritonclient.http")
    client = th.InferenceServerClient(server.hostport)
    inp = th.InferInput("input", list(bgr_dn.shape), "UINT16")
    inp.set_data_from_numpy(bgr_dn, binary_data=True)
    out = client.infer("eurosat-rgb", [inp], parameters={"band_names": "B2,B3,B4"}).as_numpy("probabilities")
    got = [names[i] for i in out.argmax(1)]
    r = requests.post(
        f"{server.http}/v1/models/eurosat-rgb:predict",
        json={"instances": (bgr_dn / 10000).tolist(), "parameters": {"band_names": "blue,green,red"}},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert [names[int(np.argmax(p))] for p in r.json()["predictions"]] == got
    assert sum(g == e for g, e in zip(got, expected)) >= len(expected) - 1
    bad = requests.post(
        f"{server.http}/v1/models/eurosat-rgb:predict",
        json={"instances": bgr_dn.tolist(), "parameters": {"units": "kelvin"}},
        timeout=60,
    )
    assert bad.status_code == 400 and "units" in bad.json()["error"]


def test_13_band_and_reflectance_scenes_through_the_rgb_model(package, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from eodeploy.geo import predict_scene

    lahinch = predict_scene(package, S2 / "lahinch_IE_s2l1c_2017-09-18.tif", tmp_path / "l")
    assert lahinch["input"]["units"] == "dn" and lahinch["classified_share"] > 0.9
    tawi = predict_scene(package, S2 / "tawitawi_PH_s2l2a_rgb.tif", tmp_path / "t")
    assert tawi["input"]["units"] == "reflectance"
    total = sum(tawi["areas_ha"].values())
    # Read as digital numbers the scene would be black: all one class. Read right, the sea is sea.
    assert tawi["areas_ha"]["SeaLake"] > 0.15 * total
    assert max(tawi["areas_ha"].values()) < 0.9 * total
