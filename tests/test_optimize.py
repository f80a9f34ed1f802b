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
from eodeploy.package import ModelRepository
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
    src = cnn_repo.get("cnn", 1)
    pkg = optimize_package(src, "int8", eurosat_dir)
    props = pkg.properties
    recipe = props["eodeploy:optimization"]
    assert recipe["method"] == "int8-static-qdq" and recipe["calibration_patches"] > 0
    assert recipe["calibration_files_hash"] and 0 <= recipe["agreement_with_source"] <= 1
    assert props["eodeploy:derived_from"] == {"name": "cnn", "version": 1} or "cnn" in str(
        props["eodeploy:derived_from"]
    )
    assert props["eodeploy:metrics"]["n"] == 6  # the source's recorded test split
    assert pkg.model_path.stat().st_size < src.model_path.stat().st_size / 3
    pkg.verify()
    import onnx

    ops = {n.op_type for n in onnx.load(str(pkg.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


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

    pkg = cnn_repo.get("cnn", 1)
    record = export_tflite(pkg, eurosat_dir)
    assert record["agreement_with_onnx"] >= 0.99 and record["max_abs_diff"] < 1e-4
    assert pkg.properties["eodeploy:tflite"]["sha256"] == record["sha256"]
    x = np.random.default_rng(3).integers(200, 3000, (5, 13, 64, 64)).astype(np.uint16)
    np.testing.assert_allclose(
        Predictor(pkg, backend="litert").predict_proba(x), Predictor(pkg).predict_proba(x), atol=1e-4
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
    assert not (pkg.path / "model.tflite").exists()


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
    assert (
        row["backend"] == "onnxruntime"
        and row["throughput_b32"] > 0
        and row["latency_ms_p99"] >= row["latency_ms_p50"]
    )
    r = invoke("optimize", "tiny", "--int8", "--fp16", "--repo", str(repo.root))
    assert r.exit_code == 2 and "exactly one" in r.output
    r = invoke("benchmark", "tiny", "--backend", "tpu", "--repo", str(repo.root))
    assert r.exit_code == 2 and "unknown backend" in r.output
