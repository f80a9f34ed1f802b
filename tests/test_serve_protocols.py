"""Real clients against a real ``eodeploy serve`` process: tritonclient (HTTP + gRPC, binary and
JSON), plain requests in TF Serving's format (the guide's own snippet), curl uploads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import CLASSES, reference_proba, require, write_patch
from eodeploy.package import ModelRepository
from servers import LiveServer, live_server

pytestmark = pytest.mark.serve


@contextmanager
def _tiny_server(root: Path, **env: str) -> Iterator[LiveServer]:
    require("fastapi")
    from conftest import BIAS, WEIGHTS, linear_onnx, linear_spec

    repo = ModelRepository(root / "models")
    repo.add("tiny", linear_onnx(WEIGHTS, BIAS), linear_spec())
    with live_server(root / "models", root / "server.log", EODEPLOY_MAX_BODY_MIB="2", **env) as srv:
        yield srv


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Shared by the tests that only read and infer; a test that changes server state (unloads a
    model, sets keys) starts its own below, so no test depends on the order the file runs in."""
    with _tiny_server(tmp_path_factory.mktemp("serve")) as srv:
        yield srv


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[LiveServer]:
    with _tiny_server(tmp_path) as srv:
        yield srv


def test_tritonclient_http_json_and_binary(server: LiveServer, raw_patches: np.ndarray) -> None:
    th = require("tritonclient.http")
    client = th.InferenceServerClient(server.hostport)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    meta = client.get_model_metadata("tiny")
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 13, 64, 64]}
    expected = reference_proba(raw_patches)
    for binary in (False, True):
        inp = th.InferInput("input", list(raw_patches.shape), "UINT16")
        inp.set_data_from_numpy(raw_patches, binary_data=binary)
        outputs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("output", "class_id")]
        result = client.infer("tiny", [inp], outputs=outputs, request_id="r-1")
        np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-5)
        np.testing.assert_array_equal(result.as_numpy("class_id"), expected.argmax(1))
        assert result.get_response()["id"] == "r-1"
        assert result.get_response()["model_version"] == "1"


def test_tritonclient_classification_extension(server: LiveServer, raw_patches: np.ndarray) -> None:
    th = require("tritonclient.http")
    client = th.InferenceServerClient(server.hostport)
    inp = th.InferInput("input", list(raw_patches.shape), "FP32")
    inp.set_data_from_numpy(raw_patches.astype(np.float32))
    result = client.infer("tiny", [inp], outputs=[th.InferRequestedOutput("output", class_count=2)])
    top = result.as_numpy("output")
    assert top.shape == (4, 2)
    best = reference_proba(raw_patches).argmax(1)
    for row, b in zip(top, best):
        value, index, label = row[0].decode().split(":")
        assert int(index) == b and label == CLASSES[b]


def test_tritonclient_grpc_raw_contents(server: LiveServer, raw_patches: np.ndarray) -> None:
    tg = require("tritonclient.grpc")
    client = tg.InferenceServerClient(server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
    assert client.get_server_metadata().name == "eodeploy"
    meta = client.get_model_metadata("tiny")
    assert [t.name for t in meta.outputs] == ["output", "class_id"]
    inp = tg.InferInput("input", list(raw_patches.shape), "UINT16")
    inp.set_data_from_numpy(raw_patches)
    result = client.infer("tiny", [inp], model_version="1")
    np.testing.assert_allclose(result.as_numpy("output"), reference_proba(raw_patches), atol=1e-5)
    index = client.get_model_repository_index()
    assert [(m.name, m.version, m.state) for m in index.models] == [("tiny", "1", "AVAILABLE")]


@pytest.mark.parametrize(
    "shape, datatype, code, words",
    [
        ([1, 12, 64, 64], "FP32", "INVALID_ARGUMENT", "12 bands"),
        ([1, 13, 32, 32], "FP32", "INVALID_ARGUMENT", "does not match"),
        ([1, 13, 64, 64], "INT64", "INVALID_ARGUMENT", "datatype"),
    ],
)
def test_grpc_bad_input(server: LiveServer, shape: list[int], datatype: str, code: str, words: str) -> None:
    tg = require("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(server.grpc)
    inp = tg.InferInput("input", shape, datatype)
    inp.set_data_from_numpy(np.ones(shape, dtype=np.float32 if datatype == "FP32" else np.int64))
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny", [inp])
    assert code in str(err.value.status()) and words in err.value.message()


def test_grpc_unknown_input_name(server: LiveServer) -> None:
    tg = require("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(server.grpc)
    inp = tg.InferInput("pixels", [1, 13, 64, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 13, 64, 64), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny", [inp])
    assert "INVALID_ARGUMENT" in str(err.value.status()) and "unknown input 'pixels'" in err.value.message()


def test_grpc_repository_unload_and_load(own_server: LiveServer) -> None:
    tg = require("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(own_server.grpc)
    try:
        client.unload_model("tiny")
        assert not client.is_model_ready("tiny")
    finally:
        client.load_model("tiny")
    assert client.is_model_ready("tiny")
    with pytest.raises(InferenceServerException) as err:
        client.load_model("nope")
    assert "NOT_FOUND" in str(err.value.status())


def test_grpc_unknown_model(server: LiveServer) -> None:
    tg = require("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(server.grpc)
    inp = tg.InferInput("input", [1, 13, 64, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 13, 64, 64), np.float32))
    with pytest.raises(InferenceServerException, match="not served"):
        client.infer("nope", [inp])
    assert client.is_model_ready("nope") is False


def test_guides_tf_serving_client_snippet(server: LiveServer, raw_patches: np.ndarray) -> None:
    """The guide's client, unchanged but for the URL: json.dumps + data=, signature_name, instances."""
    test_images = raw_patches.transpose(0, 2, 3, 1)  # Keras users hold channels-last arrays
    data = json.dumps({"signature_name": "serving_default", "instances": test_images.tolist()})
    response = requests.post(f"{server.http}/v1/models/tiny:predict", data=data)
    predictions = response.json()["predictions"]
    np.testing.assert_allclose(predictions, reference_proba(raw_patches), atol=1e-5)


def test_tf_serving_columnar_status_metadata(server: LiveServer, raw_patches: np.ndarray) -> None:
    r = requests.post(
        f"{server.http}/v1/models/tiny/versions/1:predict", json={"inputs": {"input": raw_patches.tolist()}}
    )
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["outputs"], reference_proba(raw_patches), atol=1e-5)
    status = requests.get(f"{server.http}/v1/models/tiny").json()
    assert status == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    meta = requests.get(f"{server.http}/v1/models/tiny/metadata").json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert [d["size"] for d in sig["inputs"]["input"]["tensor_shape"]["dim"]] == ["-1", "13", "64", "64"]
    assert meta["eodeploy"]["classes"] == CLASSES


def test_curl_upload_single_and_batch(server: LiveServer, raw_patches: np.ndarray, tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl not installed")
    files = []
    for i, patch in enumerate(raw_patches[:3]):
        write_patch(tmp_path / f"p{i}.tif", patch)
        files.append(tmp_path / f"p{i}.tif")
    np.save(tmp_path / "p3.npy", raw_patches[3].transpose(1, 2, 0))  # channels-last .npy
    out = subprocess.run(
        ["curl", "-sS", "-F", f"image=@{files[0]}", f"{server.http}/predict?model=tiny"],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    single = json.loads(out)
    expected = reference_proba(raw_patches)
    assert single["class"] == CLASSES[expected[0].argmax()]
    assert single["confidence"] == pytest.approx(expected[0].max(), abs=1e-5)
    args = [a for f in [*files, tmp_path / "p3.npy"] for a in ("-F", f"files=@{f}")]
    batch = json.loads(
        subprocess.run(
            ["curl", "-sS", *args, f"{server.http}/predict?model=tiny&top_k=2"],
            capture_output=True,
            check=True,
            text=True,
        ).stdout  # fmt: skip
    )
    assert [p["class"] for p in batch["predictions"]] == [CLASSES[i] for i in expected.argmax(1)]
    assert len(batch["predictions"][0]["top_k"]) == 2


def _post(
    server: LiveServer, path: str, body: bytes, headers: dict[str, str] | None = None
) -> requests.Response:
    return requests.post(server.http + path, data=body, headers=headers or {})


def _binary_infer(
    shape: list[int], datatype: str, payload: bytes, declared: int | None = None
) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": shape, "datatype": datatype,
                     "parameters": {"binary_data_size": declared if declared is not None else len(payload)}}]}
    ).encode()  # fmt: skip
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


def _nan_patch() -> tuple[bytes, dict[str, str]]:
    x = np.full((1, 13, 64, 64), 1000, np.float32)
    x[0, 3, 5, 5] = np.nan
    return _binary_infer([1, 13, 64, 64], "FP32", x.tobytes())


def _truncated() -> tuple[bytes, dict[str, str]]:
    x = np.ones((1, 13, 64, 64), np.float32).tobytes()
    return _binary_infer([1, 13, 64, 64], "FP32", x[:1000], declared=len(x))


BAD_REQUESTS = {
    "unknown input name (OIP)": (
        "/v2/models/tiny/infer",
        lambda: (
            json.dumps(
                {
                    "inputs": [
                        {"name": "x", "shape": [1, 13, 64, 64], "datatype": "FP32", "data": [1.0] * 53248}
                    ]
                }
            ).encode(),
            {},
        ),  # fmt: skip
        400,
        "unknown input 'x'",
    ),
    "malformed json (OIP)": ("/v2/models/tiny/infer", lambda: (b'{"inputs": [', {}), 400, "not valid JSON"),
    "malformed json (TF)": ("/v1/models/tiny:predict", lambda: (b"{instances", {}), 400, "not valid JSON"),
    "wrong shape": (
        "/v2/models/tiny/infer",
        lambda: (
            json.dumps(
                {
                    "inputs": [
                        {"name": "input", "shape": [1, 13, 64, 64], "datatype": "FP32", "data": [1, 2, 3]}
                    ]
                }
            ).encode(),
            {},
        ),
        400,
        "needs 53248",
    ),
    "wrong datatype": (
        "/v2/models/tiny/infer",
        lambda: (
            json.dumps(
                {"inputs": [{"name": "input", "shape": [1], "datatype": "STRING", "data": [1]}]}
            ).encode(),
            {},
        ),
        400,
        "datatype",
    ),
    "wrong band count": (
        "/v2/models/tiny/infer",
        lambda: _binary_infer([1, 10, 64, 64], "FP32", np.ones((1, 10, 64, 64), np.float32).tobytes()),
        400,
        "10 bands",
    ),
    "nan values": ("/v2/models/tiny/infer", _nan_patch, 400, "NaN"),
    "infinite values (TF)": (
        "/v1/models/tiny:predict",
        lambda: (json.dumps({"instances": [[[[1e39] * 64] * 64] * 13]}).encode(), {}),
        400,
        "infinite",
    ),
    "unknown model": ("/v2/models/nope/infer", lambda: (b'{"inputs": []}', {}), 404, "not served"),
    "unknown version": (
        "/v1/models/tiny/versions/7:predict",
        lambda: (b'{"instances": []}', {}),
        404,
        "version 7",
    ),
    "unknown label": (
        "/v1/models/tiny/labels/canary:predict",
        lambda: (b'{"instances": []}', {}),
        404,
        "no label",
    ),
    "truncated binary": ("/v2/models/tiny/infer", _truncated, 400, "truncated"),
    "bad header length": (
        "/v2/models/tiny/infer",
        lambda: (b"{}", {"Inference-Header-Content-Length": "999"}),
        400,
        "Inference-Header-Content-Length",
    ),
    "oversized body": ("/v2/models/tiny/infer", lambda: (b" " * (3 * 2**20), {}), 413, "exceeds the limit"),
    "corrupt image": ("/predict?model=tiny", None, 400, "cannot be decoded"),
    "not an image": ("/predict?model=tiny", None, 400, "not a GeoTIFF"),
    "unknown signature": (
        "/v1/models/tiny:predict",
        lambda: (b'{"signature_name": "x", "instances": []}', {}),
        400,
        "signature",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_answers_4xx_and_server_keeps_serving(
    server: LiveServer, case: str, raw_patches: np.ndarray
) -> None:
    path, make, status, words = BAD_REQUESTS[case]
    if make is None:
        content = b"II*\x00" + b"\x00" * 50 if case == "corrupt image" else b"hello, not an image"
        r = requests.post(server.http + path, files={"image": ("patch.tif", content)})
    else:
        body, headers = make()
        r = _post(server, path, body, headers)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"]
    ok = requests.post(f"{server.http}/v1/models/tiny:predict", json={"instances": raw_patches[:1].tolist()})
    assert ok.status_code == 200


def test_metrics_and_request_ids(server: LiveServer, raw_patches: np.ndarray) -> None:
    r = requests.post(
        f"{server.http}/v1/models/tiny:predict",
        json={"instances": raw_patches.tolist()},
        headers={"X-Request-ID": "abc-123"},
    )
    assert r.headers["x-request-id"] == "abc-123"
    text = requests.get(f"{server.http}/metrics").text
    for name in (
        'eodeploy_inference_requests_total{model="tiny",outcome="success",protocol="tfserving",version="1"}',
        "eodeploy_inference_queue_duration_seconds_bucket",
        "eodeploy_inference_compute_duration_seconds_bucket",
        "eodeploy_inference_batch_size_bucket",
        'eodeploy_inference_pending_request_count{model="tiny",version="1"}',
        'eodeploy_cache_misses_total{model="tiny"}',
        'outcome="client_error"',
    ):
        assert name in text, name
    assert "abc-123" in server.log.read_text()  # JSON access log carries the request id


# schemathesis over every operation, stateful phase included (links: area created -> read, change,
# delete; model loaded -> ready, metadata, infer). CI form bounded; EODEPLOY_SCHEMATHESIS_EXAMPLES
# (and _MAX_TIME, seconds per run) for a longer exploration.
_ST_EXAMPLES = int(os.environ.get("EODEPLOY_SCHEMATHESIS_EXAMPLES", "8"))
_ST_MAX_TIME = os.environ.get("EODEPLOY_SCHEMATHESIS_MAX_TIME", "30")
_ST_CHECKS = "not_a_server_error,response_schema_conformance"
_KEY = "k-schemathesis"


def _schemathesis(server: LiveServer, tmp_path: Path, *extra: str) -> str:
    """One CLI run (its own process, the same PYTHONPATH); fails the test on any failed check."""
    config = tmp_path / "schemathesis.toml"
    config.write_text('[parameters]\n"path.name" = "tiny"\n"path.version" = "1"\n')
    exe = Path(sys.executable).with_name("schemathesis")
    run = subprocess.run(
        [str(exe), "--config-file", str(config), "run", f"{server.http}/openapi.json",
         "--phases", "examples,coverage,fuzzing,stateful", "--checks", _ST_CHECKS,
         "--max-examples", str(_ST_EXAMPLES), "--max-time", _ST_MAX_TIME, "--seed", "1",
         "--workers", "1", "--request-timeout", "30", *extra],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )  # fmt: skip
    (tmp_path / "schemathesis.out").write_text(run.stdout + run.stderr)  # the whole report, kept
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested and int(tested.group(1)) >= 30, run.stdout[-3000:]
    assert "Stateful" in run.stdout, run.stdout[-3000:]
    return run.stdout


def test_openapi_documents_real_request_bodies(server: LiveServer) -> None:
    """Every request body has a schema with its fields (not a bare object), links for stateful tests."""
    doc = requests.get(f"{server.http}/openapi.json").json()
    paths = doc["paths"]

    def body(path: str, kind: str = "application/json") -> dict:  # type: ignore[type-arg]
        return paths[path]["post"]["requestBody"]["content"][kind]["schema"]  # type: ignore[no-any-return]

    infer = body("/v2/models/{name}/infer")
    tensor = infer["properties"]["inputs"]["items"]
    assert tensor["required"] == ["name", "shape", "datatype"]
    assert set(tensor["properties"]["datatype"]["enum"]) >= {"UINT8", "UINT16", "FP32"}
    params = infer["properties"]["parameters"]["anyOf"][0]["properties"]
    assert params["units"]["enum"] == ["auto", "dn", "reflectance", "rgb8"] and "band_names" in params
    assert "classification" in json.dumps(infer["properties"]["outputs"])
    predict = body("/v1/models/{name}:predict")
    assert predict["oneOf"] == [{"required": ["instances"]}, {"required": ["inputs"]}]
    assert predict["properties"]["signature_name"]["const"] == "serving_default"
    assert "$ref" not in json.dumps([infer, predict])  # inlined: openapi_extra has no components
    for op in ("load", "unload"):
        assert body(f"/v2/repository/models/{{name}}/{op}")["type"] == "object"
        links = paths[f"/v2/repository/models/{{name}}/{op}"]["post"]["responses"]["200"]["links"]
        assert links["getV2ModelsNameReady"]["parameters"] == {"name": "$request.path.name"}
    area_links = paths["/monitor/areas"]["post"]["responses"]["201"]["links"]
    assert set(area_links) == {"getAreasName", "patchAreasName", "deleteAreasName", "getAreasNameSeries"}  # fmt: skip
    assert "content" not in json.dumps(paths["/v2/health/live"]["get"]["responses"]["200"]).replace(
        '"content": {}', ""
    )


def test_schemathesis_keys_off_no_server_errors(own_server: LiveServer, tmp_path: Path) -> None:
    """Keys off: every documented operation, stateful phase included; no 5xx, responses as documented.
    Its own server: it calls the repository API (unload) and creates areas."""
    require("schemathesis")
    out = _schemathesis(own_server, tmp_path)
    passed = re.search(r"(\d+) generated, (\d+) passed", out)
    assert passed and int(passed.group(2)) > 150, out[-3000:]


def test_schemathesis_keys_on_and_401_without_key(tmp_path: Path) -> None:
    """Keys on (inference too): with the key, the same run as above; without it, every protected
    operation answers 401 (not 5xx, not 200), and only health and metadata stay open."""
    require("schemathesis")
    with _tiny_server(tmp_path, EODEPLOY_API_KEYS=json.dumps([_KEY]), EODEPLOY_AUTH_INFERENCE="true") as srv:
        doc = requests.get(f"{srv.http}/openapi.json").json()
        open_ops, refused = [], []
        for path, ops in doc["paths"].items():
            url = srv.http + path.replace("{name}", "tiny").replace("{version}", "1").replace(
                "{label}", "stable").replace("{run_id}", "1").replace("{alert_id}", "1").replace(
                "{observation_id}", "1")  # fmt: skip
            for method in ops:
                r = requests.request(method, url, json={} if method in ("post", "patch") else None)
                assert r.status_code < 500, (method, path, r.status_code, r.text)
                (refused if r.status_code == 401 else open_ops).append(f"{method.upper()} {path}")
        protected = [
            o
            for o in refused + open_ops
            if re.search(r"infer|predict|repository|/monitor|/doctor|/feedback| /models/", o)
        ]
        assert sorted(protected) == sorted(refused), open_ops
        assert all(re.search(r"health|/metrics|^GET /v[12]", o) for o in open_ops), open_ops
        assert len(refused) >= 20
        refusals = srv.log.read_text().count('"status": 401')
        _schemathesis(srv, tmp_path, "--header", f"X-API-Key: {_KEY}")
        # With the key nothing was refused: the run reached the handlers, not the key check.
        assert srv.log.read_text().count('"status": 401') == refusals


# --- issue 12: gRPC keys, errors through the one table, bodies over the limit ---------------------
def test_grpc_api_keys(tmp_path: Path, raw_patches: np.ndarray) -> None:
    tg = require("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    with _tiny_server(tmp_path, EODEPLOY_API_KEYS='["k1"]', EODEPLOY_AUTH_INFERENCE="true") as srv:
        inp = tg.InferInput("input", list(raw_patches.shape), "UINT16")
        inp.set_data_from_numpy(raw_patches)
        anonymous = tg.InferenceServerClient(srv.grpc)
        for call in (lambda: anonymous.infer("tiny", [inp]), anonymous.get_model_repository_index):
            with pytest.raises(InferenceServerException) as err:
                call()
            assert "UNAUTHENTICATED" in str(err.value.status())
        wrong = {"x-api-key": "k2"}
        with pytest.raises(InferenceServerException) as err:
            anonymous.infer("tiny", [inp], headers=wrong)
        assert "UNAUTHENTICATED" in str(err.value.status())
        for headers in ({"x-api-key": "k1"}, {"authorization": "Bearer k1"}):
            result = anonymous.infer("tiny", [inp], headers=headers)
            np.testing.assert_allclose(result.as_numpy("output"), reference_proba(raw_patches), atol=1e-5)
        assert anonymous.get_model_repository_index(headers={"x-api-key": "k1"}).models
        assert anonymous.is_server_live()  # health stays open for probes


def test_grpc_bad_parameter_is_invalid_argument(server: LiveServer, raw_patches: np.ndarray) -> None:
    """The error the REST side answers 400 is INVALID_ARGUMENT over gRPC (one error table), not UNKNOWN."""
    tg = require("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(server.grpc)
    inp = tg.InferInput("input", list(raw_patches.shape), "UINT16")
    inp.set_data_from_numpy(raw_patches)
    out = tg.InferRequestedOutput("output")
    out._output.parameters["classification"].string_param = "x"
    with pytest.raises(InferenceServerException) as err:
        client.infer("tiny", [inp], outputs=[out])
    assert "INVALID_ARGUMENT" in str(err.value.status()) and "classification" in err.value.message()
    rest = requests.post(
        f"{server.http}/v2/models/tiny/infer",
        json={
            "inputs": [
                {"name": "input", "shape": [1, 13, 64, 64], "datatype": "UINT16", "data": [1] * 53248}
            ],
            "outputs": [{"name": "output", "parameters": {"classification": "x"}}],
        },
    )
    assert rest.status_code == 400 and "classification" in rest.json()["error"]


def test_chunked_body_over_the_limit_is_413(server: LiveServer) -> None:
    """No Content-Length (chunked transfer): the limit is enforced while reading, with the request id."""

    def chunks() -> Iterator[bytes]:
        for _ in range(48):
            yield b" " * 65536  # 3 MiB in all, over the server's 2 MiB

    for path in ("/v2/models/tiny/infer", "/v1/models/tiny:predict"):
        r = requests.post(server.http + path, data=chunks(), headers={"X-Request-ID": "chunky-1"})
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413, r.text
        assert "exceeds the limit" in r.json()["error"]
        assert r.headers["x-request-id"] == "chunky-1"
    ok = requests.get(server.http + "/v2/health/ready")
    assert ok.status_code == 200
