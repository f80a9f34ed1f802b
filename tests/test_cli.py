"""The CLI through Typer's runner, against tiny real packages and GeoTIFFs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CLASSES, require, write_patch
from eodeploy.cli.main import app
from eodeploy.data import load_patch_folder, stratified_split
from eodeploy.package import ModelPackage, ModelRepository

runner = CliRunner()


def invoke(*args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def test_models_list_show_validate_remove(repo: ModelRepository) -> None:
    r = invoke("models", "list", "--repo", str(repo.root))
    assert r.exit_code == 0 and "tiny" in r.output
    r = invoke("models", "show", "tiny:1", "--repo", str(repo.root))
    assert r.exit_code == 0 and "B8A" in r.output and "SeaLake" in r.output
    r = invoke("models", "validate", "tiny", "--repo", str(repo.root))
    assert r.exit_code == 0 and "valid" in r.output
    r = invoke("models", "show", "tiny", "--raw", "--repo", str(repo.root))
    assert '"mlm:name": "tiny"' in r.output
    r = invoke("models", "remove", "tiny", "1", "--repo", str(repo.root))
    assert r.exit_code == 0 and repo.names() == []


def test_unknown_model_is_a_clear_error(repo: ModelRepository) -> None:
    r = invoke("models", "show", "nope", "--repo", str(repo.root))
    assert r.exit_code == 2
    assert "no model named 'nope'" in r.output and "Traceback" not in r.output


def _train_tiny(eurosat_dir: Path, repo_dir: Path) -> ModelPackage:
    require("torch")
    r = invoke(
        "train",
        str(eurosat_dir),
        "--name",
        "tiny-cnn",
        "--epochs",
        "3",
        "--patience",
        "3",
        "--repo",
        str(repo_dir),
    )
    assert r.exit_code == 0, r.output
    return ModelRepository(repo_dir).get("tiny-cnn")


@pytest.mark.slow
def test_train_evaluate_export(eurosat_dir: Path, tmp_path: Path) -> None:
    pkg = _train_tiny(eurosat_dir, tmp_path / "models")
    props = pkg.properties
    assert props["eodeploy:training"]["data_hash"]
    assert set(props["eodeploy:reference_stats"]["bands"]) == set(pkg.spec.bands)
    assert sum(props["eodeploy:reference_stats"]["class_frequencies"].values()) == pytest.approx(1, abs=1e-3)
    expected = stratified_split(load_patch_folder(eurosat_dir), seed=0)
    assert props["eodeploy:metrics"]["n"] == len(expected.test)
    split = json.loads((pkg.path / "split.json").read_text())
    assert split["test"] == expected.test and not set(split["test"]) & set(split["train"])
    assert pkg.spec.value_scaling[0]["type"] == "z-score"

    r = invoke("evaluate", str(pkg.path), str(eurosat_dir), "--split", "all")
    assert r.exit_code == 0, r.output
    assert "confusion matrix" in r.output and "SeaLake" in r.output
    assert (pkg.path / "confusion_all.png").stat().st_size > 1000
    stored = ModelPackage(pkg.path).properties["eodeploy:evaluations"][f"{eurosat_dir.name}:all"]
    assert stored["n"] == 24
    ModelPackage(pkg.path).verify()  # evaluation never touches the model

    out = tmp_path / "triton"
    r = invoke(
        "export", "tiny-cnn", "--format", "triton", "--out", str(out), "--repo", str(tmp_path / "models")
    )
    assert r.exit_code == 0, r.output
    config = (out / "tiny-cnn" / "config.pbtxt").read_text()
    assert (
        'backend: "onnxruntime"' in config
        and "dims: [ 13, 64, 64 ]" in config
        and "max_batch_size: 64" in config
    )
    assert 'name: "raw_bands"' in config and 'name: "probabilities"' in config
    # the exported graph holds the package's preprocessing: raw patches in, the predictor's output out
    from eodeploy.package.fused import fused_session
    from eodeploy.runtime import Predictor

    data = load_patch_folder(eurosat_dir)
    raw = data.images[:6].astype(np.float32)
    session = fused_session((out / "tiny-cnn" / "1" / "model.onnx").read_bytes())
    got = session.run(["probabilities"], {"raw_bands": raw})[0]
    np.testing.assert_allclose(got, Predictor(pkg).predict_proba(raw), atol=1e-5)
    assert (out / "tiny-cnn" / "labels.txt").read_text().split() == CLASSES


def test_evaluate_bad_data(repo: ModelRepository, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "Forest").mkdir(parents=True)
    write_patch(data / "Forest" / "ok.tif", np.ones((13, 64, 64), np.uint16))
    (data / "Forest" / "broken.tif").write_bytes(b"II*\x00not a tiff")
    r = invoke("evaluate", "tiny", str(data), "--split", "all", "--repo", str(repo.root))
    assert r.exit_code == 2 and "broken.tif: cannot be read" in r.output
    r = invoke("evaluate", "tiny", str(data), "--split", "test", "--repo", str(repo.root))
    assert r.exit_code == 2


def test_wrong_band_count_in_data(repo: ModelRepository, tmp_path: Path) -> None:
    (tmp_path / "Forest").mkdir()
    write_patch(tmp_path / "Forest" / "a.tif", np.ones((4, 64, 64), np.uint16))
    r = invoke("evaluate", "tiny", str(tmp_path), "--split", "all", "--repo", str(repo.root))
    assert r.exit_code == 2 and "lacks band" in r.output


def test_import_cli_and_bad_options(tmp_path: Path) -> None:
    from conftest import BIAS, WEIGHTS, linear_onnx

    (tmp_path / "m.onnx").write_bytes(linear_onnx(WEIGHTS, BIAS))
    repo = str(tmp_path / "r")
    r = invoke(
        "import", str(tmp_path / "m.onnx"), "--name", "linear", "--classes", ",".join(CLASSES), "--repo", repo
    )
    assert r.exit_code == 0 and "v1" in r.output
    r = invoke("import", str(tmp_path / "m.onnx"), "--name", "linear", "--classes", "a,b", "--repo", repo)
    assert r.exit_code == 2 and "names 2 classes but the model has 3" in r.output
    r = invoke("import", str(tmp_path / "m.onnx"), "--name", "linear", "--scaling", "{oops", "--repo", repo)
    assert r.exit_code == 2 and "--scaling is not valid JSON" in r.output
    assert ModelRepository(repo).versions("linear") == [1]


def test_export_unknown_format(repo: ModelRepository, tmp_path: Path) -> None:
    r = invoke("export", "tiny", "--format", "coreml", "--out", str(tmp_path), "--repo", str(repo.root))
    assert r.exit_code == 2 and "unknown export format" in r.output


@pytest.mark.slow
def test_refit_trains_on_train_and_val(eurosat_dir: Path, tmp_path: Path) -> None:
    require("torch")
    r = invoke(
        "train", str(eurosat_dir), "--name", "refit-cnn", "--epochs", "2", "--refit", "--repo", str(tmp_path)
    )
    assert r.exit_code == 0, r.output
    pkg = ModelRepository(tmp_path).get("refit-cnn")
    assert pkg.properties["mlm:hyperparameters"]["refit"] is True
    # Reference statistics cover train + val, the data the weights saw; the test split is left out.
    expected = stratified_split(load_patch_folder(eurosat_dir), seed=0)
    assert pkg.properties["eodeploy:reference_stats"]["n_samples"] == len(expected.train) + len(expected.val)
    assert pkg.properties["eodeploy:metrics"]["n"] == len(expected.test)
