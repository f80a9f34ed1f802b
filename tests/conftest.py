"""Fixtures: tiny real files (GeoTIFF patches, ONNX models) generated on the fly."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eodeploy.data.eurosat import EUROSAT_MS_BANDS
from eodeploy.package import ModelRepository, ModelSpec, default_classes

# Browser tests: Debian's Chromium through Playwright, watched pages, axe (tests/browser.py).
pytest_plugins = ["browser"]

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_EUROSAT = SHARED / "data" / "eurosat"
CLASSES = ["Forest", "River", "SeaLake"]
# Distinct mean spectra per class (EuroSAT-like magnitudes), so models can tell them apart.
SPECTRA = {
    "Forest": [1300, 1000, 900, 700, 1000, 2000, 2600, 2700, 800, 12, 1400, 700, 2900],
    "River": [1400, 1200, 1100, 1000, 1100, 1300, 1400, 1400, 500, 10, 1100, 800, 1500],
    "SeaLake": [1500, 1300, 1100, 800, 700, 600, 600, 550, 250, 8, 300, 200, 500],
}


def require(module: str):  # type: ignore[no-untyped-def]
    """Skip when an optional stack is absent, unless CI demands every stack (EODEPLOY_REQUIRE_EXTRAS=1)."""
    if os.environ.get("EODEPLOY_REQUIRE_EXTRAS") == "1":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def write_patch(path: Path, arr: np.ndarray) -> None:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(
        path, "w", driver="GTiff", width=arr.shape[2], height=arr.shape[1], count=arr.shape[0],
        dtype=arr.dtype, crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10),
    ) as dst:  # fmt: skip
        dst.write(arr)


def make_patch(cls: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    base = np.array(SPECTRA[cls], dtype=np.float64)[:, None, None]
    noise = rng.normal(0, 60, (13, size, size))
    return np.clip(base + noise, 1, 18000).astype(np.uint16)


@pytest.fixture(scope="session")
def eurosat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A EuroSAT-MS-layout folder: 3 classes x 8 patches of 13-band uint16 GeoTIFF."""
    root = tmp_path_factory.mktemp("eurosat")
    rng = np.random.default_rng(42)
    for cls in CLASSES:
        (root / cls).mkdir()
        for i in range(8):
            write_patch(root / cls / f"{cls}_{i}.tif", make_patch(cls, rng))
    return root


def linear_onnx(
    weights: np.ndarray, bias: np.ndarray, layout: str = "NCHW", softmax: bool = True, size: int = 64
) -> bytes:
    """A real ONNX graph: band means over the patch -> linear layer -> (softmax)."""
    from onnx import TensorProto, helper, numpy_helper

    c = weights.shape[0]
    axes = [2, 3] if layout == "NCHW" else [1, 2]
    shape = ["batch", c, size, size] if layout == "NCHW" else ["batch", size, size, c]
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits" if softmax else "output"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["output"], axis=1))
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", weights.shape[1]])],
        initializer=[
            numpy_helper.from_array(np.array(axes, dtype=np.int64), "axes"),
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(bias.astype(np.float32), "b"),
        ],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()


def linear_spec(name: str = "tiny", layout: str = "NCHW", output_kind: str = "probabilities") -> ModelSpec:
    return ModelSpec(
        name=name, bands=list(EUROSAT_MS_BANDS), height=64, width=64,
        classes=default_classes(CLASSES),
        value_scaling=[{"type": "z-score", "mean": 1000.0, "stddev": 500.0}],
        layout=layout, input_name="input", output_name="output", output_kind=output_kind,
        framework="ONNX",
    )  # fmt: skip


WEIGHTS = np.random.default_rng(0).normal(0, 1, (13, 3))
BIAS = np.array([0.1, -0.2, 0.05])


def reference_proba(raw: np.ndarray) -> np.ndarray:
    """What the linear model must output, computed independently in NumPy."""
    z = (raw.astype(np.float64) - 1000.0) / 500.0
    logits = z.mean(axis=(2, 3)) @ WEIGHTS + BIAS
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    r = ModelRepository(tmp_path / "models")
    r.add("tiny", linear_onnx(WEIGHTS, BIAS), linear_spec())
    return r


WEIGHTS_V2 = -WEIGHTS


def reference_proba_v2(raw: np.ndarray) -> np.ndarray:
    z = (raw.astype(np.float64) - 1000.0) / 500.0
    logits = z.mean(axis=(2, 3)) @ WEIGHTS_V2 + BIAS
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def add_tiny_v2(repo: ModelRepository) -> None:
    repo.add("tiny", linear_onnx(WEIGHTS_V2, BIAS), linear_spec())


@pytest.fixture
def raw_patches() -> np.ndarray:
    """Four raw uint16 13-band patches, one per class plus a mixed one."""
    rng = np.random.default_rng(7)
    patches = [make_patch(c, rng) for c in CLASSES]
    patches.append(np.clip(rng.normal(1200, 300, (13, 64, 64)), 1, 18000).astype(np.uint16))
    return np.stack(patches)


def make_repo(root: Path, versions: int = 1) -> ModelRepository:
    repo = ModelRepository(root / "models")
    repo.add("tiny", linear_onnx(WEIGHTS, BIAS), linear_spec())
    if versions > 1:
        add_tiny_v2(repo)
    return repo


def fuzz_settings(repo_root: Path) -> Any:
    """The app the property-based tests and the atheris harness fuzz: no gRPC, no polling, one
    ONNX thread, 1 MiB bodies, no monitoring."""
    from eodeploy.settings import Settings

    return Settings(
        model_repo=repo_root,
        grpc_port=0,
        poll_interval_s=0,
        intra_op_threads=1,
        max_body_mib=1,
        monitor_api=False,
    )


def wait_ready(client: Any, timeout_s: float = 60) -> None:
    """Models load in the background after start-up: wait for readiness (or for the initial load
    to end with nothing ready, when a test loads broken models on purpose)."""
    deadline = time.monotonic() + timeout_s
    registry = client.app.state.registry
    while not registry.loaded:
        if time.monotonic() > deadline:
            raise TimeoutError("models not loaded in time")
        time.sleep(0.02)


@pytest.fixture
def client_for() -> Iterator[Callable[..., Any]]:
    """A factory of real apps under TestClient, each closed after the test, models loaded."""
    from fastapi.testclient import TestClient

    from eodeploy.settings import Settings
    from eodeploy.web.app import create_app

    clients: list[Any] = []

    def make(repo: ModelRepository, wait: bool = True, **settings: object) -> Any:
        base: dict[str, object] = {"grpc_port": 0, "poll_interval_s": 0, "intra_op_threads": 1}
        cfg = Settings(model_repo=repo.root, **{**base, **settings})  # type: ignore[arg-type]
        client = TestClient(create_app(cfg), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if wait:
            wait_ready(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
