"""Start a real ``eodeploy serve`` process on free ports, for tests that need real clients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    http: str  # http://127.0.0.1:PORT
    grpc: str  # 127.0.0.1:PORT
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def hostport(self) -> str:
        return self.http.removeprefix("http://")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after 15 s."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def server_env(repo: Path, log: Path, port: int, grpc_port: int, **env: str) -> dict[str, str]:
    """The environment of a test server: its repository, ports, one ONNX Runtime thread, and a
    database and maps folder beside its log."""
    return {
        **os.environ,
        "EODEPLOY_MODEL_REPO": str(repo),
        "EODEPLOY_PORT": str(port),
        "EODEPLOY_GRPC_PORT": str(grpc_port),
        "EODEPLOY_INTRA_OP_THREADS": "1",
        "EODEPLOY_DATABASE_URL": f"sqlite:///{log.parent / 'monitor.db'}",
        "EODEPLOY_MONITOR_DIR": str(log.parent / "monitoring"),
        **env,
    }


def spawn_server(
    environ: dict[str, str], log: Path, append: bool = False, **popen: Any
) -> subprocess.Popen[bytes]:
    """``eodeploy serve`` in a child process, its output written (or appended) to ``log``."""
    with open(log, "ab" if append else "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-c", "from eodeploy.cli.main import main; main()", "serve"],
            env=environ, stdout=fh, stderr=subprocess.STDOUT, **popen,
        )  # fmt: skip


def wait_ready(proc: subprocess.Popen[bytes], http: str, log: Path, timeout: float = 60) -> None:
    """Until ``http``/v2/health/ready answers 200; the log in the error when the process exits or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if requests.get(f"{http}/v2/health/ready", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {timeout:g} s:\n{log.read_text()}")
        time.sleep(0.1)


@contextmanager
def live_server(repo: Path, log: Path, **env: str) -> Iterator[LiveServer]:
    port, grpc_port = free_port(), free_port()
    proc = spawn_server(server_env(repo, log, port, grpc_port, **env), log)
    server = LiveServer(f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", proc, log)
    try:
        wait_ready(proc, server.http, log)
        yield server
    finally:
        stop(proc)
