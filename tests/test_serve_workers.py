"""``eodeploy serve --workers N`` on real processes: the workers share one port and one /metrics,
a killed worker is replaced while the others answer, and SIGTERM drains them all to exit 0."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from conftest import make_patch, make_repo
from eodeploy.serve.workers import available_cores, worker_settings
from eodeploy.settings import Settings
from servers import LiveServer, live_server

pytestmark = pytest.mark.serve


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _workers(server: LiveServer, n: int, timeout: float = 30) -> set[int]:
    """The supervisor's worker pids, once there are ``n`` and the server answers ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # spawn also starts multiprocessing's resource tracker: workers are the ones with a model
        kids = {p for p in _children(server.process.pid) if "spawn_main" in _cmdline(p)}
        if len(kids) == n and _listening(server) == kids:  # each listens once its models are ready
            return kids
        time.sleep(0.2)
    raise AssertionError(f"not {n} ready workers after {timeout} s:\n{server.log.read_text()}")


def _listening(server: LiveServer) -> set[int]:
    """Pids with a listening socket on the server's HTTP port."""
    port = server.http.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    return {int(pid) for pid in re.findall(r"pid=(\d+)", out)}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


def _infer(server: LiveServer) -> requests.Response:
    x = make_patch("Forest", np.random.default_rng(0))[None].astype(np.float32)
    body = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }
    return requests.post(f"{server.http}/v2/models/tiny/infer", json=body, timeout=30)  # a new connection


def _requests_total(server: LiveServer) -> float:
    text = requests.get(f"{server.http}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("eodeploy_inference_requests_total{") and 'model="tiny"' in line
    )


def _answered_by(log: Path) -> set[int]:
    pids = set()
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("logger") == "eodeploy.access" and "/infer" in rec.get("path", ""):
                pids.add(rec["pid"])
    return pids


def test_workers_share_the_port_and_metrics_add_up(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    with live_server(repo.root, tmp_path / "server.log", EODEPLOY_WORKERS="2") as server:
        workers = _workers(server, 2)
        for _ in range(40):
            assert _infer(server).status_code == 200
        # Every request counted once, whichever worker answered it and whichever answers the scrape.
        assert _requests_total(server) == 40
        assert _requests_total(server) == 40
        answered = _answered_by(server.log)
        assert answered == workers, (answered, workers)  # the kernel spread connections over both
        metrics = requests.get(f"{server.http}/metrics", timeout=10).text
        assert 'eodeploy_model_ready{model="tiny",version="1"} 1.0' in metrics
        assert "eodeploy_monitor_database_up" in metrics  # computed gauges are still exposed


def test_a_killed_worker_is_replaced_while_the_others_answer(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    with live_server(repo.root, tmp_path / "server.log", EODEPLOY_WORKERS="2") as server:
        before = _workers(server, 2)
        for _ in range(10):
            assert _infer(server).status_code == 200
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        while _state(victim) not in ("Z", "gone"):  # its listening socket closes when it is dead
            time.sleep(0.01)
        # A connection racing the kill can still be reset (1 in ~20 runs here, within ~40 ms): that
        # is what a load balancer's retry is for (tests/test_nginx_replicas.py), not this test.
        time.sleep(0.2)
        # New connections go to the worker still listening while the replacement loads.
        for _ in range(10):
            assert _infer(server).status_code == 200
        after = _workers(server, 2)
        assert victim not in after and len(after & before) == 1, (before, after)
        assert _requests_total(server) == 20  # the dead worker's requests still count
        assert f"(pid {victim}) exited with code -9" in server.log.read_text()


def test_sigterm_drains_every_worker_and_exits_0(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    with live_server(repo.root, tmp_path / "server.log", EODEPLOY_WORKERS="2") as server:
        workers = _workers(server, 2)
        assert _infer(server).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.log.read_text()
        assert not any(Path(f"/proc/{p}").exists() and _cmdline(p) for p in workers)
        log = server.log.read_text()
        assert log.count("SIGTERM: draining") == 2 and "Traceback" not in log, log


def test_onnx_runtime_threads_are_budgeted_per_worker() -> None:
    cfg = Settings(workers=2)
    w = worker_settings(cfg, cores=4)
    assert (w.intra_op_threads, w.ort_spinning) == (2, False)
    assert worker_settings(Settings(workers=8), cores=2).intra_op_threads == 1
    # What the operator set is kept.
    explicit = worker_settings(Settings(workers=2, intra_op_threads=3, ort_spinning=True), cores=4)
    assert (explicit.intra_op_threads, explicit.ort_spinning) == (3, True)
    assert 1 <= available_cores() <= (os.cpu_count() or 1)


def test_zero_workers_is_a_clear_error(tmp_path: Path) -> None:
    from eodeploy.cli.main import app

    r = CliRunner().invoke(app, ["serve", str(tmp_path), "--workers", "0"])
    assert r.exit_code == 2 and "--workers" in r.output and "Traceback" not in r.output, r.output


def test_sigterm_while_workers_start_is_a_clean_stop(tmp_path: Path) -> None:
    """A stop that arrives while the workers are still importing or loading: exit 0, none left."""
    import sys

    from servers import free_port

    repo = make_repo(tmp_path)
    env = {**os.environ, "EODEPLOY_MODEL_REPO": str(repo.root), "EODEPLOY_WORKERS": "2",
           "EODEPLOY_PORT": str(free_port()), "EODEPLOY_GRPC_PORT": str(free_port()),
           "EODEPLOY_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", "from eodeploy.cli.main import main; main()", "serve"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 30
    while len([p for p in _children(proc.pid) if "spawn_main" in _cmdline(p)]) < 2:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
