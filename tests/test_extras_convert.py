"""Building ONNX graphs is the ``convert`` extra (the server image leaves onnx out): browser models
are prebuilt with ``eodeploy models fuse`` into ``EODEPLOY_FUSED_DIR`` and served from there
without onnx; what would need onnx without a prebuilt graph is a clear error naming the extra."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import BIAS, WEIGHTS, linear_onnx, linear_spec, reference_proba, require, wait_ready
from eodeploy.cli.main import app
from eodeploy.errors import MissingExtraError
from eodeploy.package import ModelPackage, ModelRepository
from eodeploy.package import fused as fused_module
from eodeploy.package.fused import (
    PROBABILITIES,
    RAW_INPUT,
    clear_cache,
    fused_file,
    fused_model_bytes,
    fused_session,
    write_fused,
)

require("onnx")
EXTRA_LINE = "pip install 'eodeploy[convert]'"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    clear_cache()
    yield
    clear_cache()


def block_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in the server image: ``import onnx`` fails (None in sys.modules is how Python itself marks
    a module as not importable); the real modules come back after the test."""
    for name in [m for m in sys.modules if m == "onnx" or m.startswith("onnx.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx", None)


def _repo(tmp_path: Path, *weights: np.ndarray) -> list[ModelPackage]:
    repo = ModelRepository(tmp_path / "models")
    return [repo.add("lin", linear_onnx(w, BIAS), linear_spec()) for w in weights]


def linear_input_shape() -> tuple[int, int, int]:
    spec = linear_spec()
    return len(spec.bands), spec.height, spec.width


def _probabilities(graph: bytes, x: np.ndarray) -> np.ndarray:
    return np.asarray(fused_session(graph).run([PROBABILITIES], {RAW_INPUT: x})[0])


def test_prebuilt_graphs_are_served_without_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = _repo(tmp_path, WEIGHTS, -WEIGHTS)
    fused = tmp_path / "fused"
    path = write_fused(v1, fused)
    assert path == fused_file(v1, fused) and path.stat().st_size > 0
    assert not list(fused.glob(".*"))  # the atomic writer left no temporary file
    block_onnx(monkeypatch)
    graph = fused_model_bytes(ModelPackage(v1.path), fused)
    assert graph == path.read_bytes()
    x = np.random.default_rng(0).uniform(0, 3000, (3, *linear_input_shape())).astype(np.float32)
    np.testing.assert_allclose(_probabilities(graph, x), reference_proba(x), atol=1e-5)
    # v2 has no prebuilt graph, and this server cannot build one: the extra is named, nothing written
    with pytest.raises(MissingExtraError, match=r"eodeploy\[convert\]") as err:
        fused_model_bytes(v2, fused)
    assert err.value.extra == "convert" and EXTRA_LINE in str(err.value)
    assert sorted(p.name for p in fused.iterdir()) == [path.name]


def test_a_graph_built_on_request_is_kept_and_a_changed_package_is_not_served_a_stale_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    v1, v2 = _repo(tmp_path, WEIGHTS, -WEIGHTS)
    fused = tmp_path / "fused"
    a = fused_model_bytes(v1, fused)
    assert fused_file(v1, fused).read_bytes() == a
    # Another version, or the same name and version with another model: another file.
    assert fused_file(v2, fused) != fused_file(v1, fused)
    b = fused_model_bytes(v2, fused)
    assert b != a and {p.name for p in fused.iterdir()} == {
        fused_file(v1, fused).name,
        fused_file(v2, fused).name,
    }
    # A directory that cannot be written: served all the same, with a warning.
    clear_cache()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):  # root ignores the mode: make it a file's child instead
            ro = tmp_path / "a-file" / "fused"
            (tmp_path / "a-file").write_text("")
        with caplog.at_level(logging.WARNING, logger="eodeploy.package"):
            assert fused_model_bytes(v1, ro) == a
        assert any("could not keep the fused graph" in r.getMessage() for r in caplog.records)
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_cli_fuse_builds_every_version_and_names_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EODEPLOY_FUSED_DIR", raising=False)
    v1, v2 = _repo(tmp_path, WEIGHTS, -WEIGHTS)
    runner = CliRunner()
    repo = ["--repo", str(tmp_path / "models")]
    r = runner.invoke(app, ["models", "fuse", *repo, "--out", str(tmp_path / "f")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert {p.name for p in (tmp_path / "f").iterdir()} == {
        fused_file(v1, tmp_path / "f").name,
        fused_file(v2, tmp_path / "f").name,
    }
    r = runner.invoke(app, ["models", "fuse", "lin:1", *repo, "--out", str(tmp_path / "g")])
    assert r.exit_code == 0 and [p.name for p in (tmp_path / "g").iterdir()] == [
        fused_file(v1, tmp_path / "g").name
    ]
    r = runner.invoke(app, ["models", "fuse", *repo])
    assert r.exit_code == 2 and "EODEPLOY_FUSED_DIR" in r.output
    r = runner.invoke(app, ["models", "fuse", "nosuch", *repo, "--out", str(tmp_path / "h")])
    assert r.exit_code != 0 and "no model named 'nosuch'" in r.output and "Traceback" not in r.output


def test_optimisation_without_onnx_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eodeploy.optimize.methods import convert_fp16, quantize_int8
    from eodeploy.runtime import Predictor

    (pkg,) = _repo(tmp_path, WEIGHTS)
    block_onnx(monkeypatch)
    predictor = Predictor(pkg, providers=["CPUExecutionProvider"])
    with pytest.raises(MissingExtraError, match=r"eodeploy\[convert\]"):
        convert_fp16(predictor)
    with pytest.raises(MissingExtraError, match=r"eodeploy\[convert\]"):
        quantize_int8(predictor, np.zeros((2, *linear_input_shape()), np.float32))


@pytest.mark.serve
def test_the_dashboard_serves_prebuilt_browser_models_without_onnx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from eodeploy.settings import Settings
    from eodeploy.web.app import create_app

    v1, _ = _repo(tmp_path, WEIGHTS, -WEIGHTS)
    graph = write_fused(v1, tmp_path / "fused").read_bytes()  # as `eodeploy models fuse` would
    block_onnx(monkeypatch)
    clear_cache()
    cfg = Settings(
        model_repo=tmp_path / "models", fused_dir=tmp_path / "fused", version_policy="all", grpc_port=0,
        poll_interval_s=0, intra_op_threads=1, database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
    )  # fmt: skip
    with TestClient(create_app(cfg, grpc=False), raise_server_exceptions=False) as client:
        wait_ready(client)
        ok = client.get("/dashboard/models/lin/1/model.onnx")
        assert ok.status_code == 200 and ok.content == graph
        missing = client.get("/dashboard/models/lin/2/model.onnx")
        assert missing.status_code == 501 and EXTRA_LINE in missing.json()["error"], missing.text


def test_a_file_from_another_model_or_builder_is_never_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same name and version, another network (another repository): another file. A file written
    by another builder FORMAT under this package's key is left alone, not served."""
    (a,) = _repo(tmp_path / "a", WEIGHTS)
    (b,) = _repo(tmp_path / "b", -WEIGHTS)
    fused = tmp_path / "fused"
    assert (a.name, a.version) == (b.name, b.version) and fused_file(a, fused) != fused_file(b, fused)
    monkeypatch.setattr(fused_module, "FORMAT", 0)
    old = fused_file(a, fused)
    old.parent.mkdir(parents=True)
    old.write_bytes(b"graph of an older builder")
    monkeypatch.setattr(fused_module, "FORMAT", 1)
    graph = fused_model_bytes(a, fused)
    assert graph != b"graph of an older builder" and old.read_bytes() == b"graph of an older builder"
    # A damaged file under the right name is not handed out either: built again and replaced.
    clear_cache()
    fused_file(a, fused).write_bytes(graph[: len(graph) // 2])
    assert fused_model_bytes(a, fused) == graph and fused_file(a, fused).read_bytes() == graph
    x = np.random.default_rng(1).uniform(0, 3000, (2, *linear_input_shape())).astype(np.float32)
    np.testing.assert_allclose(_probabilities(graph, x), reference_proba(x), atol=1e-5)


def test_every_module_imports_without_onnx() -> None:
    """What the server image has: no onnx. Every eodeploy module imports in a fresh interpreter where
    importing onnx fails (training modules need PyTorch, which the image has not either)."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('onnx', 'torch', 'tensorflow', 'matplotlib'):\n"
        "            raise ImportError('blocked: ' + name, name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pkgutil, importlib, eodeploy\n"
        "n = 0\n"
        "for info in pkgutil.walk_packages(eodeploy.__path__, 'eodeploy.'):\n"
        "    if info.name.startswith(('eodeploy.train.', 'eodeploy.optimize.prune')):\n"
        "        continue\n"
        "    importlib.import_module(info.name)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip()) > 100
