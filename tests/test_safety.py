"""Safety: refusing an open server on a network address, masked secrets, immutable published versions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from typer.testing import CliRunner

from eodeploy.cli.main import app
from eodeploy.package import ModelRepository
from servers import free_port


def _serve(repo: Path, log: Path, *args: str, **env: str) -> tuple[int | None, str]:
    """Start ``eodeploy serve`` for real: (exit code, log) if it exits, (None, log) once it is ready."""
    port = free_port()
    environ = {
        **os.environ,
        "EODEPLOY_MODEL_REPO": str(repo),
        "EODEPLOY_PORT": str(port),
        "EODEPLOY_GRPC_PORT": "0",
        "EODEPLOY_INTRA_OP_THREADS": "1",
        "EODEPLOY_MONITOR_API": "false",
        **env,
    }
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from eodeploy.cli.main import main; main()", "serve", *args],
            env=environ, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return proc.returncode, log.read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    return None, log.read_text()
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        return -1, log.read_text() + "\n(not ready after 60 s)"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.serve
def test_serve_refuses_network_address_without_keys(repo: ModelRepository, tmp_path: Path) -> None:
    code, log = _serve(repo.root, tmp_path / "refused.log", "--host", "0.0.0.0")
    assert code == 2, f"the server started on 0.0.0.0 with no API keys:\n{log}"
    assert "without API keys" in log and "--insecure" in log and "EODEPLOY_API_KEYS" in log
    assert "Traceback" not in log


@pytest.mark.serve
@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--host", "0.0.0.0", "--insecure"), {}),
        ((), {"EODEPLOY_HOST": "0.0.0.0", "EODEPLOY_INSECURE": "1"}),
        (("--host", "0.0.0.0"), {"EODEPLOY_API_KEYS": '["a-long-random-key"]'}),
    ],
    ids=["flag", "env", "keys"],
)
def test_serve_network_address_when_told_or_keyed(
    repo: ModelRepository, tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    code, log = _serve(repo.root, tmp_path / "open.log", *args, **env)
    assert code is None, f"server exited with {code}:\n{log}"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.org", False)],
)  # fmt: skip
def test_loopback_addresses(host: str, loopback: bool) -> None:
    from eodeploy.cli.serve_cmd import is_loopback

    assert is_loopback(host) is loopback


def test_info_masks_database_and_redis_passwords() -> None:
    env = {
        "EODEPLOY_DATABASE_URL": "postgresql+psycopg://user:hunter2@db.example:5432/eo",
        "EODEPLOY_REDIS_URL": "redis://:s3cretpw@cache.example:6379/0",
        "EODEPLOY_SMTP_PASSWORD": "mailpw",
    }
    r = CliRunner().invoke(app, ["info"], env=env, catch_exceptions=False)
    assert r.exit_code == 0
    out = r.output.replace("\n", "")
    assert "hunter2" not in out and "s3cretpw" not in out and "mailpw" not in out
    assert "postgresql+psycopg://user:***@db.example:5432/eo" in out
    assert "redis://:***@cache.example:6379/0" in out


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://user:pw@host/db", "postgresql+psycopg://user:***@host/db"),
        ("redis://u:p@ss@h:1/0", "redis://u:***@h:1/0"),
        ("sqlite:///eodeploy.db", "sqlite:///eodeploy.db"),
        ("postgresql://user@host/db", "postgresql://user@host/db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    from eodeploy._secrets import mask_url

    assert mask_url(url) == masked
