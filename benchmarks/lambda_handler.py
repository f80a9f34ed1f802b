"""The Lambda handler's cold start and warm invocations, and what the function's package weighs.

Cold: a fresh interpreter imports ``eodeploy.serve.lambda_handler`` (Lambda's init phase: Python,
the app and every bundled model loaded and warmed). Warm: API Gateway v2 events with one patch
through the handler. Size: ``pip install --target`` of ``.[lambda]`` (what deploy/lambda/Dockerfile
adds to AWS's base image) plus the bundled models. Prints a table, writes
benchmarks/results/lambda.json.

    python benchmarks/lambda_handler.py [--repeats 3] [--no-size]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
console = Console()

PROBE = """
import json, sys, time
t0 = time.perf_counter()
from eodeploy.serve.lambda_handler import handler
cold = time.perf_counter() - t0
sys.path.insert(0, {tests!r})
import numpy as np
from test_lambda import v2_event, Context
x = np.random.default_rng(0).integers(200, 4000, (1, 13, 64, 64)).astype(np.uint16)
body = json.dumps({{"inputs": [{{"name": "input", "shape": [1, 13, 64, 64], "datatype": "UINT16",
                   "data": x.ravel().tolist()}}]}}).encode()
event = v2_event("POST", "/v2/models/eurosat-cnn/infer", body, {{"Content-Type": "application/json"}})
times = []
for _ in range(50):
    t = time.perf_counter()
    r = handler(event, Context())
    assert r["statusCode"] == 200, r
    times.append((time.perf_counter() - t) * 1000)
print(json.dumps({{"cold_s": cold, "first_ms": times[0], "warm_ms": sorted(times[1:])[len(times) // 2]}}))
"""


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-size", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    env = {**os.environ, "EODEPLOY_MODEL_REPO": str(ROOT / "models"), "EODEPLOY_LOG_JSON": "false"}
    runs = []
    for _ in range(args.repeats):
        r = subprocess.run([sys.executable, "-c", PROBE.format(tests=str(ROOT / "tests"))],
                           capture_output=True, text=True, env=env, check=True)  # fmt: skip
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    result: dict = {"date": time.strftime("%Y-%m-%d"), "runs": runs}
    if not args.no_size:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", tmp, f"{ROOT}[lambda]"],
                           check=True, capture_output=True)  # fmt: skip
            sizes = {p.name: du_mb(p) for p in Path(tmp).iterdir() if p.is_dir()}
            result["package_mb"] = sum(sizes.values())
            result["largest_mb"] = dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:10])
        result["models_mb"] = du_mb(ROOT / "models")
    table = Table(title="AWS Lambda handler (this machine, 2 vCPU; in-process, no Lambda runtime)")
    for c in ("run", "cold start (import + models) s", "first call ms", "warm call p50 ms"):
        table.add_column(c, justify="right")
    for i, r in enumerate(runs):
        table.add_row(str(i + 1), f"{r['cold_s']:.2f}", f"{r['first_ms']:.1f}", f"{r['warm_ms']:.1f}")
    console.print(table)
    if "package_mb" in result:
        console.print(f"function package: {result['package_mb']:.0f} MB of Python packages + "
                      f"{result['models_mb']:.0f} MB of models; largest: "
                      + ", ".join(f"{k} {v:.0f}" for k, v in list(result["largest_mb"].items())[:6]))  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lambda.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
