"""The AWS Lambda handler (eodeploy.serve.aws_lambda) in-process, with API Gateway REST (v1) and HTTP
API (payload 1.0 and 2.0) events as API Gateway sends them, against the bundled models.

Each answer is compared with what the normal server (create_inference_app under TestClient) answers
to the same request. The cold start runs in a fresh interpreter, as a new Lambda container would.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import require

require("mangum")

from fastapi.testclient import TestClient  # noqa: E402

from eodeploy.errors import MissingExtraError, ModelNotReadyError  # noqa: E402
from eodeploy.serve.app import create_inference_app  # noqa: E402
from eodeploy.serve.aws_lambda import (  # noqa: E402
    PAYLOAD_LIMIT_BYTES,
    LambdaHandler,
    lambda_settings,
    make_handler,
)
from eodeploy.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"  # eurosat-cnn (13 bands) and eurosat-rgb (3 bands), 64 x 64


class Context:
    """The attributes of the context object the Lambda runtime passes (no runtime runs here)."""

    function_name = "eodeploy-inference"
    function_version = "$LATEST"
    invoked_function_arn = "arn:aws:lambda:eu-central-1:123456789012:function:eodeploy-inference"
    memory_limit_in_mb = 3008
    aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"
    log_group_name = "/aws/lambda/eodeploy-inference"
    log_stream_name = "2026/11/23/[$LATEST]0123456789abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def rest_v1_event(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    b64: bool = False,
) -> dict[str, Any]:
    """An API Gateway REST API proxy-integration event (``resource``/``httpMethod``/``multiValueHeaders``)."""
    hdrs = {"Host": "abc123.execute-api.eu-central-1.amazonaws.com", "User-Agent": "pytest",
            "X-Forwarded-Proto": "https", "X-Forwarded-Port": "443", **(headers or {})}  # fmt: skip
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": hdrs,
        "multiValueHeaders": {k: [v] for k, v in hdrs.items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "2gxmpl",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "extendedRequestId": "JJbxmplHYosFVYQ=",
            "requestTime": "23/Nov/2026:15:00:00 +0000",
            "path": f"/prod{path}",
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": "prod",
            "domainPrefix": "abc123",
            "requestTimeEpoch": 1795446000000,
            "requestId": "rest-8b2d4f6a",
            "identity": {"sourceIp": "203.0.113.7", "userAgent": "pytest"},
            "domainName": "abc123.execute-api.eu-central-1.amazonaws.com",
            "apiId": "abc123",
        },
        "body": _body(body, b64),
        "isBase64Encoded": b64,
    }


def http_v2_event(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    b64: bool = False,
) -> dict[str, Any]:
    """An HTTP API event, payload format 2.0 (``requestContext.http``, ``rawPath``, ``cookies``)."""
    hdrs = {"host": "abc123.execute-api.eu-central-1.amazonaws.com", "user-agent": "pytest",
            "x-forwarded-proto": "https", "x-forwarded-port": "443",
            **{k.lower(): v for k, v in (headers or {}).items()}}  # fmt: skip
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "cookies": ["session=opaque"],
        "headers": hdrs,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": "abc123.execute-api.eu-central-1.amazonaws.com",
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "203.0.113.7",
                "userAgent": "pytest",
            },
            "requestId": "http-JJbxmpl",
            "routeKey": "$default",
            "stage": "$default",
            "time": "23/Nov/2026:15:00:00 +0000",
            "timeEpoch": 1795446000000,
        },
        "body": _body(body, b64),
        "isBase64Encoded": b64,
    }


def http_v1_event(
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    b64: bool = False,
) -> dict[str, Any]:
    """An HTTP API event, payload format 1.0 (the REST shape plus ``version``)."""
    event = rest_v1_event(method, path, body, headers, b64)
    event["version"] = "1.0"
    event["requestContext"]["requestId"] = "httpv1-Kc5xmpl"
    return event


EVENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "rest-v1": rest_v1_event, "http-v2": http_v2_event, "http-payload-1.0": http_v1_event,
}  # fmt: skip


def _body(body: bytes | None, b64: bool) -> str | None:
    if body is None:
        return None
    return base64.b64encode(body).decode() if b64 else body.decode()


def response_body(response: dict[str, Any]) -> bytes:
    body = response.get("body") or ""
    return base64.b64decode(body) if response.get("isBase64Encoded") else body.encode()


def response_header(response: dict[str, Any], name: str) -> str | None:
    return {k.lower(): v for k, v in (response.get("headers") or {}).items()}.get(name)


def settings(**extra: Any) -> Settings:
    return Settings(model_repo=MODELS, intra_op_threads=1, **extra)


@pytest.fixture(scope="module")
def handler() -> Iterator[LambdaHandler]:
    h = make_handler(settings())
    yield h
    h.close()


@pytest.fixture(scope="module")
def server() -> Iterator[TestClient]:
    """The normal server over the same models, for the reference answers."""
    app = create_inference_app(settings(grpc_port=0, poll_interval_s=0, cache_mib=0), grpc=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        registry = app.state.registry
        while not registry.loaded:
            time.sleep(0.02)
        yield client


def patches(bands: int, n: int, seed: int, high: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, (n, bands, 64, 64)).astype(np.float32)


def oip_json(x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    ).encode()


def oip_binary(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    payload = x.astype(np.float32).tobytes()
    header = json.dumps(
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                     "parameters": {"binary_data_size": len(payload)}}]}
    ).encode()  # fmt: skip
    return header + payload, {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }


def oip_outputs(doc: dict[str, Any]) -> dict[str, Any]:
    """Outputs by name; "proba" is the model's probability output (named by its package)."""
    out = {o["name"]: o for o in doc["outputs"]}
    out["proba"] = next(o for o in doc["outputs"] if o["datatype"] == "FP32")
    return out


# --- cold start: a fresh container --------------------------------------------------------------

COLD = textwrap.dedent(
    """
    import asyncio, base64, json, sys
    import numpy as np
    from eodeploy.serve.aws_lambda import handler   # what Lambda's runtime does at init
    x = np.random.default_rng(1).integers(0, 255, (2, 3, 64, 64)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "input", "shape": [2, 3, 64, 64], "datatype": "FP32",
                                   "data": x.ravel().tolist()}]})
    out = []
    for i in range(4):
        event = {"version": "2.0", "routeKey": "$default", "rawPath": "/v2/models/eurosat-rgb/infer",
                 "rawQueryString": "", "headers": {"content-type": "application/json"},
                 "requestContext": {"requestId": f"cold-{i}", "http": {"method": "POST",
                     "path": "/v2/models/eurosat-rgb/infer", "sourceIp": "203.0.113.7"}},
                 "body": body, "isBase64Encoded": False}
        r = handler(event, None)
        out.append([r["statusCode"], json.loads(r["body"])["outputs"][0]["data"]])
        if i == 1:
            asyncio.run(asyncio.sleep(0))   # other code ran asyncio.run(): the current loop is cleared
    print(json.dumps(out))
    """
)


def test_cold_start_loads_each_model_once_across_invocations() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "EODEPLOY_MODEL_REPO": str(MODELS),
        "EODEPLOY_INTRA_OP_THREADS": "1",
        "EODEPLOY_LOG_JSON": "true",
    }
    proc = subprocess.run(
        [sys.executable, "-c", COLD], env=env, capture_output=True, text=True, timeout=180, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    loaded = [
        r["message"].split(" ready")[0] for r in logs if r["message"].endswith("(CPUExecutionProvider)")
    ]
    assert sorted(loaded) == ["model eurosat-cnn version 3", "model eurosat-rgb version 2"]
    runs = json.loads(proc.stdout)
    assert [status for status, _ in runs] == [200] * 4
    assert all(data == runs[0][1] for _, data in runs)  # warm answers equal the first
    # Every invocation logged its access line under API Gateway's request id.
    ids = [r["request_id"] for r in logs if r.get("logger") == "eodeploy.access" and r.get("status") == 200]
    assert ids[-4:] == ["cold-0", "cold-1", "cold-2", "cold-3"]


# --- warm invocations, each event shape ---------------------------------------------------------


@pytest.mark.parametrize("kind", EVENTS)
def test_oip_json_infer_equals_the_server(kind: str, handler: LambdaHandler, server: TestClient) -> None:
    x = patches(3, 3, seed=2, high=255)
    body = oip_json(x)
    event = EVENTS[kind]("POST", "/v2/models/eurosat-rgb/infer", body, {"Content-Type": "application/json"})
    r = handler(event, Context())
    assert r["statusCode"] == 200, r["body"]
    assert response_header(r, "x-request-id") == event["requestContext"]["requestId"]
    mine = oip_outputs(json.loads(response_body(r)))
    ref = oip_outputs(server.post("/v2/models/eurosat-rgb/infer", content=body).json())
    np.testing.assert_allclose(mine["proba"]["data"], ref["proba"]["data"], rtol=0, atol=1e-6)
    assert mine["class_id"]["data"] == ref["class_id"]["data"]


@pytest.mark.parametrize("kind", EVENTS)
def test_oip_binary_tensor_base64(kind: str, handler: LambdaHandler, server: TestClient) -> None:
    x = patches(13, 2, seed=3, high=4000)
    body, headers = oip_binary(x)
    r = handler(EVENTS[kind]("POST", "/v2/models/eurosat-cnn/infer", body, headers, b64=True), Context())
    assert r["statusCode"] == 200, r["body"]
    mine = oip_outputs(json.loads(response_body(r)))
    ref = oip_outputs(server.post("/v2/models/eurosat-cnn/infer", content=body, headers=headers).json())
    np.testing.assert_allclose(mine["proba"]["data"], ref["proba"]["data"], rtol=0, atol=1e-6)
    assert mine["proba"]["shape"] == [2, 10]


@pytest.mark.parametrize("kind", EVENTS)
def test_tf_serving_predict(kind: str, handler: LambdaHandler, server: TestClient) -> None:
    x = patches(3, 2, seed=4, high=255).transpose(0, 2, 3, 1)  # channels last, as TF clients send
    body = json.dumps({"instances": x.tolist()}).encode()
    r = handler(EVENTS[kind]("POST", "/v1/models/eurosat-rgb:predict", body), Context())
    assert r["statusCode"] == 200, r["body"]
    mine = json.loads(response_body(r))["predictions"]
    ref = server.post("/v1/models/eurosat-rgb:predict", content=body).json()["predictions"]
    np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-6)
    assert np.asarray(mine).shape == (2, 10)


@pytest.mark.parametrize("kind", EVENTS)
def test_readiness(kind: str, handler: LambdaHandler) -> None:
    r = handler(EVENTS[kind]("GET", "/v2/health/ready"), Context())
    assert r["statusCode"] == 200
    assert response_header(r, "x-server-state") == "ready"


@pytest.mark.parametrize("kind", EVENTS)
def test_bad_request_is_a_clear_400_as_on_the_server(
    kind: str, handler: LambdaHandler, server: TestClient
) -> None:
    x = patches(13, 1, seed=5, high=4000)[:, :, :32, :32]  # wrong patch size for the model
    body = oip_json(x)
    r = handler(EVENTS[kind]("POST", "/v2/models/eurosat-cnn/infer", body), Context())
    ref = server.post("/v2/models/eurosat-cnn/infer", content=body)
    assert r["statusCode"] == ref.status_code == 400
    assert json.loads(response_body(r)) == ref.json()
    assert "64" in ref.json()["error"]  # names the expected shape


@pytest.mark.parametrize("kind", EVENTS)
def test_body_over_the_lambda_limit_is_a_clear_413(kind: str, handler: LambdaHandler) -> None:
    body = b'{"inputs": [' + b" " * (PAYLOAD_LIMIT_BYTES + 1) + b"]}"
    event = EVENTS[kind]("POST", "/v2/models/eurosat-cnn/infer", body)
    r = handler(event, Context())
    assert r["statusCode"] == 413
    error = json.loads(response_body(r))["error"]
    assert "exceeds AWS Lambda's limit of 6291456 bytes" in error and "fewer patches" in error
    assert response_header(r, "x-request-id") == event["requestContext"]["requestId"]


def test_base64_body_over_the_limit_counts_as_sent(handler: LambdaHandler) -> None:
    """5 MB of binary is 6.7 MB in the event once base64-encoded: over Lambda's limit."""
    body = b"\0" * (5 * 2**20)
    r = handler(http_v2_event("POST", "/v2/models/eurosat-cnn/infer", body, b64=True), Context())
    assert r["statusCode"] == 413
    assert "base64-encoded" in json.loads(response_body(r))["error"]


def test_large_request_under_the_limit_is_served(handler: LambdaHandler, server: TestClient) -> None:
    x = patches(13, 20, seed=6, high=4000)  # 4.3 MB binary, 5.7 MB as base64 in the event
    body, headers = oip_binary(x)
    event = rest_v1_event("POST", "/v2/models/eurosat-cnn/infer", body, headers, b64=True)
    assert PAYLOAD_LIMIT_BYTES - 2**20 < len(event["body"]) < PAYLOAD_LIMIT_BYTES
    r = handler(event, Context())
    assert r["statusCode"] == 200, r["body"][:300]
    ref = server.post("/v2/models/eurosat-cnn/infer", content=body, headers=headers).json()
    mine = oip_outputs(json.loads(response_body(r)))
    np.testing.assert_allclose(mine["proba"]["data"], oip_outputs(ref)["proba"]["data"], atol=1e-6)


def test_response_over_the_limit_is_a_413_not_a_failed_invocation(handler: LambdaHandler) -> None:
    limit = handler.limit
    try:
        handler.limit = 20_000  # the OpenAPI document is larger than this
        r = handler(http_v2_event("GET", "/openapi.json"), Context())
    finally:
        handler.limit = limit
    assert r["statusCode"] == 413
    assert "the response (" in json.loads(response_body(r))["error"]


def test_repository_changes_are_refused(handler: LambdaHandler) -> None:
    r = handler(http_v2_event("POST", "/v2/repository/models/eurosat-rgb/unload"), Context())
    assert r["statusCode"] == 501
    assert "not available on AWS Lambda" in json.loads(response_body(r))["error"]
    assert handler.app.state.registry.names() == ["eurosat-cnn", "eurosat-rgb"]  # still served


def test_unknown_model_is_a_404(handler: LambdaHandler) -> None:
    r = handler(rest_v1_event("POST", "/v2/models/nope/infer", b"{}"), Context())
    assert r["statusCode"] == 404
    assert "eurosat-cnn" in json.loads(response_body(r))["error"]  # names what is served


# --- configuration ------------------------------------------------------------------------------


def test_stateless_defaults_unless_set_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EODEPLOY_CACHE_MIB", "8")
    s = lambda_settings(Settings(model_repo=MODELS, poll_interval_s=5))
    assert (s.grpc_port, s.poll_interval_s) == (0, 0)
    assert s.cache_mib == 8  # set: kept
    assert (s.drift_sample_every, s.canary_mirror_share) == (0, 0)  # not set: off


def test_missing_mangum_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mangum", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'eodeploy\[lambda\]'"):
        make_handler(settings())


def test_empty_repository_fails_the_init_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReadyError, match="no model to serve.*EODEPLOY_MODEL_REPO"):
        make_handler(Settings(model_repo=tmp_path))


def test_broken_model_fails_the_init_with_its_reason(tmp_path: Path) -> None:
    import shutil

    shutil.copytree(MODELS / "eurosat-rgb" / "2", tmp_path / "eurosat-rgb" / "2")
    (tmp_path / "eurosat-rgb" / "2" / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(ModelNotReadyError, match="failed to load.*eurosat-rgb v2"):
        make_handler(Settings(model_repo=tmp_path, intra_op_threads=1))


# --- AWS's own runtime interface client, as in the image ----------------------------------------


class RuntimeAPI:
    """The Lambda Runtime API on loopback (what Lambda's service answers the runtime client):
    hands out the queued events and keeps what the function posts back."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        import queue
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        for e in events:
            self.events.put(e)
        self.results: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                assert self.path == "/2018-06-01/runtime/invocation/next", self.path
                event = api.events.get()  # blocks like the real API until there is work
                rid = event["requestContext"]["requestId"]
                deadline = str(int(time.time() * 1000) + 30_000)
                self._reply(200, json.dumps(event).encode(), {
                    "Content-Type": "application/json", "Lambda-Runtime-Aws-Request-Id": rid,
                    "Lambda-Runtime-Deadline-Ms": deadline,
                    "Lambda-Runtime-Invoked-Function-Arn": Context.invoked_function_arn,
                })  # fmt: skip

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                parts = self.path.split("/")  # /2018-06-01/runtime/invocation/{id}/response
                what = parts[-1] if parts[3] == "invocation" else "init-error"
                api.results.put((what, parts[4] if what != "init-error" else "", json.loads(body or b"{}")))
                self._reply(202, b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, n: int, timeout_s: float = 120) -> list[tuple[str, str, dict[str, Any]]]:
        return [self.results.get(timeout=timeout_s) for _ in range(n)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_ric(api: RuntimeAPI, repo: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "AWS_LAMBDA_RUNTIME_API": api.address,
        "EODEPLOY_MODEL_REPO": str(repo),
        "EODEPLOY_INTRA_OP_THREADS": "1",
        "EODEPLOY_LOG_JSON": "true",
    }
    cmd = [sys.executable, "-m", "awslambdaric", "eodeploy.serve.aws_lambda.handler"]  # the image's CMD
    return subprocess.Popen(
        cmd, env=env, cwd="/", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_aws_runtime_client_runs_the_image_cmd() -> None:
    require("awslambdaric")
    x = patches(3, 1, seed=8, high=255)
    events = [http_v2_event("POST", "/v2/models/eurosat-rgb/infer", oip_json(x)) for _ in range(3)]
    events.append(rest_v1_event("GET", "/v2/health/ready"))
    for i, e in enumerate(events):
        e["requestContext"]["requestId"] = f"ric-{i}"
    api = RuntimeAPI(events)
    proc = run_ric(api, MODELS)
    try:
        results = api.take(4)
    finally:
        proc.kill()  # the runtime client polls for work forever, as in a container
        out = proc.communicate(timeout=30)[0]
        api.close()
    assert [(what, rid) for what, rid, _ in results] == [("response", f"ric-{i}") for i in range(4)], out
    assert [r["statusCode"] for _, _, r in results] == [200, 200, 200, 200]
    assert len({r["body"] for _, _, r in results[:3]}) == 1  # the same answer, cold and warm
    assert out.count("(CPUExecutionProvider)") == 2, out  # each model loaded once, at init


def test_aws_runtime_client_reports_an_init_error(tmp_path: Path) -> None:
    require("awslambdaric")
    api = RuntimeAPI([])
    proc = run_ric(api, tmp_path)
    try:
        [(what, _, error)] = api.take(1)
        assert proc.wait(timeout=60) != 0
    finally:
        proc.kill()
        proc.communicate(timeout=30)
        api.close()
    assert what == "init-error"
    assert error["errorType"] == "ModelNotReadyError"
    assert "no model to serve" in error["errorMessage"]
