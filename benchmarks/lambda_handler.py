"""Cold start and warm latency of the AWS Lambda handler (eodeploy.serve.aws_lambda), in-process.

Each run is a fresh interpreter, as a new Lambda container is: it imports the handler module
(Python packages), looks ``handler`` up as Lambda's runtime does at init (models loaded and warmed),
then invokes it with API Gateway events: the first invocation, then warm ones of each kind.
What this cannot include: Lambda pulling the image and starting the sandbox, and the vCPU share
the memory setting buys (here: this machine's cores).

    python benchmarks/lambda_handler.py [--runs 5] [--warm 50] [--site DIR]

``--site DIR`` runs against what the Lambda image would contain: packages installed with
``pip install --target DIR "eodeploy[lambda]"``, with ``python -S`` so nothing else is importable;
its size is reported too. Prints a table, writes benchmarks/results/lambda.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console()

CHILD = r"""
import base64, json, sys, time
t0 = time.perf_counter()
import eodeploy.serve.aws_lambda as mod
t1 = time.perf_counter()
handler = mod.handler                      # Lambda's runtime does this during init
t2 = time.perf_counter()
import numpy as np

def v2(method, path, body=None, headers=None, b64=False):
    if body is not None:
        body = base64.b64encode(body).decode() if b64 else body.decode()
    return {"version": "2.0", "routeKey": "$default", "rawPath": path, "rawQueryString": "",
            "headers": {"content-type": "application/json", **(headers or {})},
            "requestContext": {"requestId": "bench", "http": {"method": method, "path": path,
                               "sourceIp": "203.0.113.7"}},
            "body": body, "isBase64Encoded": b64}

def v1(method, path, body=None):
    h = {"Content-Type": "application/json"}
    return {"resource": "/{proxy+}", "path": path, "httpMethod": method, "headers": h,
            "multiValueHeaders": {k: [v] for k, v in h.items()},
            "requestContext": {"requestId": "bench", "identity": {"sourceIp": "203.0.113.7"}},
            "body": body.decode() if body is not None else None, "isBase64Encoded": False}

rng = np.random.default_rng(0)
rgb = rng.integers(0, 255, (1, 3, 64, 64)).astype(np.float32)
ms = rng.integers(0, 4000, (1, 13, 64, 64)).astype(np.float32)
oip_json = json.dumps({"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32",
                                   "data": rgb.ravel().tolist()}]}).encode()
header = json.dumps({"inputs": [{"name": "input", "shape": [1, 13, 64, 64], "datatype": "FP32",
                                 "parameters": {"binary_data_size": ms.nbytes}}]}).encode()
tf = json.dumps({"instances": rgb.transpose(0, 2, 3, 1).tolist()}).encode()
cases = {
    "OIP JSON, 1 RGB patch (HTTP API v2)": v2("POST", "/v2/models/eurosat-rgb/infer", oip_json),
    "OIP binary base64, 1 13-band patch (v2)": v2(
        "POST", "/v2/models/eurosat-cnn/infer", header + ms.tobytes(),
        {"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))},
        b64=True),
    "TF Serving :predict, 1 RGB patch (REST v1)": v1("POST", "/v1/models/eurosat-rgb:predict", tf),
    "GET /v2/health/ready (v2)": v2("GET", "/v2/health/ready"),
}
t = time.perf_counter()
first = handler(cases["OIP JSON, 1 RGB patch (HTTP API v2)"], None)
t3 = time.perf_counter()
assert first["statusCode"] == 200, first
warm = {}
for name, event in cases.items():
    times = []
    for _ in range(WARM):
        s = time.perf_counter()
        r = handler(event, None)
        times.append(time.perf_counter() - s)
        assert r["statusCode"] == 200, (name, r["body"][:300])
    warm[name] = times
import resource
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
print(json.dumps({"import_s": t1 - t0, "init_s": t2 - t1, "first_invoke_s": t3 - t, "peak_rss_mib": peak_mib,
                  "warm": warm}))
"""


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def du_mib(path: Path, skip_pycache: bool) -> float:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        if skip_pycache:
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        total += sum((Path(dirpath) / f).lstat().st_size for f in filenames)
    return total / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5, help="cold starts, each in a fresh interpreter")
    ap.add_argument("--warm", type=int, default=50, help="warm invocations of each kind per run")
    ap.add_argument("--repo", type=Path, default=ROOT / "models")
    ap.add_argument("--site", type=Path, help="a pip --target folder: what the image would contain")
    ap.add_argument(
        "--threads", type=int, default=0, help="EODEPLOY_INTRA_OP_THREADS (0: ONNX Runtime decides)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    env = {
        **os.environ,
        "EODEPLOY_MODEL_REPO": str(args.repo.resolve()),
        "EODEPLOY_INTRA_OP_THREADS": str(args.threads),
        "EODEPLOY_LOG_JSON": "true",
        "PYTHONPATH": str(args.site.resolve() if args.site else ROOT / "src"),
    }
    cmd = [sys.executable, *(["-S"] if args.site else []), "-c", CHILD.replace("WARM", str(args.warm))]
    runs: list[dict[str, Any]] = []
    for i in range(args.runs):
        t = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd="/")
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"run {i} failed:\n{proc.stderr[-3000:]}")
        run = json.loads(proc.stdout.splitlines()[-1])
        run["process_s"] = wall
        runs.append(run)
        console.print(
            f"run {i + 1}: import {run['import_s']:.2f} s, init {run['init_s']:.2f} s, "
            f"first invocation {run['first_invoke_s'] * 1000:.0f} ms, peak RSS {run['peak_rss_mib']:.0f} MiB"
        )

    cold = {
        key: {"first": runs[0][key], "median": statistics.median(r[key] for r in runs),
              "max": max(r[key] for r in runs)}
        for key in ("import_s", "init_s", "first_invoke_s")
    }  # fmt: skip
    cold["import_plus_init_s"] = {
        "first": runs[0]["import_s"] + runs[0]["init_s"],
        "median": statistics.median(r["import_s"] + r["init_s"] for r in runs),
        "max": max(r["import_s"] + r["init_s"] for r in runs),
    }
    table = Table(title=f"AWS Lambda handler, cold start ({args.runs} fresh interpreters)")
    for col in ("phase", "first s", "median s", "max s"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    labels = {
        "import_s": "import eodeploy.serve.aws_lambda",
        "init_s": "handler lookup: load + warm models",
        "import_plus_init_s": "init phase total (target ≤ 3 s)",
        "first_invoke_s": "first invocation",
    }
    for key, label in labels.items():
        c = cold[key]
        table.add_row(label, f"{c['first']:.3f}", f"{c['median']:.3f}", f"{c['max']:.3f}")
    console.print(table)

    warm: dict[str, dict[str, float]] = {}
    wt = Table(title=f"Warm invocations ({args.warm} per kind and run, ms)")
    for col in ("request", "p50", "p95", "max"):
        wt.add_column(col, justify="left" if col == "request" else "right")
    for name in runs[0]["warm"]:
        xs = [x for r in runs for x in r["warm"][name]]
        warm[name] = {"p50_ms": pct(xs, 0.5) * 1000, "p95_ms": pct(xs, 0.95) * 1000, "max_ms": max(xs) * 1000}
        w = warm[name]
        wt.add_row(name, f"{w['p50_ms']:.1f}", f"{w['p95_ms']:.1f}", f"{w['max_ms']:.1f}")
    console.print(wt)

    doc: dict[str, Any] = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "intra_op_threads": args.threads,
        "site": str(args.site) if args.site else None,
        "cold": cold,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "warm": warm,
        "runs": [{k: v for k, v in r.items() if k != "warm"} for r in runs],
    }
    if args.site:
        doc["site_mib"] = {
            "with_pycache": round(du_mib(args.site, False), 1),
            "without_pycache": round(du_mib(args.site, True), 1),
            "models": round(du_mib(args.repo, False), 1),
        }
        console.print(f"image contents ({args.site}): {doc['site_mib']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lambda.json").write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {args.out / 'lambda.json'}")


if __name__ == "__main__":
    main()
