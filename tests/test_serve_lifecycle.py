"""The server's lifecycle on a real ``eodeploy serve`` process: a taken port is a clear error before
anything claims to serve, and SIGTERM drains — readiness says "draining" while the server still
answers, requests in flight over HTTP and gRPC finish, new connections are refused afterwards, and
the process exits 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from conftest import make_patch, make_repo, require
from servers import free_port, live_server


def _serve(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from eodeploy.cli.main import main; main()", "serve", str(tmp_path / "models"), *args],
        env={**os.environ, "EODEPLOY_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}", **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("which", ["http", "grpc"])
def test_a_taken_port_is_a_clear_error_before_serving(tmp_path: Path, which: str) -> None:
    make_repo(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = ["--port", str(port), "--grpc-port", "0"] if which == "http" else [
            "--port", str(free_port()), "--grpc-port", str(port)]  # fmt: skip
        r = _serve(tmp_path, *ports)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    option = "--port" if which == "http" else "--grpc-port"
    assert f"port {port} on 127.0.0.1 is not free" in out and option in out, out
    assert "serving" not in out and "Traceback" not in out and "Errno" not in out, out


def _body(n: int = 2) -> dict[str, Any]:
    x = np.stack([make_patch("Forest", np.random.default_rng(i)) for i in range(n)]).astype(np.float32)
    return {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }


def test_sigterm_drains_in_flight_http_and_grpc_then_exits_0(tmp_path: Path) -> None:
    tg = require("tritonclient.grpc")
    repo = make_repo(tmp_path)
    # Requests wait up to 1.5 s in the batcher for company: "slow requests in flight" without a slow model.
    env = {"EODEPLOY_MAX_QUEUE_DELAY_MS": "1500", "EODEPLOY_MAX_BATCH_SIZE": "64",
           "EODEPLOY_DRAIN_DELAY_S": "1.0", "EODEPLOY_DRAIN_TIMEOUT_S": "10", "EODEPLOY_POLL_INTERVAL_S": "0"}  # fmt: skip
    with live_server(repo.root, tmp_path / "server.log", **env) as server:
        url = f"{server.http}/v2/models/tiny/infer"
        results: dict[str, Any] = {}

        def http_call(key: str) -> None:
            try:
                results[key] = requests.post(url, json=_body(), timeout=30).status_code
            except requests.RequestException as exc:
                results[key] = repr(exc)

        def grpc_call() -> None:
            try:
                client = tg.InferenceServerClient(server.grpc)
                inp = tg.InferInput("input", [2, 13, 64, 64], "FP32")
                inp.set_data_from_numpy(
                    np.asarray(_body()["inputs"][0]["data"], np.float32).reshape(2, 13, 64, 64)
                )
                results["grpc"] = client.infer("tiny", [inp]).as_numpy("output").shape
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                results["grpc"] = repr(exc)

        threads = [threading.Thread(target=http_call, args=("before",)), threading.Thread(target=grpc_call)]
        for t in threads:
            t.start()
        time.sleep(0.4)  # both are waiting in the batcher now
        t0 = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = requests.get(f"{server.http}/v2/health/ready", timeout=5)
        assert ready.status_code == 503 and ready.headers["X-Server-State"] == "draining"
        assert requests.get(f"{server.http}/v2/health/live", timeout=5).status_code == 200
        during = threading.Thread(target=http_call, args=("during",))  # still accepted in the delay
        during.start()
        threads.append(during)
        for t in threads:
            t.join(30)
        assert results == {"before": 200, "during": 200, "grpc": (2, 3)}, results
        assert server.process.wait(15) == 0, server.log.read_text()
        elapsed = time.monotonic() - t0
        assert elapsed < 10, elapsed  # delay 1 s + in-flight requests, well inside the drain timeout
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{server.http}/v2/health/live", timeout=2)
    log = server.log.read_text()
    assert "SIGTERM: draining" in log and "Traceback" not in log, log
