"""How long the event loop stalls while one large request is decoded.

Sends a large TF Serving JSON body (and the same patches as an OIP binary body, for comparison) to
a real ``eodeploy serve`` and meanwhile polls ``/v2/health/live`` every 10 ms: the longest
liveness wait is how long every other request (health probes included) was held up. Decoding runs
in a worker thread; what remains is orjson's single parse call, which holds the GIL.

    python benchmarks/loop_stall.py [--patches 96] [--repo models] [--model eurosat-cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def longest_wait(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[float, float, int]:
    done = threading.Event()
    result: list[tuple[int, float]] = []

    def send() -> None:
        t = time.perf_counter()
        r = requests.post(url + path, data=body, headers=headers, timeout=120)
        result.append((r.status_code, time.perf_counter() - t))
        done.set()

    worker = threading.Thread(target=send)
    worker.start()
    waits = [0.0]
    with requests.Session() as s:
        while not done.is_set():
            t = time.perf_counter()
            s.get(url + "/v2/health/live", timeout=120)
            waits.append(time.perf_counter() - t)
            time.sleep(0.01)
    worker.join()
    status, total = result[0]
    return max(waits), total, status


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=96)
    ap.add_argument("--repo", default=str(ROOT / "models"))
    ap.add_argument("--model", default="eurosat-cnn")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    env = {
        **os.environ,
        "EODEPLOY_MODEL_REPO": args.repo,
        "EODEPLOY_PORT": str(port),
        "EODEPLOY_GRPC_PORT": "0",
        "EODEPLOY_CACHE_MIB": "0",
        "EODEPLOY_POLL_INTERVAL_S": "0",
        "EODEPLOY_MONITOR_API": "false",
    }
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from eodeploy.cli.main import main; main()", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if requests.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    log.seek(0)
                    sys.exit("server did not become ready:\n" + log.read().decode()[-3000:])
                time.sleep(0.2)
            meta = requests.get(f"{url}/v2/models/{args.model}").json()
            shape = [args.patches, *meta["inputs"][0]["shape"][1:]]
            x = np.full(shape, 1000, np.uint16)
            as_json = json.dumps({"instances": x.tolist()}).encode()
            header = json.dumps(
                {
                    "inputs": [
                        {
                            "name": meta["inputs"][0]["name"],
                            "shape": shape,
                            "datatype": "UINT16",
                            "parameters": {"binary_data_size": x.nbytes},
                        }
                    ]
                }
            ).encode()
            cases = {
                f"TF Serving JSON ({len(as_json) / 2**20:.1f} MiB)": (
                    f"/v1/models/{args.model}:predict",
                    as_json,
                    {},
                ),
                f"OIP binary ({(len(header) + x.nbytes) / 2**20:.1f} MiB)": (
                    f"/v2/models/{args.model}/infer",
                    header + x.tobytes(),
                    {"Inference-Header-Content-Length": str(len(header))},
                ),
            }
            print(f"{'body':32} {'request s':>10} {'longest liveness wait s':>24}")
            for name, (path, body, headers) in cases.items():
                for _ in range(args.runs):
                    wait, total, status = longest_wait(url, path, body, headers)
                    assert status == 200, status
                    print(f"{name:32} {total:10.2f} {wait:24.3f}")
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    main()
