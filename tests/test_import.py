"""Import from every supported format; the ONNX result must match the source within 1e-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import BIAS, WEIGHTS, linear_onnx, require
from eodeploy.data.eurosat import EUROSAT_MS_BANDS
from eodeploy.errors import ImportModelError
from eodeploy.package import ModelRepository
from eodeploy.package.importers import ImportOptions, import_model
from eodeploy.runtime import Predictor

SCALING = [{"type": "scale", "value": 10000.0}]
RAW = np.random.default_rng(3).integers(1, 5000, (4, 13, 64, 64)).astype(np.uint16)


def _check(pkg, source_proba: np.ndarray, layout: str) -> None:  # type: ignore[no-untyped-def]
    conv = pkg.properties["eodeploy:conversion"]
    assert conv["max_abs_diff"] <= 1e-4
    assert pkg.spec.layout == layout
    got = Predictor(pkg).predict_proba(RAW)
    np.testing.assert_allclose(got, source_proba, atol=1e-4)


def test_onnx(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(linear_onnx(WEIGHTS, BIAS))
    pkg = import_model(
        path, "onnx-model", ModelRepository(tmp_path / "r"), ImportOptions(classes=["a", "b", "c"])
    )
    assert pkg.spec.layout == "NCHW" and pkg.spec.output_kind == "probabilities"
    assert pkg.spec.bands == EUROSAT_MS_BANDS


def _torch_net():  # type: ignore[no-untyped-def]
    torch = require("torch")
    torch.manual_seed(0)
    from eodeploy.train.models import CompactCNN

    return CompactCNN(13, 10, width=8).eval()


def _torch_proba(net) -> np.ndarray:  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        logits = net(torch.from_numpy((RAW / 10000.0).astype(np.float32)))
    return torch.softmax(logits, 1).numpy()


def test_torchscript(tmp_path: Path) -> None:
    torch = require("torch")
    net = _torch_net()
    path = tmp_path / "net.pt"
    torch.jit.trace(net, torch.zeros(1, 13, 64, 64)).save(str(path))
    opts = ImportOptions(bands=list(EUROSAT_MS_BANDS), value_scaling=SCALING)
    pkg = import_model(path, "torchscript", ModelRepository(tmp_path / "r"), opts)
    assert pkg.spec.output_kind == "logits"
    _check(pkg, _torch_proba(net), "NCHW")


def test_state_dict_with_module(tmp_path: Path) -> None:
    torch = require("torch")
    net = _torch_net()
    path = tmp_path / "weights.pth"
    torch.save(net.state_dict(), path)
    opts = ImportOptions(
        bands=list(EUROSAT_MS_BANDS), value_scaling=SCALING,
        module="eodeploy.train.models:CompactCNN",
        module_kwargs={"in_channels": 13, "n_classes": 10, "width": 8},
    )  # fmt: skip
    _check(import_model(path, "statedict", ModelRepository(tmp_path / "r"), opts), _torch_proba(net), "NCHW")
    with pytest.raises(ImportModelError, match="cannot be imported"):
        import_model(
            path,
            "statedict",
            ModelRepository(tmp_path / "r"),
            ImportOptions(bands=list(EUROSAT_MS_BANDS), module="no.such:Thing"),
        )
    with pytest.raises(ImportModelError, match="not a TorchScript file"):
        import_model(
            path, "statedict", ModelRepository(tmp_path / "r"), ImportOptions(bands=list(EUROSAT_MS_BANDS))
        )


@pytest.fixture(scope="module")
def keras_model():  # type: ignore[no-untyped-def]
    """The guide's kind of model: Keras 3, NHWC input, softmax output."""
    keras = require("keras")
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((64, 64, 13)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(4),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def _keras_proba(model) -> np.ndarray:  # type: ignore[no-untyped-def]
    x = (RAW / 10000.0).astype(np.float32).transpose(0, 2, 3, 1)
    return np.asarray(model(x, training=False))


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_files(tmp_path: Path, keras_model, suffix: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / f"model{suffix}"
    keras_model.save(path)
    pkg = import_model(
        path, "keras-model", ModelRepository(tmp_path / "r"), ImportOptions(value_scaling=SCALING)
    )
    assert pkg.spec.output_kind == "probabilities"
    assert pkg.properties["mlm:input"][0]["input"]["dim_order"] == ["batch", "height", "width", "bands"]
    _check(pkg, _keras_proba(keras_model), "NHWC")


@pytest.mark.slow
def test_savedmodel_and_tflite(tmp_path: Path, keras_model) -> None:  # type: ignore[no-untyped-def]
    tf = require("tensorflow")
    require("tf2onnx")
    sm = tmp_path / "saved_model"
    keras_model.export(str(sm), format="tf_saved_model", verbose=False)
    repo = ModelRepository(tmp_path / "r")
    _check(
        import_model(sm, "savedmodel", repo, ImportOptions(value_scaling=SCALING)),
        _keras_proba(keras_model),
        "NHWC",
    )

    tfl = tmp_path / "model.tflite"
    tfl.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(sm)).convert())
    pkg = import_model(tfl, "tflite-model", repo, ImportOptions(value_scaling=SCALING))
    _check(pkg, _keras_proba(keras_model), "NHWC")


def test_bad_files(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "r")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ImportModelError, match="unknown model format"):
        import_model(tmp_path / "m.txt", "bad-model", repo)
    (tmp_path / "broken.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ImportModelError, match="cannot load the converted model"):
        import_model(tmp_path / "broken.onnx", "bad-model", repo)
    with pytest.raises(ImportModelError, match="no such file"):
        import_model(tmp_path / "missing.onnx", "bad-model", repo)
    (tmp_path / "m.onnx").write_bytes(linear_onnx(WEIGHTS, BIAS))
    with pytest.raises(ImportModelError, match="3 outputs; name its classes"):
        import_model(tmp_path / "m.onnx", "bad-model", repo)
    with pytest.raises(ImportModelError, match="no axis of 4 bands"):
        import_model(
            tmp_path / "m.onnx",
            "bad-model",
            repo,
            ImportOptions(bands=["B02", "B03", "B04", "B08"], classes=list("abc")),
        )
    assert repo.names() == []
