"""The server image, built and run without a Docker daemon (root, Debian's podman/buildah/runc):
size and its largest parts, container start to ready (read-only root, tmpfs /tmp, uid 10001),
HEALTHCHECK, a real inference, RSS, and a graceful stop. Prints a table, writes
benchmarks/results/image.json. Builds first with deploy/image/build.sh unless --no-build.

    python benchmarks/image.py [--no-build] [--starts 3]
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


def start(port: int, name: str) -> tuple[float, str]:
    """Seconds from `podman run -d` to /v2/health/ready answering 200."""
    sh("podman", "rm", "-f", name, check=False)
    t0 = time.monotonic()
    sh(*RUN, "-d", "--name", name, "-e", f"EODEPLOY_PORT={port}", "-e", "EODEPLOY_GRPC_PORT=0",
       "-e", "EODEPLOY_INSECURE=1", IMAGE)  # fmt: skip
    while time.monotonic() - t0 < 60:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return time.monotonic() - t0, name
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError(sh("podman", "logs", name, check=False))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--port", type=int, default=18480)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(
            [str(ROOT / "deploy" / "image" / "build.sh")],
            check=True,
            env={"PYTHON": sys.executable, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    size_mb = json.loads(sh("podman", "image", "inspect", IMAGE))[0]["Size"] / 1e6
    parts = sh(*RUN[:-3], "--entrypoint", "/bin/sh", IMAGE, "-c",
               "du -sm /opt/venv/lib/python3.11/site-packages/* | sort -rn | head -8")  # fmt: skip
    starts = []
    for i in range(args.starts):
        dt, name = start(args.port, f"eodeploy-bench-{i}")
        starts.append(dt)
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
    res = {"date": time.strftime("%Y-%m-%d"), "image_mb": size_mb, "largest": parts.splitlines(),
           "start_to_ready_s": starts, "uid": uid, "healthcheck_rc": health, "infer_status": infer,
           "rss_mb": rss_mb, "stop_s": stop_s, "exit_code": code}  # fmt: skip
    table = Table(title=f"{IMAGE} (podman + runc, --read-only, tmpfs /tmp)")
    for c in ("measure", "value", "target"):
        table.add_column(c)
    table.add_row("image size", f"{size_mb:.0f} MB", "<= 500 MB")
    table.add_row("start -> ready", " / ".join(f"{s:.2f} s" for s in starts), "<= 3 s")
    table.add_row("uid", uid, "non-root")
    table.add_row("HEALTHCHECK (eodeploy health)", "healthy" if health == 0 else f"rc {health}", "healthy")
    table.add_row("inference", str(infer), "200")
    table.add_row("RSS after one request", f"{rss_mb:.0f} MB", "")
    table.add_row("podman stop -t 30", f"{stop_s:.2f} s, exit {code}", "exit 0")
    console.print(table)
    console.print("largest parts (MB):\n" + parts)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "image.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
