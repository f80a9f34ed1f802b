"""The Lambda handler, invoked in-process with API Gateway REST (v1) and HTTP API (v2) events as AWS
sends them: the models load once per environment (import), not per invocation; answers equal the
server's; bad and oversized bodies are clear 4xx."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from conftest import make_patch, make_repo, require

ROOT = Path(__file__).resolve().parents[1]


def v1_event(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, b64: bool = False
) -> dict[str, Any]:
    headers = {"Host": "abc123.execute-api.eu-west-1.amazonaws.com", "User-Agent": "test", **(headers or {})}
    return {
        "resource": "/{proxy+}", "path": path, "httpMethod": method, "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": None, "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": path.lstrip("/")}, "stageVariables": None,
        "requestContext": {"resourceId": "r1", "resourcePath": "/{proxy+}", "httpMethod": method,
                           "path": f"/prod{path}", "stage": "prod", "requestId": "req-1",
                           "accountId": "123456789012", "apiId": "abc123", "protocol": "HTTP/1.1",
                           "identity": {"sourceIp": "203.0.113.7", "userAgent": "test"},
                           "requestTimeEpoch": 1700000000000},
        "body": (base64.b64encode(body).decode() if b64 else body.decode()) if body else None,
        "isBase64Encoded": b64,
    }  # fmt: skip


def v2_event(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, b64: bool = False
) -> dict[str, Any]:
    headers = {
        "host": "abc123.execute-api.eu-west-1.amazonaws.com",
        "user-agent": "test",
        **{k.lower(): v for k, v in (headers or {}).items()},
    }
    return {
        "version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "", "cookies": [],
        "headers": headers,
        "requestContext": {"accountId": "123456789012", "apiId": "abc123",
                           "domainName": "abc123.execute-api.eu-west-1.amazonaws.com", "domainPrefix": "abc123",
                           "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                                    "sourceIp": "203.0.113.7", "userAgent": "test"},
                           "requestId": "req-2", "routeKey": "$default", "stage": "$default",
                           "time": "23/Nov/2026:10:00:00 +0000", "timeEpoch": 1700000000000},
        "body": (base64.b64encode(body).decode() if b64 else body.decode()) if body else None,
        "isBase64Encoded": b64,
    }  # fmt: skip


class Context:
    function_name, memory_limit_in_mb, aws_request_id = "eodeploy", 2048, "ctx-1"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _x(n: int = 2) -> np.ndarray:
    return np.stack([make_patch("Forest", np.random.default_rng(i)) for i in range(n)]).astype(np.float32)


def _json_body(x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    ).encode()


def _binary_body(x: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()  # fmt: skip
    return header + x.tobytes(), {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


@pytest.fixture(scope="module")
def lambda_handler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require("mangum")
    from eodeploy.serve.aws_lambda import make_handler
    from eodeploy.settings import Settings

    root = tmp_path_factory.mktemp("lambda")
    repo = make_repo(root)
    handler = make_handler(Settings(model_repo=repo.root, intra_op_threads=1, cache_mib=0, log_json=False))
    yield handler
    import asyncio

    loop = asyncio.get_event_loop()  # Mangum's: stop the batchers on it, then leave no loop behind
    loop.run_until_complete(handler.app_state.registry.stop())
    loop.close()
    asyncio.set_event_loop(None)


def _server_probabilities(repo_root: Path, x: np.ndarray) -> np.ndarray:
    from eodeploy.serve.app import create_inference_app
    from eodeploy.settings import Settings

    app = create_inference_app(
        Settings(model_repo=repo_root, intra_op_threads=1, cache_mib=0, poll_interval_s=0), grpc=False
    )
    with TestClient(app) as client:
        import time

        for _ in range(100):
            if client.get("/v2/health/ready").status_code == 200:
                break
            time.sleep(0.1)
        out = client.post("/v2/models/tiny/infer", content=_json_body(x)).json()["outputs"]
    return np.asarray(next(o for o in out if o["name"] != "class_id")["data"]).reshape(len(x), -1)


@pytest.mark.parametrize("event", [v1_event, v2_event])
def test_infer_through_api_gateway_equals_the_server(lambda_handler: Any, event: Any) -> None:
    x = _x()
    r = lambda_handler(
        event("POST", "/v2/models/tiny/infer", _json_body(x), {"Content-Type": "application/json"}), Context()
    )
    assert r["statusCode"] == 200, r
    out = json.loads(r["body"])["outputs"]
    got = np.asarray(next(o for o in out if o["name"] != "class_id")["data"]).reshape(2, -1)
    repo_root = lambda_handler.app_state.settings.model_repo
    np.testing.assert_allclose(got, _server_probabilities(repo_root, x), atol=1e-6)
    # the binary tensor extension, base64 through API Gateway
    body, headers = _binary_body(x)
    rb = lambda_handler(event("POST", "/v2/models/tiny/infer", body, headers, b64=True), Context())
    assert rb["statusCode"] == 200, rb
    # TF Serving's REST API and readiness
    tf = json.dumps({"instances": x.tolist()}).encode()
    rt = lambda_handler(
        event("POST", "/v1/models/tiny:predict", tf, {"Content-Type": "application/json"}), Context()
    )
    assert rt["statusCode"] == 200 and np.allclose(json.loads(rt["body"])["predictions"], got, atol=1e-6)
    assert lambda_handler(event("GET", "/v2/health/ready"), Context())["statusCode"] == 200


@pytest.mark.parametrize("event", [v1_event, v2_event])
def test_bad_and_oversized_bodies_are_clear_errors(lambda_handler: Any, event: Any) -> None:
    bad = lambda_handler(
        event("POST", "/v2/models/tiny/infer", b"{not json", {"Content-Type": "application/json"}), Context()
    )
    assert bad["statusCode"] == 400 and "error" in json.loads(bad["body"]), bad
    unknown = lambda_handler(
        event("POST", "/v2/models/nope/infer", _json_body(_x(1)), {"Content-Type": "application/json"}),
        Context(),
    )
    assert unknown["statusCode"] == 404 and "nope" in json.loads(unknown["body"])["error"]
    big = b"0" * (6 * 2**20 + 1)  # over Lambda's 6 MB synchronous payload
    r = lambda_handler(
        event("POST", "/v2/models/tiny/infer", big, {"Content-Type": "application/json"}), Context()
    )
    assert r["statusCode"] == 413, r["statusCode"]
    message = json.loads(r["body"])["error"]
    assert "6" in message and "Traceback" not in r["body"], message


def test_models_load_once_per_environment_not_per_invocation(tmp_path: Path) -> None:
    """Cold: a fresh interpreter imports the entry module (Lambda's init); warm: three invocations."""
    require("mangum")
    repo = make_repo(tmp_path)
    script = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import eodeploy.serve.registry as reg
loads = []
original = reg.ModelRegistry._open_and_warm
def counting(self, package):
    loads.append(package.name)
    return original(self, package)
reg.ModelRegistry._open_and_warm = counting
from eodeploy.serve.lambda_handler import handler
from test_lambda import v2_event, v1_event, Context
after_import = len(loads)
codes = [handler(e("GET", "/v2/models/tiny/ready"), Context())["statusCode"] for e in (v1_event, v2_event, v2_event)]
print(json.dumps({{"after_import": after_import, "after_calls": len(loads), "codes": codes}}))
"""
    env = {
        **os.environ,
        "EODEPLOY_MODEL_REPO": str(repo.root),
        "EODEPLOY_LOG_JSON": "false",
        "EODEPLOY_INTRA_OP_THREADS": "1",
    }
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"after_import": 1, "after_calls": 1, "codes": [200, 200, 200]}, out


def test_a_missing_model_repository_is_a_clear_error(tmp_path: Path) -> None:
    require("mangum")
    from eodeploy.errors import ModelNotFoundError
    from eodeploy.serve.aws_lambda import make_handler
    from eodeploy.settings import Settings

    with pytest.raises(ModelNotFoundError, match="EODEPLOY_MODEL_REPO"):
        make_handler(Settings(model_repo=tmp_path / "nowhere"))
