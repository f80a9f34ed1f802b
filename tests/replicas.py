"""Replicas of ``eodeploy serve`` behind Debian's nginx on loopback, with ``deploy/nginx/eodeploy.conf``
itself, and an open-loop client at a fixed rate that counts every answer that is not 200.

Used by tests/test_nginx_replicas.py and benchmarks/failover.py (the same scenarios with control
configurations). Everything listens on 127.0.0.1 and every run is bounded in time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
NGINX_CONF = ROOT / "deploy" / "nginx" / "eodeploy.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

from servers import free_port, server_env, spawn_server, wait_ready  # noqa: E402


def render_nginx(
    conf: str, http_ports: list[int], grpc_ports: list[int], listen: int, grpc_listen: int
) -> str:
    """The shipped config with the compose host names replaced by loopback ports: one source."""
    http = iter(http_ports)
    grpc = iter(grpc_ports)
    conf = re.sub(r"server eodeploy-\d+:8000", lambda _: f"server 127.0.0.1:{next(http)}", conf)
    conf = re.sub(r"server eodeploy-\d+:8001", lambda _: f"server 127.0.0.1:{next(grpc)}", conf)
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    return conf.replace("listen 8081 http2;", f"listen 127.0.0.1:{grpc_listen} http2;")


class Nginx:
    """nginx as a foreground process with its prefix in ``work``."""

    def __init__(self, work: Path, site: str) -> None:
        self.work, self.port, self.grpc_port = work, free_port(), free_port()
        work.mkdir(parents=True, exist_ok=True)
        self.site = site
        self.proc: subprocess.Popen[bytes] | None = None

    def write(self, http_ports: list[int], grpc_ports: list[int]) -> Path:
        (self.work / "eodeploy.conf").write_text(
            render_nginx(self.site, http_ports, grpc_ports, self.port, self.grpc_port)
        )
        temps = "\n".join(
            f"    {t}_temp_path {self.work / t};"
            for t in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the prefix under tmp
        main = self.work / "nginx.conf"
        main.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {self.work / 'nginx.pid'};\n"
            f"error_log {self.work / 'error.log'} warn;\nevents {{ worker_connections 1024; }}\n"
            f"http {{\n    access_log off;\n{temps}\n    include {self.work / 'eodeploy.conf'};\n}}\n"
        )
        return main

    def check(self, main: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [NGINX, "-t", "-c", str(main), "-p", str(self.work)], capture_output=True, text=True
        )

    def start(self, http_ports: list[int], grpc_ports: list[int]) -> None:
        main = self.write(http_ports, grpc_ports)
        checked = self.check(main)
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{checked.stderr}")
        self.proc = subprocess.Popen(
            [NGINX, "-c", str(main), "-p", str(self.work)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{self.port}/v2/health/live", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError(f"nginx did not start: {(self.work / 'error.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Replica:
    """One ``eodeploy serve`` process; ``start`` again after it stopped reuses its ports."""

    repo: Path
    log: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        defaults = {
            "EODEPLOY_ORT_SPINNING": "false",
            "EODEPLOY_CACHE_MIB": "0",  # every request reaches the model
            "EODEPLOY_POLL_INTERVAL_S": "0",
            "EODEPLOY_LOG_JSON": "false",
        }
        environ = server_env(self.repo, self.log, self.port, self.grpc_port, **{**defaults, **self.env})
        # Started at nice 10 and raised to 0 once ready (wait_ready): on 2 cores a replica's
        # ~1.5 CPU-seconds of start-up would otherwise slow the replicas serving meanwhile.
        self.proc = spawn_server(environ, self.log, append=True, preexec_fn=lambda: os.nice(10))

    def wait_ready(self, timeout: float = 60) -> None:
        assert self.proc is not None
        wait_ready(self.proc, f"http://127.0.0.1:{self.port}", self.log, timeout)
        with contextlib.suppress(PermissionError):  # back to normal priority (root only)
            os.setpriority(os.PRIO_PROCESS, self.proc.pid, 0)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM and wait for the drain; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def infer_body(n: int = 1) -> bytes:
    """A one-patch OIP JSON request for the tests' tiny model (13 bands)."""
    import json

    from conftest import make_patch

    x = np.stack([make_patch("Forest", np.random.default_rng(i)) for i in range(n)]).astype(np.float32)
    return json.dumps(
        {
            "inputs": [
                {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
            ]
        }
    ).encode()


@dataclass
class LoadResult:
    sent: int
    status: Counter[str]
    latencies_ms: list[float]
    failures: list[str]

    @property
    def failed(self) -> int:
        return self.sent - self.status.get("200", 0)

    def p(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


class FixedRateLoad:
    """Open loop: one request every 1/rate s whatever the answers (a slow or failing server does
    not slow the client down, as it would in a closed loop); every answer is counted."""

    def __init__(self, url: str, body: bytes, rate: float, max_in_flight: int = 64) -> None:
        self.url, self.body, self.rate = url, body, rate
        self.pool = ThreadPoolExecutor(max_in_flight)
        self.local = threading.local()
        self.lock = threading.Lock()
        self.status: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _one(self) -> None:
        session = getattr(self.local, "session", None)
        if session is None:
            session = self.local.session = requests.Session()
        t0 = time.perf_counter()
        try:
            r = session.post(
                self.url, data=self.body, headers={"Content-Type": "application/json"}, timeout=30
            )
            key = str(r.status_code)
            detail = f"{r.status_code} {r.text[:200]}"
        except requests.RequestException as exc:
            key, detail = type(exc).__name__, repr(exc)[:200]
        dt = (time.perf_counter() - t0) * 1000
        with self.lock:
            self.status[key] += 1
            self.latencies.append(dt)
            if key != "200":
                self.failures.append(detail)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            due = start + self.sent / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self.pool.submit(self._one)
            self.sent += 1

    def __enter__(self) -> FixedRateLoad:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def mark(self) -> int:
        """How many answers have arrived so far (to split the run into phases)."""
        with self.lock:
            return len(self.latencies)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self.pool.shutdown(wait=True)

    def result(self, since: int = 0, until: int | None = None) -> LoadResult:
        with self.lock:
            lat = self.latencies[since:until]
            return LoadResult(self.sent, Counter(self.status), lat, list(self.failures))
