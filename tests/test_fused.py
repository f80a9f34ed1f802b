"""The fused ONNX graph (the package's preprocessing + model + softmax) against the Python path:
every bundled package on real patches, every scaling type, NHWC, a fixed batch, the Triton export."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import BIAS, CLASSES, SHARED, WEIGHTS, linear_onnx, linear_spec, reference_proba, require
from eodeploy.data.images import read_image
from eodeploy.errors import PackageIntegrityError
from eodeploy.package import ModelPackage, ModelRepository
from eodeploy.package.export import export_triton
from eodeploy.package.fused import (
    PROBABILITIES,
    RAW_INPUT,
    TOLERANCE,
    FusedGraphError,
    build_fused,
    check_fused,
    check_inputs,
    clear_cache,
    fused_model,
    fused_model_bytes,
    fused_session,
)
from eodeploy.runtime import Predictor

onnx = require("onnx")

MODELS = Path(__file__).resolve().parents[1] / "models"
BUNDLED = [("eurosat-cnn", 1), ("eurosat-cnn", 2), ("eurosat-cnn", 3), ("eurosat-rgb", 1), ("eurosat-rgb", 2)]
DATA = {13: SHARED / "data" / "eurosat", 3: SHARED / "data" / "eurosat_rgb_more"}

#: One entry per band, every type scale_values knows, with bounds that the test inputs cross.
MIXED = [
    {"type": "z-score", "mean": 1300.0, "stddev": 240.0},
    {"type": "min-max", "minimum": 300.0, "maximum": 2100.0},
    {"type": "clip", "minimum": 700.0, "maximum": 1200.0},
    {"type": "clip-min", "minimum": 900.0},
    {"type": "clip-max", "maximum": 1000.0},
    {"type": "offset", "value": 1000.0},
    {"type": "scale", "value": 2500.0},
    {"type": "z-score", "mean": 2400.0, "stddev": 1100.0},
    {"type": "clip", "minimum": 0.0, "maximum": 900.0},
    {"type": "scale", "value": 3.0},
    {"type": "min-max", "minimum": 1000.0, "maximum": 3000.0},
    {"type": "offset", "value": -50.0},
    {"type": "clip-max", "maximum": 2000.0},
]


def run_fused(fused: onnx.ModelProto | bytes, x: np.ndarray) -> np.ndarray:
    session = fused_session(fused)
    return np.asarray(session.run([PROBABILITIES], {RAW_INPUT: x.astype(np.float32)})[0])


def real_patches(pkg: ModelPackage, limit: int) -> np.ndarray:
    """Real patches from the package's recorded test split, in its units (uint16 DN or 8-bit RGB)."""
    root = DATA[len(pkg.spec.bands)]
    files = json.loads((pkg.path / "split.json").read_text())["test"]
    step = max(1, len(files) // limit)
    return np.stack([read_image(root / f) for f in files[::step][:limit]]).astype(np.float32)


@pytest.mark.shared_data
@pytest.mark.skipif(not DATA[13].is_dir() or not DATA[3].is_dir(), reason="../shared/data is not here")
@pytest.mark.parametrize(("name", "version"), BUNDLED, ids=[f"{n}-v{v}" for n, v in BUNDLED])
def test_bundled_packages_agree_on_real_patches(name: str, version: int) -> None:
    pkg = ModelRepository(MODELS).get(name, version)
    x = real_patches(pkg, 80)
    assert x.shape[1:] == (len(pkg.spec.bands), 64, 64) and x.max() > 100  # raw values, not scaled
    fused = fused_model(pkg)
    assert [i.name for i in fused.graph.input] == [RAW_INPUT]
    expected = Predictor(pkg, providers=["CPUExecutionProvider"]).predict_proba(x)
    got = run_fused(fused, x)
    assert got.shape == expected.shape == (len(x), 10)
    assert np.abs(got - expected).max() <= TOLERANCE
    np.testing.assert_array_equal(got.argmax(1), expected.argmax(1))
    # the bare model on the same raw values is far off: the graph really does the scaling
    bare = onnx.load(str(pkg.model_path))
    raw_out = fused_session(bare).run(None, {bare.graph.input[0].name: x})[0]
    assert np.abs(raw_out - expected).max() > 0.1


def _add(repo: ModelRepository, model: bytes, **spec: object) -> ModelPackage:
    props = spec.pop("properties", None)
    return repo.add("tiny", model, dataclasses.replace(linear_spec("tiny"), **spec), properties=props)  # type: ignore[arg-type]


def _wide_inputs(n: int = 6) -> np.ndarray:
    """Raw DN-like values that cross every bound in MIXED."""
    return np.random.default_rng(5).uniform(0, 3500, (n, 13, 64, 64)).astype(np.float32)


def test_every_scaling_type_per_band_and_softmax_on_logits(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "m")
    pkg = _add(repo, linear_onnx(WEIGHTS, BIAS, softmax=False), value_scaling=MIXED, output_kind="logits")
    fused = fused_model(pkg)
    ops = [n.op_type for n in fused.graph.node]
    assert ops[:4] == ["Max", "Min", "Sub", "Div"] and ops[-1] == "Softmax"
    x = _wide_inputs()
    assert (x[:, 2] > 1200).any() and (x[:, 2] < 700).any()  # the clips do clip
    expected = Predictor(pkg).predict_proba(x)
    got = run_fused(fused, x)
    assert np.abs(got - expected).max() <= TOLERANCE
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    # and independently of eodeploy's preprocessing: the MIXED scaling written out by hand
    z = x.astype(np.float64)
    z[:, 0] = (z[:, 0] - 1300) / 240
    z[:, 1] = (z[:, 1] - 300) / 1800
    z[:, 2] = np.clip(z[:, 2], 700, 1200)
    z[:, 3] = np.maximum(z[:, 3], 900)
    z[:, 4] = np.minimum(z[:, 4], 1000)
    z[:, 5] -= 1000
    z[:, 6] /= 2500
    z[:, 7] = (z[:, 7] - 2400) / 1100
    z[:, 8] = np.clip(z[:, 8], 0, 900)
    z[:, 9] /= 3
    z[:, 10] = (z[:, 10] - 1000) / 2000
    z[:, 11] += 50
    z[:, 12] = np.minimum(z[:, 12], 2000)
    logits = z.mean(axis=(2, 3)) @ WEIGHTS + BIAS
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(1, keepdims=True), atol=1e-5)


def test_one_entry_for_all_bands_and_no_scaling(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "m")
    one = _add(repo, linear_onnx(WEIGHTS, BIAS), value_scaling=[{"type": "scale", "value": 1000.0}])
    none = _add(repo, linear_onnx(WEIGHTS, BIAS), value_scaling=[])
    assert [n.op_type for n in fused_model(one).graph.node][0] == "Div"
    assert [n.op_type for n in fused_model(none).graph.node][0] == "Identity"
    x = _wide_inputs(3)
    for pkg in (one, none):
        assert np.abs(run_fused(fused_model(pkg), x) - Predictor(pkg).predict_proba(x)).max() <= TOLERANCE


def test_channels_last_package_takes_channels_first_raw_values(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "m")
    pkg = _add(repo, linear_onnx(WEIGHTS, BIAS, layout="NHWC"), layout="NHWC", value_scaling=MIXED)
    fused = fused_model(pkg)
    dims = [d.dim_value or d.dim_param for d in fused.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 13, 64, 64]
    x = _wide_inputs(4)
    got = run_fused(fused, x)
    assert np.abs(got - Predictor(pkg).predict_proba(x)).max() <= TOLERANCE
    # the NCHW twin of the same network gives the same probabilities
    twin = _add(repo, linear_onnx(WEIGHTS, BIAS), value_scaling=MIXED)
    np.testing.assert_allclose(got, run_fused(fused_model(twin), x), atol=1e-6)


def test_fixed_batch_package(tmp_path: Path) -> None:
    model = onnx.load_from_string(linear_onnx(WEIGHTS, BIAS))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    repo = ModelRepository(tmp_path / "m")
    pkg = _add(repo, model.SerializeToString(), properties={"eodeploy:fixed_batch_size": 2})
    fused = fused_model(pkg)  # checked on a batch of 4 = two runs of 2
    assert fused.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    x = _wide_inputs(2)
    np.testing.assert_allclose(run_fused(fused, x), reference_proba(x), atol=1e-5)
    assert check_fused(pkg, fused, n=3) <= TOLERANCE  # an odd count is padded, as the predictor does
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        run_fused(fused, _wide_inputs(3))  # onnxruntime itself refuses another batch size


def test_check_fused_catches_a_wrong_scaling(tmp_path: Path, raw_patches: np.ndarray) -> None:
    repo = ModelRepository(tmp_path / "m")
    pkg = _add(repo, linear_onnx(WEIGHTS, BIAS), value_scaling=MIXED)
    bare = onnx.load(str(pkg.model_path))
    assert check_fused(pkg, build_fused(bare, pkg.spec)) <= TOLERANCE
    corrupted = [dict(s) for s in MIXED]
    corrupted[6]["value"] = 2600.0  # 'scale' of one band of 13, 4 % off
    wrong = build_fused(bare, dataclasses.replace(pkg.spec, value_scaling=corrupted))
    # this linear model saturates on such inputs (probabilities 0 and 1): the tensor check finds it
    with pytest.raises(FusedGraphError, match=r"tiny v1 disagrees .* preprocessed tensor .* by up to"):
        check_fused(pkg, wrong)
    # where the model does not saturate (the z-score package on EuroSAT-like patches), the
    # probabilities differ
    plain = _add(repo, linear_onnx(WEIGHTS, BIAS))
    off = build_fused(
        bare,
        dataclasses.replace(plain.spec, value_scaling=[{"type": "z-score", "mean": 1000.0, "stddev": 510.0}]),
    )
    with pytest.raises(
        FusedGraphError, match=r"tiny v2 disagrees with the Python preprocessing path: max \|Δp\|"
    ):
        check_fused(plain, off, x=raw_patches)
    wrong_kind = build_fused(bare, dataclasses.replace(plain.spec, output_kind="logits"))  # softmax twice
    with pytest.raises(FusedGraphError, match="max"):
        check_fused(plain, wrong_kind, x=raw_patches)


@pytest.mark.shared_data
@pytest.mark.skipif(not DATA[3].is_dir(), reason="../shared/data is not here")
def test_check_fused_catches_a_wrong_scaling_of_the_int8_package() -> None:
    pkg = ModelRepository(MODELS).get("eurosat-rgb", 2)  # QDQ: the scaled values are quantised
    vs = [dict(s) for s in pkg.spec.value_scaling]
    vs[1]["mean"] += 2.0
    wrong = build_fused(onnx.load(str(pkg.model_path)), dataclasses.replace(pkg.spec, value_scaling=vs))
    with pytest.raises(FusedGraphError, match="eurosat-rgb v2 disagrees"):
        check_fused(pkg, wrong, x=real_patches(pkg, 20))


def test_check_inputs_follow_reference_statistics_or_the_scaling(tmp_path: Path) -> None:
    pkg = ModelRepository(MODELS).get("eurosat-rgb", 1)
    x = check_inputs(pkg, 2)
    stats = pkg.properties["eodeploy:reference_stats"]["bands"]
    assert x.min() >= 0 and x.max() <= 255
    assert abs(float(x[:, 0].mean()) - stats["B04"]["mean"]) < 5
    np.testing.assert_array_equal(x, check_inputs(pkg, 2))  # deterministic
    generated = _add(ModelRepository(tmp_path / "m"), linear_onnx(WEIGHTS, BIAS), value_scaling=MIXED)
    y = check_inputs(generated, 2)
    assert y[:, 2].min() < 700 and y[:, 2].max() > 1200  # past both clip bounds
    assert abs(float(y[:, 0].mean()) - 1300) < 20


def test_unsupported_models_get_a_clear_error(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    old = helper.make_model(
        helper.make_graph(
            [helper.make_node("Identity", ["input"], ["output"])], "old",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 13, 64, 64])],
            [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 3])],
        ),
        opset_imports=[helper.make_opsetid("", 7)],
    )  # fmt: skip
    with pytest.raises(FusedGraphError, match="opset 7"):
        build_fused(old, linear_spec())
    with pytest.raises(FusedGraphError, match="input has shape"):
        build_fused(onnx.load_from_string(linear_onnx(WEIGHTS, BIAS, size=32)), linear_spec())


def test_fused_bytes_are_built_once_per_version(tmp_path: Path) -> None:
    repo = ModelRepository(tmp_path / "m")
    v1 = _add(repo, linear_onnx(WEIGHTS, BIAS))
    v2 = _add(repo, linear_onnx(-WEIGHTS, BIAS))
    a = fused_model_bytes(v1)
    assert fused_model_bytes(ModelPackage(v1.path)) is a  # another handle on the same version: cached
    b = fused_model_bytes(v2)
    assert b is not a and b != a
    x = _wide_inputs(2)
    np.testing.assert_allclose(run_fused(a, x), reference_proba(x), atol=1e-5)


def test_triton_export_ships_the_fused_graph(tmp_path: Path, raw_patches: np.ndarray) -> None:
    from google.protobuf import text_format

    model_config_pb2 = require("tritonclient.grpc.model_config_pb2")
    repo = ModelRepository(tmp_path / "m")
    pkg = _add(repo, linear_onnx(WEIGHTS, BIAS))
    folder = export_triton(pkg, tmp_path / "triton")
    cfg = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.max_batch_size == 64 and cfg.backend == "onnxruntime"
    assert [(i.name, list(i.dims)) for i in cfg.input] == [(RAW_INPUT, [13, 64, 64])]
    assert [(o.name, list(o.dims), o.label_filename) for o in cfg.output] == [
        (PROBABILITIES, [3], "labels.txt")
    ]
    assert "raw band values" in cfg.parameters["eodeploy_preprocessing"].string_value
    assert cfg.parameters["eodeploy_bands"].string_value == ",".join(pkg.spec.bands)
    assert (folder / "labels.txt").read_text().split() == CLASSES
    assert (folder / "item-v1.json").read_bytes() == (pkg.path / "item.json").read_bytes()
    exported = (folder / "1" / "model.onnx").read_bytes()
    # Triton clients now send raw values: the exported graph alone gives the right probabilities
    np.testing.assert_allclose(run_fused(exported, raw_patches), reference_proba(raw_patches), atol=1e-5)

    model = onnx.load_from_string(linear_onnx(WEIGHTS, BIAS))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed = _add(repo, model.SerializeToString(), properties={"eodeploy:fixed_batch_size": 1})
    cfg = text_format.Parse(
        (export_triton(fixed, tmp_path / "triton") / "config.pbtxt").read_text(),
        model_config_pb2.ModelConfig(),
    )
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [1, 13, 64, 64]
    assert list(cfg.output[0].dims) == [1, 3]


def test_triton_export_refuses_a_damaged_package(tmp_path: Path) -> None:
    clear_cache()  # cached bytes are those of the verified file (another test's twin of this package)
    repo = ModelRepository(tmp_path / "m")
    pkg = _add(repo, linear_onnx(WEIGHTS, BIAS))
    pkg.model_path.write_bytes(linear_onnx(-WEIGHTS, BIAS))
    with pytest.raises(PackageIntegrityError, match="sha256"):
        export_triton(pkg, tmp_path / "triton")
    with pytest.raises(PackageIntegrityError, match="sha256"):
        fused_model_bytes(pkg)
    assert not (tmp_path / "triton").exists()


@pytest.mark.slow
def test_keras_imported_channels_last_package(tmp_path: Path) -> None:
    """The guide's kind of model (Keras 3, NHWC) outputting logits, imported through tf2onnx: raw
    NCHW values in, the Keras model's softmax out, with no eodeploy code in the reference."""
    from eodeploy.package.importers import ImportOptions, import_model

    keras = require("keras")
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((64, 64, 13)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(4),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.Flatten(),  # position-dependent: a height/width mix-up changes the output
            keras.layers.Dense(10),
        ]
    )
    net.save(tmp_path / "logits.keras")
    scaling = [{"type": "scale", "value": 10000.0}]
    pkg = import_model(
        tmp_path / "logits.keras",
        "keras-logits",
        ModelRepository(tmp_path / "r"),
        ImportOptions(value_scaling=scaling),
    )
    assert pkg.spec.layout == "NHWC" and pkg.spec.output_kind == "logits"
    fused = fused_model(pkg)
    x = np.random.default_rng(3).integers(1, 5000, (4, 13, 64, 64)).astype(np.float32)
    logits = np.asarray(net((x / 10000.0).transpose(0, 2, 3, 1), training=False), np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    got = run_fused(fused, x)
    np.testing.assert_allclose(got, e / e.sum(1, keepdims=True), atol=1e-5)
    assert np.abs(got - Predictor(pkg).predict_proba(x)).max() <= TOLERANCE
