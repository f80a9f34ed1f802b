"""Optimised versions (INT8, FP16, structured pruning), backends (OpenVINO, LiteRT) and the
TFLite export, on tiny real models; figures live in benchmarks/optimize.py, not here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import reference_proba, require
from eodeploy.cli.main import app
from eodeploy.errors import DataError
from eodeploy.optimize import OptimizationError, optimize_package
from eodeploy.package import ModelPackage, ModelRepository
from eodeploy.runtime.backends import UnknownBackendError
from eodeploy.runtime.predictor import Predictor


def invoke(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def cnn_repo(tmp_path_factory: pytest.TempPathFactory, eurosat_dir: Path) -> ModelRepository:
    """A compact CNN trained (briefly) by eodeploy, without TTA, so it carries weights.pt."""
    require("torch")
    from eodeploy.train.pipeline import train_package
    from eodeploy.train.trainer import TrainConfig

    repo = ModelRepository(tmp_path_factory.mktemp("cnn") / "models")
    train_package(eurosat_dir, repo, "cnn", TrainConfig(epochs=3, patience=3, tta=False, threads=2))
    return repo


def _hidden(repo: ModelRepository) -> list[Path]:
    return [p for p in repo.root.rglob(".*")]


def test_int8_is_a_derived_version_with_recipe_and_metrics(
    cnn_repo: ModelRepository, eurosat_dir: Path
) -> None:
    from eodeploy.evaluate.report import load_for_package

    src = cnn_repo.get("cnn", 1)
    pkg = optimize_package(src, "int8", eurosat_dir)
    props = pkg.properties
    recipe = props["eodeploy:optimization"]
    assert recipe["method"] == "int8-static-qdq" and recipe["calibration_patches"] > 0
    assert recipe["calibration_files_hash"]
    assert props["eodeploy:derived_from"] == {"name": "cnn", "version": 1}
    import json

    recorded_test = json.loads((src.path / "split.json").read_text())["test"]
    assert props["eodeploy:metrics"]["n"] == len(recorded_test)  # the source's recorded test split
    assert pkg.model_path.stat().st_size < src.model_path.stat().st_size / 3
    pkg.verify()
    import onnx

    ops = {n.op_type for n in onnx.load(str(pkg.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops

    # INT8 quality against its FP32 source, measured here rather than read back from the recipe.
    fp32, int8 = Predictor(src), Predictor(pkg)
    every = load_for_package(fp32, eurosat_dir, "all")  # 24 patches: the test split's handful are too few
    ref = fp32.predict(every.images, band_names=every.band_names).class_ids
    got = int8.predict(every.images, band_names=every.band_names).class_ids
    agreement = float(np.mean(got == ref))
    assert agreement >= 0.9, f"INT8 agrees with FP32 on only {agreement:.0%} of {len(ref)} patches"
    assert abs(recipe["agreement_with_source"] - _agreement_on_test(src, pkg, eurosat_dir)) < 1e-9
    acc_fp32, acc_int8 = float(np.mean(ref == every.labels)), float(np.mean(got == every.labels))
    assert acc_int8 >= acc_fp32 - 0.05, f"INT8 accuracy {acc_int8:.1%} vs FP32 {acc_fp32:.1%}"
    np.testing.assert_allclose(
        int8.predict_proba(every.images[:8], band_names=every.band_names),
        fp32.predict_proba(every.images[:8], band_names=every.band_names),
        atol=0.1,
    )


def _agreement_on_test(src: ModelPackage, derived: ModelPackage, data: Path) -> float:
    from eodeploy.optimize.calibration import evaluation_set

    a, b = Predictor(src), Predictor(derived)
    test = evaluation_set(a, data)
    return float(
        np.mean(
            a.predict(test.images, band_names=test.band_names).class_ids
            == b.predict(test.images, band_names=test.band_names).class_ids
        )
    )


def test_fp16_keeps_float32_io(repo: ModelRepository, eurosat_dir: Path, raw_patches: np.ndarray) -> None:
    pkg = optimize_package(repo.get("tiny"), "fp16", None)
    proba = Predictor(pkg).predict_proba(raw_patches)
    assert proba.dtype == np.float32
    np.testing.assert_allclose(proba, reference_proba(raw_patches), atol=2e-3)


def test_structured_pruning_narrows_the_network(cnn_repo: ModelRepository, eurosat_dir: Path) -> None:
    src = cnn_repo.get("cnn", 1)
    pkg = optimize_package(src, "prune", eurosat_dir, prune_rate=0.5)
    recipe = pkg.properties["eodeploy:optimization"]
    assert recipe["kept_channels"] == [16, 16, 32, 32, 64]
    assert recipe["parameters_after"] < recipe["parameters_before"] / 3
    assert pkg.model_path.stat().st_size < src.model_path.stat().st_size / 2
    assert (pkg.path / "weights.pt").is_file()
    assert pkg.properties["eodeploy:weights"]["pruned"] == [16, 16, 32, 32, 64]
    again = optimize_package(pkg, "prune", eurosat_dir, prune_rate=0.5)  # a pruned model can be pruned again
    assert again.properties["eodeploy:optimization"]["kept_channels"] == [8, 8, 16, 16, 32]


@pytest.mark.parametrize(
    "method, data, error, words",
    [
        ("int8", None, OptimizationError, "calibration data"),
        ("int8", "empty", DataError, "no"),
        ("prune", "data", OptimizationError, "no PyTorch weights"),
        ("zip", None, OptimizationError, "unknown optimisation"),
    ],
)
def test_failed_optimisation_writes_nothing(
    repo: ModelRepository,
    eurosat_dir: Path,
    tmp_path: Path,
    method: str,
    data: str | None,
    error: type,
    words: str,
) -> None:
    data_dir = {"empty": tmp_path / "empty", "data": eurosat_dir, None: None}[data]
    if data == "empty":
        data_dir.mkdir()  # type: ignore[union-attr]
        (data_dir / "notes.txt").write_text("no images here")  # type: ignore[operator]
    with pytest.raises(error, match=words):
        optimize_package(repo.get("tiny"), method, data_dir)
    assert repo.versions("tiny") == [1] and not _hidden(repo)


def test_openvino_backend_matches_onnxruntime(repo: ModelRepository, raw_patches: np.ndarray) -> None:
    require("openvino")
    p = Predictor(repo.get("tiny"), backend="openvino")
    np.testing.assert_allclose(p.predict_proba(raw_patches), reference_proba(raw_patches), atol=1e-5)
    assert p.describe()["backend"] == "openvino"


def test_unknown_backend_and_missing_tflite(repo: ModelRepository) -> None:
    with pytest.raises(UnknownBackendError, match="onnxruntime, openvino, litert"):
        Predictor(repo.get("tiny"), backend="tensorrt")
    require("ai_edge_litert")
    with pytest.raises(Exception, match="--format tflite"):
        Predictor(repo.get("tiny"), backend="litert")


def test_tflite_export_agrees_and_litert_backend_runs_it(
    cnn_repo: ModelRepository, eurosat_dir: Path
) -> None:
    require("tensorflow")
    require("ai_edge_litert")
    from eodeploy.package.tflite import export_tflite

    src = cnn_repo.get("cnn", 1)
    pkg = export_tflite(src, eurosat_dir)  # a new version: published ones are never modified
    record = pkg.properties["eodeploy:tflite"]
    assert pkg.version > src.version and not (src.path / "model.tflite").exists()
    assert record["agreement_with_onnx"] >= 0.99 and record["max_abs_diff"] < 1e-4
    from eodeploy._files import file_digest

    assert file_digest(pkg.path / "model.tflite") == record["sha256"]
    x = np.random.default_rng(3).integers(200, 3000, (5, 13, 64, 64)).astype(np.uint16)
    np.testing.assert_allclose(
        Predictor(pkg, backend="litert").predict_proba(x), Predictor(src).predict_proba(x), atol=1e-4
    )


def test_tflite_export_refuses_a_tta_graph(eurosat_dir: Path, tmp_path: Path) -> None:
    require("torch")
    require("tensorflow")
    from eodeploy.package.tflite import ExportError, export_tflite
    from eodeploy.train.pipeline import train_package
    from eodeploy.train.trainer import TrainConfig

    repo = ModelRepository(tmp_path / "models")
    pkg = train_package(eurosat_dir, repo, "tta", TrainConfig(epochs=1, patience=1, tta=True, threads=2))
    with pytest.raises(ExportError, match="--no-tta"):
        export_tflite(pkg, None)
    assert not (pkg.path / "model.tflite").exists() and repo.versions("tta") == [1]


def test_cli_optimize_benchmark_and_bad_flags(
    repo: ModelRepository, eurosat_dir: Path, tmp_path: Path
) -> None:
    r = invoke("optimize", "tiny", "--fp16", "--calibration", str(eurosat_dir), "--repo", str(repo.root))
    assert r.exit_code == 0, r.output
    assert "v2 (fp16)" in r.output
    out = tmp_path / "bench.json"
    r = invoke(
        "benchmark",
        "tiny:2",
        "--seconds",
        "0.05",
        "--data",
        str(eurosat_dir),
        "--json",
        str(out),
        "--repo",
        str(repo.root),
    )
    assert r.exit_code == 0, r.output
    import json

    row = json.loads(out.read_text())[0]
    # The figures that can be checked independently; speed is measured in benchmarks/, not asserted.
    fp16 = repo.get("tiny", 2)
    assert row["backend"] == "onnxruntime" and row["package"] == "tiny:2"
    assert row["size_kib"] == round(fp16.model_path.stat().st_size / 1024, 1)
    from eodeploy.optimize.calibration import evaluation_set

    p = Predictor(fp16)
    test = evaluation_set(p, eurosat_dir)
    accuracy = float(np.mean(p.predict(test.images, band_names=test.band_names).class_ids == test.labels))
    assert row["n"] == len(test.labels) and row["accuracy"] == round(accuracy, 4)
    assert "class_ids" not in row
    r = invoke("optimize", "tiny", "--int8", "--fp16", "--repo", str(repo.root))
    assert r.exit_code == 2 and "exactly one" in r.output
    r = invoke("benchmark", "tiny", "--backend", "tpu", "--repo", str(repo.root))
    assert r.exit_code == 2 and "unknown backend" in r.output
