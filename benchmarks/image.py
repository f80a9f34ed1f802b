"""The server image, built and run without a Docker daemon (root, Debian's podman/buildah/runc):
size and its largest parts, container start to ready (read-only root, tmpfs /tmp, uid 10001),
HEALTHCHECK, a real inference, RSS, and a graceful stop. Prints a table, writes
benchmarks/results/image.json. Builds first with deploy/image/build.sh unless --no-build.

    python benchmarks/image.py [--no-build] [--starts 3] [--port 18480]

podman here needs ``--ulimit nofile=4096:4096 --ulimit nproc=4096:4096`` (runc may not raise the
limits past this sandbox's); the runs below pass them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
IMAGE = "localhost/eodeploy:0.1.0"
RUN = ["podman", "run", "--runtime", "runc", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
       "--network", "host", "--read-only", "--tmpfs", "/tmp"]  # fmt: skip
console = Console()


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=check).stdout.strip()


def run_ready(name: str, port: int, *options: str, grpc_port: int = 0, read_only: bool = True) -> float:
    """Start a container (replacing one of that name) and return the seconds from `podman run -d`
    to /v2/health/ready answering 200; its log in the error when it never does."""
    run = RUN if read_only else RUN[: RUN.index("--read-only")]
    sh("podman", "rm", "-f", name, check=False)
    t0 = time.monotonic()
    sh(*run, "-d", "--name", name, "-e", f"EODEPLOY_PORT={port}", "-e", f"EODEPLOY_GRPC_PORT={grpc_port}",
       "-e", "EODEPLOY_INSECURE=1", *options, IMAGE)  # fmt: skip
    while time.monotonic() - t0 < 60:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return time.monotonic() - t0
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError(sh("podman", "logs", name, check=False))


def browser_model(port: int) -> tuple[int, float]:
    """The dashboard's browser model of eurosat-cnn v3 from the image (prebuilt in its build stage:
    the image has no onnx), run here against the Python path on the same raw patches."""
    import onnxruntime as ort

    from eodeploy.package import ModelRepository
    from eodeploy.package.fused import PROBABILITIES, RAW_INPUT, check_inputs
    from eodeploy.runtime import Predictor

    r = requests.get(f"http://127.0.0.1:{port}/dashboard/models/eurosat-cnn/3/model.onnx", timeout=60)
    if r.status_code != 200:
        return r.status_code, float("nan")
    pkg = ModelRepository(ROOT / "models").get("eurosat-cnn", 3)
    x = check_inputs(pkg, 8)
    got = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"]).run(
        [PROBABILITIES], {RAW_INPUT: x}
    )[0]
    return 200, float(np.abs(got - Predictor(pkg).predict_proba(x)).max())


def stale_bytecode(port: int) -> int:
    """.pyc files a server start writes when it may (a writable root, bytecode writing on): each is
    a module the image's bytecode does not cover, compiled again at every start on a read-only root."""
    name = "eodeploy-bench-pyc"
    try:  # gRPC on, as by default: its modules are part of a start
        run_ready(
            name, port, "-e", "PYTHONDONTWRITEBYTECODE=", "--user", "0", grpc_port=port + 1, read_only=False
        )
        changes = sh("podman", "diff", name).splitlines()
    finally:
        sh("podman", "rm", "-f", name, check=False)
    return sum(1 for line in changes if line.endswith(".pyc") and line[:1] in "AC")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-build", action="store_true", help="measure the image already built")
    ap.add_argument("--starts", type=int, default=3, help="container starts timed (default 3)")
    ap.add_argument("--port", type=int, default=18480, help="host port of the containers (default 18480)")
    ap.add_argument("--out", type=Path, default=HERE / "results", help="folder of image.json")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(
            [str(ROOT / "deploy" / "image" / "build.sh")],
            check=True,
            env={"PYTHON": sys.executable, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    size_mb = json.loads(sh("podman", "image", "inspect", IMAGE))[0]["Size"] / 1e6
    parts = sh(*RUN[:-3], "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c",
               "du -sm /opt/venv/lib/python3.11/site-packages/* | sort -rn | head -8")  # fmt: skip
    starts = []
    for i in range(args.starts):
        name = f"eodeploy-bench-{i}"
        starts.append(run_ready(name, args.port))
        if i < args.starts - 1:
            sh("podman", "rm", "-f", name)
    uid = sh("podman", "exec", name, "id", "-u")
    health = subprocess.run(["podman", "healthcheck", "run", name], capture_output=True, text=True).returncode
    x = np.random.default_rng(0).integers(200, 4000, (1, 13, 64, 64))
    body = {
        "inputs": [
            {"name": "input", "shape": list(x.shape), "datatype": "UINT16", "data": x.ravel().tolist()}
        ]
    }
    infer = requests.post(
        f"http://127.0.0.1:{args.port}/v2/models/eurosat-cnn/infer", json=body, timeout=30
    ).status_code
    browser, browser_dp = browser_model(args.port)
    docs = requests.get(f"http://127.0.0.1:{args.port}/static/swagger-ui/swagger-ui-bundle.js", timeout=30)
    pid = sh("podman", "inspect", "-f", "{{.State.Pid}}", name)
    rss_mb = (
        int(
            next(
                line
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("VmRSS")
            ).split()[1]
        )
        / 1024
    )
    t0 = time.monotonic()
    sh("podman", "stop", "-t", "30", name)
    stop_s = time.monotonic() - t0
    code = int(sh("podman", "inspect", "-f", "{{.State.ExitCode}}", name))
    sh("podman", "rm", "-f", name)
    stale = stale_bytecode(args.port)
    res = {"date": time.strftime("%Y-%m-%d"), "image_mb": size_mb, "largest": parts.splitlines(),
           "start_to_ready_s": starts, "uid": uid, "healthcheck_rc": health, "infer_status": infer,
           "browser_model_status": browser, "browser_model_max_dp": browser_dp,
           "swagger_ui_status": docs.status_code, "pyc_compiled_at_start": stale,
           "rss_mb": rss_mb, "stop_s": stop_s, "exit_code": code}  # fmt: skip
    table = Table(title=f"{IMAGE} (podman + runc, --read-only, tmpfs /tmp)")
    for c in ("measure", "value", "target"):
        table.add_column(c)
    table.add_row("image size", f"{size_mb:.0f} MB", "<= 500 MB")
    table.add_row("start -> ready", " / ".join(f"{s:.2f} s" for s in starts), "<= 3 s")
    table.add_row("uid", uid, "non-root")
    table.add_row("HEALTHCHECK (eodeploy health)", "healthy" if health == 0 else f"rc {health}", "healthy")
    table.add_row("inference", str(infer), "200")
    table.add_row(
        "dashboard browser model (prebuilt, no onnx)", f"{browser}, max |dp| {browser_dp:.1e}", "200"
    )
    table.add_row("Swagger UI files (/docs)", str(docs.status_code), "200")
    table.add_row(".pyc compiled at start (stale or missing)", str(stale), "0")
    table.add_row("RSS after one request", f"{rss_mb:.0f} MB", "")
    table.add_row("podman stop -t 30", f"{stop_s:.2f} s, exit {code}", "exit 0")
    console.print(table)
    console.print("largest parts (MB):\n" + parts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
