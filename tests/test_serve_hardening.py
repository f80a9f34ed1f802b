"""Serving failure paths (issue 12): the 500 path, strict tensors, one error table, every 4xx
counted, readiness during and after a background load. Real app under TestClient, real files."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import make_repo, require, wait_ready
from eodeploy.errors import InferenceTimeoutError, InvalidInputError, ModelNotFoundError, ServerBusyError

require("fastapi")

from eodeploy.serve.middleware import JsonLogFormatter  # noqa: E402

N = 13 * 64 * 64


def oip(datatype: str, data: Any, shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": shape or [1, 13, 64, 64], "datatype": datatype, "data": data}],
        **extra,
    }


# --- item 8: the 500 path keeps its request id ---------------------------------------------------
def test_unexpected_error_is_a_generic_500_with_its_request_id(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path))

    async def broken() -> None:  # a real route on the real app that fails as a bug would
        raise RuntimeError("secret /srv/path detail")

    client.app.add_api_route("/boom", broken)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(JsonLogFormatter().format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("eodeploy.serve")
    logger.addHandler(handler)
    try:
        r = client.get("/boom", headers={"X-Request-ID": "rid-500"})
    finally:
        logger.removeHandler(handler)
    assert r.status_code == 500
    assert r.headers["x-request-id"] == "rid-500"
    assert r.json() == {"error": "internal server error; the server log has the details"}
    logged = [json.loads(line) for line in lines]
    assert any(e["request_id"] == "rid-500" and "secret /srv/path" in e.get("exception", "") for e in logged)


# --- item 8: bad values are 400, never 500 or a silent change --------------------------------------
@pytest.mark.parametrize(
    "body, words",
    [
        (oip("INT32", [1.7] * N), "whole numbers"),
        (oip("INT32", [None] * N), "null"),
        (oip("FP32", [None] * N), "null"),
        (oip("INT32", [2**64] * N), "INT32"),
        (oip("INT32", [2**70] * N), "INT32"),
        (oip("FP32", ["x"] * N), "strings"),
        (
            oip("UINT16", [1] * N, outputs=[{"name": "output", "parameters": {"classification": "x"}}]),
            "whole number",
        ),
    ],
)
def test_bad_tensor_values_are_400(tmp_path: Path, client_for, body: dict[str, Any], words: str) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path))
    r = client.post("/v2/models/tiny/infer", json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"]


def test_tf_serving_null_is_400_not_nan(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path))
    patch = np.full((13, 64, 64), 1000.0).tolist()
    patch[0][0][0] = None
    r = client.post("/v1/models/tiny:predict", json={"instances": [patch]})
    assert r.status_code == 400 and "null" in r.json()["error"]


def test_one_error_table_for_rest_and_grpc() -> None:
    from eodeploy.serve.errors import grpc_code_of, status_of

    cases = [
        (ModelNotFoundError("x"), 404, "NOT_FOUND"),
        (ServerBusyError("x"), 503, "UNAVAILABLE"),
        (InferenceTimeoutError("x"), 504, "DEADLINE_EXCEEDED"),
        (InvalidInputError("x"), 400, "INVALID_ARGUMENT"),
        (RuntimeError("x"), 500, "INTERNAL"),
    ]
    for exc, status, code in cases:
        assert (status_of(exc), grpc_code_of(exc)) == (status, code)


# --- item 9: every 4xx is a client error on /metrics -----------------------------------------------
def _client_errors(client: Any, protocol: str) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("eodeploy_inference_requests_total{") and 'outcome="client_error"' in line:
            if f'protocol="{protocol}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_4xx_is_counted_as_a_client_error(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path))
    cases = [
        ("tfserving", lambda: client.post("/v1/models/tiny:predict", content=b"{instances")),
        ("tfserving", lambda: client.post("/v1/models/tiny:predict", json={"instances": [[1, 2]]})),
        ("oip_http_json", lambda: client.post("/v2/models/tiny/infer", content=b'{"inputs": [')),
        ("oip_http_json", lambda: client.post("/v2/models/tiny/infer", json=oip("FP32", [1.0, 2.0]))),
        ("upload", lambda: client.post("/predict?model=tiny", files={"image": ("a.tif", b"hello")})),
    ]
    for protocol, send in cases:
        before = _client_errors(client, protocol)
        r = send()
        assert 400 <= r.status_code < 500, r.text
        assert _client_errors(client, protocol) == before + 1, (protocol, r.text)
    # Unknown model names are counted without their name: clients cannot grow the label set.
    assert client.post("/v1/models/made-up-7:predict", json={"instances": []}).status_code == 404
    assert _client_errors(client, "tfserving") == 3
    assert "made-up-7" not in client.get("/metrics").text


def test_refused_keys_are_counted_as_client_errors(
    tmp_path: Path, client_for, raw_patches: np.ndarray
) -> None:  # type: ignore[no-untyped-def]
    client = client_for(make_repo(tmp_path), api_keys=["k1"], auth_inference=True)
    x = raw_patches[:1]
    cases = [
        ("tfserving", lambda: client.post("/v1/models/tiny:predict", json={"instances": x.tolist()})),
        (
            "oip_http_json",
            lambda: client.post("/v2/models/tiny/infer", json=oip("UINT16", x.ravel().tolist())),
        ),
        ("upload", lambda: client.post("/predict?model=tiny", files={"image": ("a.npy", b"x")})),
    ]
    for protocol, send in cases:
        before = _client_errors(client, protocol)
        r = send()
        assert r.status_code == 401 and "API key" in r.json()["error"], r.text
        assert _client_errors(client, protocol) == before + 1, protocol


# --- item 10: liveness at once, readiness only when loaded -----------------------------------------
def _slow_onnx(chain: int) -> bytes:
    """The tiny linear model plus a chain of 64x64 MatMuls on the input whose result is multiplied
    by zero: same answers, but warm-up (a full batch) takes a while."""
    import onnx
    from onnx import helper, numpy_helper

    from conftest import BIAS, WEIGHTS, linear_onnx

    model = onnx.load_from_string(linear_onnx(WEIGHTS, BIAS))
    g = model.graph
    g.initializer.append(numpy_helper.from_array(np.eye(64, dtype=np.float32), "eye"))
    g.initializer.append(numpy_helper.from_array(np.zeros((1,), np.float32), "zero"))
    g.initializer.append(numpy_helper.from_array(np.array([1, 2, 3], np.int64), "all_axes"))
    prev = "input"
    for i in range(chain):
        g.node.append(helper.make_node("MatMul", [prev, "eye"], [f"slow{i}"]))
        prev = f"slow{i}"
    g.node.append(helper.make_node("ReduceMean", [prev, "all_axes"], ["slow_mean"], keepdims=0))
    g.node.append(helper.make_node("Mul", ["slow_mean", "zero"], ["slow_zero"]))
    g.node.append(helper.make_node("Unsqueeze", ["slow_zero", "one_axis"], ["slow_col"]))
    g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "one_axis"))
    out = g.output[0].name
    for node in g.node:
        node.output[:] = [f"{o}_pre" if o == out else o for o in node.output]
    g.node.append(helper.make_node("Add", [f"{out}_pre", "slow_col"], [out]))
    return model.SerializeToString()


def test_liveness_at_once_readiness_after_load(tmp_path: Path, client_for, raw_patches: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    from conftest import linear_spec, reference_proba
    from eodeploy.package import ModelRepository

    repo = ModelRepository(tmp_path / "models")
    repo.add("tiny", _slow_onnx(400), linear_spec())
    t0 = time.monotonic()
    client = client_for(repo, wait=False, max_batch_size=64)
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    r = client.get("/v2/models/tiny/ready")
    assert r.status_code == 503 and "loading" in r.json()["error"]
    wait_ready(client)
    assert time.monotonic() - t0 > 0.2  # the load did take a while, so the checks above saw it
    assert client.get("/v2/health/ready").status_code == 200
    r = client.post("/v1/models/tiny:predict", json={"instances": raw_patches[:1].tolist()})
    np.testing.assert_allclose(r.json()["predictions"], reference_proba(raw_patches[:1]), atol=1e-5)


def test_not_ready_when_every_version_failed(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path)
    (repo.root / "tiny" / "1" / "model.onnx").write_bytes(b"not an onnx model")
    client = client_for(repo)
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    rows = client.post("/v2/repository/index").json()
    assert rows[0]["state"] == "UNAVAILABLE" and rows[0]["reason"]


# --- item 6: a broken serving.json is reported and never stops serving ------------------------------
def test_broken_serving_json_keeps_the_last_good_routing(
    tmp_path: Path, client_for, raw_patches: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    from conftest import BIAS, WEIGHTS, linear_onnx, linear_spec

    repo = make_repo(tmp_path, versions=2)
    repo.add("a-model", linear_onnx(WEIGHTS, BIAS), linear_spec("a-model"))
    (repo.root / "a-model" / "serving.json").write_text("[1, 2]")  # a JSON list, sorted before tiny
    cfg = repo.root / "tiny" / "serving.json"
    cfg.write_text(json.dumps({"labels": {"stable": 1, "canary": 2}}))
    client = client_for(repo)
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/a-model/ready").status_code == 200  # served with the default policy
    assert "a-model/serving.json: the whole file" in caplog.text

    def stable_version() -> str:
        r = client.post("/v1/models/tiny/labels/stable:predict", json={"instances": raw_patches[:1].tolist()})
        assert r.status_code == 200, r.text
        return str(client.get("/v1/models/tiny/labels/stable").json()["model_version_status"][0]["version"])

    assert stable_version() == "1"
    caplog.clear()
    for broken in ('{"labels": {"stable": "one"}}', "[]", '{"label": {"stable": 2}}'):
        cfg.write_text(broken)
        assert client.post("/v2/repository/models/tiny/load").status_code == 200
        assert stable_version() == "1"  # the last good routing
    assert "tiny/serving.json: labels.stable: Input should be a valid integer" in caplog.text
    assert "label: Extra inputs are not permitted" in caplog.text


# --- item 3: uploads checked from their headers before any pixel is decoded ----------------------
def _geotiff_bomb(path: Path) -> bytes:
    """A 19 kB deflated, sparse GeoTIFF declaring 50 000 x 50 000 pixels x 13 uint16 bands (65 GB)."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="GTiff", width=50_000, height=50_000, count=13, dtype="uint16",
            compress="deflate", tiled=True, blockxsize=1024, blockysize=1024, interleave="pixel",
            sparse_ok=True,
        ):  # fmt: skip
            pass
    return path.read_bytes()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height grey pixels, followed by a few bytes of data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_header(width: int, height: int) -> bytes:
    """A real 8 x 8 JPEG whose frame header (SOF0) is patched to declare width x height pixels."""
    import struct

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<u2", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\x00" * 64


def test_oversized_uploads_are_refused_from_their_headers(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    import resource

    client = client_for(make_repo(tmp_path))
    cases = {
        "bomb.tif": _geotiff_bomb(tmp_path / "bomb.tif"),
        "bomb.png": _png_header(8000, 8000),
        "bomb.jpg": _jpeg_header(60000, 60000),
        "bomb.npy": _npy_header((13, 50_000, 50_000)),
    }
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for fname, content in cases.items():
        r = client.post("/predict?model=tiny", files={"image": (fname, content)})
        assert r.status_code == 413, (fname, r.text)
        error = r.json()["error"]
        assert set(r.json()) == {"error"} and "above the limit" in error and fname in error, error
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"


def test_upload_of_another_size_is_refused_before_decoding(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    from conftest import write_patch

    client = client_for(make_repo(tmp_path))
    write_patch(tmp_path / "small.tif", np.ones((13, 32, 32), np.uint16))
    r = client.post(
        "/predict?model=tiny", files={"image": ("small.tif", (tmp_path / "small.tif").read_bytes())}
    )
    assert r.status_code == 400 and "model takes 64 x 64 patches" in r.json()["error"]
