"""Input units and band names: every true-colour input mapped onto what the model was trained on.

A tiny real ONNX model (band means -> linear -> softmax) with ``rgb8`` units stands in for the
EuroSAT-RGB network; the bundled network itself is tested in test_rgb_model.py."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import linear_onnx
from eodeploy.errors import InvalidInputError
from eodeploy.package import ModelRepository, ModelSpec, default_classes
from eodeploy.runtime import Predictor, preprocess
from eodeploy.runtime.preprocess import convert_units, guess_units

RGB = ["B04", "B03", "B02"]
W = np.array([[0.02, -0.01], [-0.03, 0.02], [0.01, 0.01]])
B = np.array([0.0, 0.1])


@pytest.fixture
def rgb_model(tmp_path) -> Predictor:  # type: ignore[no-untyped-def]
    spec = ModelSpec(
        name="rgb", bands=RGB, height=64, width=64, classes=default_classes(["Forest", "SeaLake"]),
        value_scaling=[{"type": "z-score", "mean": 100.0, "stddev": 40.0}], units="rgb8",
        input_name="input", output_name="output", framework="ONNX",
    )  # fmt: skip
    return Predictor(ModelRepository(tmp_path).add("rgb", linear_onnx(W, B), spec))


@pytest.fixture
def jpeg_like() -> np.ndarray:
    """8-bit true-colour patches (what a JPEG decodes to), none saturated."""
    return np.random.default_rng(3).integers(10, 250, (4, 3, 64, 64)).astype(np.uint8)


def test_units_round_trip_exactly_below_saturation(jpeg_like: np.ndarray) -> None:
    dn = convert_units(jpeg_like, "rgb8", "dn")
    assert dn.max() <= 2750
    np.testing.assert_array_equal(convert_units(dn, "dn", "rgb8"), jpeg_like)
    refl = convert_units(jpeg_like, "rgb8", "reflectance")
    np.testing.assert_array_equal(convert_units(refl, "reflectance", "rgb8"), jpeg_like)
    # EuroSAT's rendering clips: bright cloud tops out at 255, never wraps.
    assert convert_units(np.array([5000.0, -3.0]), "dn", "rgb8").tolist() == [255.0, 0.0]


def test_guessing_units_from_type_and_range(jpeg_like: np.ndarray) -> None:
    assert guess_units(jpeg_like, "rgb8") == "rgb8"
    assert guess_units(jpeg_like.astype(np.uint16) * 10, "rgb8") == "dn"
    assert guess_units(np.full((1, 3, 4, 4), 0.08, np.float32), "rgb8") == "reflectance"
    assert guess_units(jpeg_like.astype(np.float32), "rgb8") == "rgb8"  # JSON numbers of an 8-bit image
    assert guess_units(jpeg_like.astype(np.float32), "dn") == "dn"  # ... but DN for a 13-band model
    assert guess_units(np.full((1, 3, 4, 4), 1800.0, np.float32), "rgb8") == "dn"


def test_one_patch_as_jpeg_digital_numbers_and_reflectance_is_one_input(
    rgb_model: Predictor, jpeg_like: np.ndarray
) -> None:
    as_jpeg = rgb_model.predict_proba(jpeg_like, units="auto")
    dn = np.rint(jpeg_like.astype(np.float64) * 2750 / 255).astype(np.uint16)  # a uint16 GeoTIFF
    refl = (dn / 10000).astype(np.float32)  # Sentinel Hub units=REFLECTANCE
    for other in (dn, refl):
        np.testing.assert_allclose(rgb_model.predict_proba(other, units="auto"), as_jpeg, atol=1e-6)
    # 13-band input, bands matched by name (EuroSAT-MS order, B1..B12 spelling).
    names = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "B8A"]
    full = np.zeros((4, 13, 64, 64), np.uint16)
    full[:, [3, 2, 1]] = dn
    np.testing.assert_allclose(
        rgb_model.predict_proba(full, band_names=names, units="dn"), as_jpeg, atol=1e-6
    )


@pytest.mark.parametrize(
    "names",
    [["B04", "B03", "B02"], ["B4", "B3", "B2"], ["red", "green", "blue"], ["B04 (red)", "b3", "Blue"]],
)
def test_band_name_spellings(rgb_model: Predictor, jpeg_like: np.ndarray, names: list[str]) -> None:
    expected = rgb_model.predict_proba(jpeg_like, units="rgb8")
    reordered = jpeg_like[:, ::-1]  # B02, B03, B04
    got = rgb_model.predict_proba(reordered, band_names=names[::-1], units="rgb8")
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_bad_units_and_missing_bands_are_clear(rgb_model: Predictor, jpeg_like: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="units 'kelvin' are not one of dn, reflectance, rgb8"):
        preprocess(jpeg_like, rgb_model.spec, units="kelvin")
    with pytest.raises(InvalidInputError, match="lacks band.*B02"):
        rgb_model.predict(jpeg_like, band_names=["B4", "B3", "B8"])


def test_item_records_the_units(rgb_model: Predictor) -> None:
    props = rgb_model.package.properties
    assert props["eodeploy:input_units"] == "rgb8"
    assert "2750" in props["mlm:input"][0]["description"]
    assert ModelSpec.from_item(rgb_model.package.item).units == "rgb8"
