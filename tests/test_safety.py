"""Safety: refusing an open server on a network address, masked secrets, immutable published versions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

from conftest import require
from eodeploy.cli.main import app
from eodeploy.package import ModelRepository
from servers import free_port, stop


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
        stop(proc)


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


# --- published versions are immutable (issue 12 item 16) -----------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_tflite_export_publishes_a_new_version_and_a_failed_one_deletes_nothing(
    repo: ModelRepository, raw_patches: np.ndarray, tmp_path: Path
) -> None:
    require("tensorflow")
    require("ai_edge_litert")
    from eodeploy.errors import DataError
    from eodeploy.package.tflite import export_tflite
    from eodeploy.runtime.predictor import Predictor

    v1 = repo.get("tiny", 1)
    before = _snapshot(v1.path)
    new = export_tflite(v1, None)
    assert _snapshot(v1.path) == before, "the TFLite export modified published version 1"
    assert new.version == 2 and new.properties["eodeploy:derived_from"] == {"name": "tiny", "version": 1}
    record = new.properties["eodeploy:tflite"]
    assert record["agreement_with_onnx"] >= 0.99
    new.verify()
    np.testing.assert_allclose(
        Predictor(new, backend="litert").predict_proba(raw_patches), Predictor(v1).predict_proba(raw_patches),
        atol=1e-4,
    )  # fmt: skip

    good = _snapshot(new.path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        export_tflite(new, empty)  # fails after converting: the previous good export must survive
    assert _snapshot(new.path) == good and (new.path / "model.tflite").is_file()
    assert repo.versions("tiny") == [1, 2] and not list(repo.root.rglob(".*"))


def _first_seen_item(item: Path, write: Callable[[], Any]) -> tuple[Any, bytes | None]:
    """Run ``write`` while a reader polls for ``item``: (write's result, the item.json first seen)."""
    import threading

    seen: list[bytes] = []
    stop = threading.Event()

    def watch() -> None:
        while True:
            try:
                seen.append(item.read_bytes())
                return
            except OSError:
                if stop.is_set():
                    return
                time.sleep(0.0005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = write()
    finally:
        stop.set()
        watcher.join()
    return result, (seen[0] if seen else None)


def test_cli_tflite_export_names_the_new_version(
    repo: ModelRepository, eurosat_dir: Path, tmp_path: Path
) -> None:
    require("tensorflow")
    require("ai_edge_litert")
    r = CliRunner().invoke(
        app,
        ["export", "tiny", "--format", "tflite", "--data", str(eurosat_dir), "--out", str(tmp_path / "edge"),
         "--repo", str(repo.root)],
        catch_exceptions=False,
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "tiny v2" in r.output and (tmp_path / "edge" / "tiny-2.tflite").is_file()
    assert repo.versions("tiny") == [1, 2] and not (repo.get("tiny", 1).path / "model.tflite").exists()


def test_optimize_never_rewrites_a_published_version(repo: ModelRepository, eurosat_dir: Path) -> None:
    """The new version's item.json, as first seen by a reader, must be its final one (metrics
    recorded before it is published, not after)."""
    from eodeploy.optimize import optimize_package

    v1 = repo.get("tiny", 1)
    before = _snapshot(v1.path)
    item = repo.root / "tiny" / "2" / "item.json"
    pkg, first = _first_seen_item(item, lambda: optimize_package(v1, "fp16", eurosat_dir))
    assert _snapshot(v1.path) == before
    assert "eodeploy:metrics" in pkg.properties
    assert first == item.read_bytes(), "version 2 was published, then rewritten"


@pytest.mark.slow
def test_training_never_rewrites_a_published_version(eurosat_dir: Path, tmp_path: Path) -> None:
    require("torch")
    from eodeploy.train.pipeline import train_package
    from eodeploy.train.trainer import TrainConfig

    repo = ModelRepository(tmp_path / "models")
    item = repo.root / "cnn" / "1" / "item.json"
    config = TrainConfig(epochs=1, patience=1, tta=False, threads=2)
    pkg, first = _first_seen_item(item, lambda: train_package(eurosat_dir, repo, "cnn", config))
    assert "eodeploy:metrics" in pkg.properties
    assert first == item.read_bytes(), "version 1 was published, then rewritten"


def test_one_atomic_writer() -> None:
    """Files in packages, exports and serving.json are written by eodeploy._files.atomic_write_bytes
    (fsync, then rename), not by ad-hoc temporary files."""
    src = Path(__file__).resolve().parents[1] / "src" / "eodeploy"
    files = [*(src / "package").glob("*.py"), *(src / "optimize").glob("*.py"), src / "serve" / "policy.py"]
    offenders = [
        f"{f.relative_to(src)}: {word}"
        for f in files
        for word in ("mkstemp", "os.replace", "NamedTemporaryFile")
        if word in f.read_text()
    ]
    assert not offenders
