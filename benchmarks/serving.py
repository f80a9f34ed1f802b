"""Serving throughput and latency: eodeploy vs. the guide's Flask server, LitServe and KServe.

Every server serves the same package (same ONNX model, same preprocessing, raw uint16 patches in);
the load generator (benchmarks/loadgen.py) runs in its own process; the in-process ONNX Runtime
limit is measured in the same run. Prints a table, writes benchmarks/results/serving.{json,md}.

    python benchmarks/serving.py [--duration 8] [--only eodeploy,flask] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
MODEL = "eurosat-cnn"
console = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sample_patch(data: Path) -> np.ndarray:
    """A real patch as the data holds it: uint16 DN (EuroSAT-MS GeoTIFF) or uint8 (EuroSAT-RGB JPEG)."""
    files = sorted([*data.glob("*/*.tif"), *data.glob("*/*.jpg")]) if data.is_dir() else []
    if files:
        from eodeploy.data.images import read_image

        x = read_image(files[0])[None]
        return x.astype(np.uint8 if x.dtype == np.uint8 else np.uint16)
    return np.random.default_rng(0).integers(200, 4000, (1, 13, 64, 64)).astype(np.uint16)


OIP_TYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16"}


def in_process(package: Path, x: np.ndarray, seconds: float = 3.0) -> dict[str, float]:
    from eodeploy.runtime.predictor import Predictor

    p = Predictor(package)
    out = {}
    for bs in (1, 8, 32, 128):
        batch = np.repeat(x, bs, axis=0)
        p.predict_proba(batch)
        n, t0, c0 = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - t0 < seconds:
            p.predict_proba(batch, batch_size=bs)
            n += bs
        out[str(bs)] = n / (time.perf_counter() - t0)
        IN_PROCESS_CPU_MS[str(bs)] = (time.process_time() - c0) * 1000 / n
    return out


#: CPU per image in process (ONNX Runtime's threads included), by batch size: the model's own cost.
IN_PROCESS_CPU_MS: dict[str, float] = {}


def bodies(x: np.ndarray, tmp: Path) -> dict[str, tuple[str, Path, dict[str, str]]]:
    """name -> (path, body file, headers)."""
    dtype = OIP_TYPES[x.dtype]
    header = json.dumps(
        {
            "inputs": [{"name": "input", "shape": list(x.shape), "datatype": dtype,
                        "parameters": {"binary_data_size": x.nbytes}}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()  # fmt: skip
    oip_json = json.dumps(
        {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": dtype, "data": x.ravel().tolist()}]}
    ).encode()
    tf_json = json.dumps({"instances": x.tolist()}).encode()
    files = {"oip_binary": header + x.tobytes(), "oip_json": oip_json, "tf_json": tf_json}
    for k, v in files.items():
        (tmp / k).write_bytes(v)
    np.save(tmp / "x.npy", x)
    (tmp / "grpc.json").write_text(
        json.dumps({"npy": str(tmp / "x.npy"), "model": MODEL, "input": "input", "datatype": dtype})
    )
    v2 = f"/v2/models/{MODEL}/infer"
    return {
        "oip_binary": (v2, tmp / "oip_binary", {"Inference-Header-Content-Length": str(len(header)),
                                               "Content-Type": "application/octet-stream"}),
        "oip_json": (v2, tmp / "oip_json", {"Content-Type": "application/json"}),
        "tf_json": (f"/v1/models/{MODEL}:predict", tmp / "tf_json", {"Content-Type": "application/json"}),
        "litserve_json": ("/predict", tmp / "tf_json", {"Content-Type": "application/json"}),
        "grpc": ("", tmp / "grpc.json", {}),
    }  # fmt: skip


class Server:
    current: Server | None = None

    def __init__(
        self,
        name: str,
        cmd: list[str],
        ready_url: str,
        env: dict[str, str] | None = None,
        any_answer: bool = False,
    ) -> None:
        self.name, self.cmd, self.ready_url, self.env, self.any_answer = (
            name,
            cmd,
            ready_url,
            env or {},
            any_answer,
        )

    def __enter__(self) -> Server:
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{self.name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=ROOT,
            start_new_session=True,  # LitServe and KServe fork workers: stop the whole group
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log.name}")
            try:
                code = requests.get(self.ready_url, timeout=1).status_code
                if code == 200 or (self.any_answer and code < 500):
                    Server.current = self
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready in 120 s; see {self.log.name}")

    def __exit__(self, *exc: object) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        time.sleep(1)


def session_cpu_s(sid: int) -> float:
    """CPU seconds (user + system) of every live process in session ``sid``: a server started
    with ``start_new_session`` and all its workers."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after "(comm)": state ppid pgrp session ... utime stime
            total += int(fields[11]) + int(fields[12])
    return total / tick


def load(
    target: str,
    payload: tuple[str, Path, dict[str, str]],
    connections: int,
    duration: float,
    grpc: bool = False,
) -> dict:
    path, body, headers = payload
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--target", target, "--path", path, "--body", str(body),
           "--headers", json.dumps(headers), "--connections", str(connections), "--duration", str(duration)]  # fmt: skip
    if grpc:
        cmd.append("--grpc")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def check_answer(name: str, url: str, payload: tuple[str, Path, dict[str, str]]) -> None:
    """Each server must answer the benchmark request with 200 before it is timed."""
    path, body, headers = payload
    r = requests.post(url + path, data=body.read_bytes(), headers=headers, timeout=30)
    if r.status_code != 200:
        raise RuntimeError(f"{name}: {r.status_code} {r.text[:300]}")


def main() -> None:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT / "models")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--only", default="eodeploy,flask,litserve,kserve")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--model", default=MODEL, help="package name in --repo (its latest version is served)")
    ap.add_argument("--workers", type=lambda v: [int(w) for w in v.split(",")], default=[1, 2],
                    help="eodeploy serve --workers values to measure, comma-separated")  # fmt: skip
    ap.add_argument("--binary-only", action="store_true", help="eodeploy: binary REST and gRPC rows only")
    args = ap.parse_args()
    MODEL = args.model
    only = set(args.only.split(","))
    from eodeploy.package import ModelRepository

    package = ModelRepository(args.repo).get(MODEL).path  # the latest version, which the server serves
    x = sample_patch(args.data)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    payloads = bodies(x, tmp)
    py = sys.executable
    rows: list[dict] = []

    console.print("[bold]in-process ONNX Runtime (Predictor incl. preprocessing)[/]")
    limit = in_process(package, x)
    best = max(limit.values())
    console.print({k: round(v, 1) for k, v in limit.items()})

    def run(
        server: str, protocol: str, target: str, payload_key: str, conns: list[int], grpc: bool = False
    ) -> None:
        for c in conns:
            import resource

            sid = Server.current.proc.pid if Server.current else 0
            cpu0, kids0 = session_cpu_s(sid), resource.getrusage(resource.RUSAGE_CHILDREN)
            res = load(target, payloads[payload_key], c, args.duration, grpc=grpc)
            kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU covers the load generator's 2-s warm-up too: count its requests at the same rate.
            n = max(1.0, res["throughput"] * (args.duration + 2))
            # Where the 2 cores went: the server (all its processes) and the load generator, per image.
            res["server_cpu_ms_per_img"] = (session_cpu_s(sid) - cpu0) * 1000 / n
            res["loadgen_cpu_ms_per_img"] = (
                (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) * 1000 / n
            )
            res.update(server=server, protocol=protocol, share_of_limit=res["throughput"] / best)
            rows.append(res)
            console.print(f"  {server:9s} {protocol:22s} c={c:<3d} {res['throughput']:7.1f} img/s  "
                          f"p50 {res['p50_ms'] or 0:7.1f} ms  p99 {res['p99_ms'] or 0:7.1f} ms  {res['status']}")  # fmt: skip

    if "eodeploy" in only:
        for workers in args.workers:
            name = "eodeploy" if workers == 1 else f"eodeploy x{workers}"
            port, gport = free_port(), free_port()
            env = {"EODEPLOY_CACHE_MIB": "0", "EODEPLOY_LOG_JSON": "false", "EODEPLOY_POLL_INTERVAL_S": "0"}
            cmd = [py, "-c", "from eodeploy.cli.main import main; main()", "serve", str(args.repo),
                   "--port", str(port), "--grpc-port", str(gport), "--workers", str(workers)]  # fmt: skip
            with Server(name, cmd, f"http://127.0.0.1:{port}/v2/health/ready", env):
                url = f"http://127.0.0.1:{port}"
                for k in ("oip_binary", "oip_json", "tf_json"):
                    check_answer(name, url, payloads[k])
                run(name, "OIP REST binary", f"127.0.0.1:{port}", "oip_binary", [1, 32])
                run(name, "OIP gRPC raw", f"127.0.0.1:{gport}", "grpc", [1, 32], grpc=True)
                if not args.binary_only:
                    run(name, "OIP REST JSON", f"127.0.0.1:{port}", "oip_json", [1, 32])
                    run(name, "TF Serving JSON", f"127.0.0.1:{port}", "tf_json", [32])
    if "flask" in only:
        port = free_port()
        cmd = [py, str(HERE / "peers" / "flask_server.py"), str(package), str(port)]
        with Server("flask", cmd, f"http://127.0.0.1:{port}/", any_answer=True):
            check_answer("flask", f"http://127.0.0.1:{port}", payloads["tf_json"])
            run("flask", "JSON instances (guide)", f"127.0.0.1:{port}", "tf_json", [1, 32])
    if "litserve" in only:
        port = free_port()
        cmd = [py, str(HERE / "peers" / "litserve_server.py"), str(package), str(port)]
        with Server("litserve", cmd, f"http://127.0.0.1:{port}/health"):
            check_answer("litserve", f"http://127.0.0.1:{port}", payloads["litserve_json"])
            run("litserve", "JSON, batch 32", f"127.0.0.1:{port}", "litserve_json", [32])
    if "kserve" in only:
        port, gport = free_port(), free_port()
        cmd = [py, str(HERE / "peers" / "kserve_server.py"), str(package), str(port), str(gport), MODEL]
        with Server("kserve", cmd, f"http://127.0.0.1:{port}/v2/health/ready"):
            check_answer("kserve", f"http://127.0.0.1:{port}", payloads["oip_json"])
            run("kserve", "OIP REST JSON", f"127.0.0.1:{port}", "oip_json", [32])
            check_answer("kserve", f"http://127.0.0.1:{port}", payloads["oip_binary"])
            run("kserve", "OIP REST binary", f"127.0.0.1:{port}", "oip_binary", [32])

    report(rows, limit, args.out)


def machine() -> dict[str, str]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "platform": platform.platform()}  # fmt: skip


def report(rows: list[dict], limit: dict[str, float], out: Path) -> None:
    best = max(limit.values())
    flask32 = next((r["throughput"] for r in rows if r["server"] == "flask" and r["connections"] == 32), None)
    table = Table(title=f"serving {MODEL}: in-process limit {best:.0f} img/s (best of batch 1/8/32/128)")
    cols = [
        "server",
        "protocol",
        "clients",
        "img/s",
        "share of limit",
        "x Flask",
        "p50 ms",
        "p99 ms",
        "server CPU ms/img",
        "loadgen CPU ms/img",
        "non-200",
    ]
    for c in cols:
        table.add_column(c, justify="left" if c in ("server", "protocol") else "right")
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        bad = sum(v for k, v in r["status"].items() if k != "200") + r["errors"]
        cells = [r["server"], r["protocol"], str(r["connections"]), f"{r['throughput']:.0f}",
                 f"{r['share_of_limit']:.0%}", f"{r['throughput'] / flask32:.1f}x" if flask32 else "-",
                 f"{r['p50_ms']:.1f}" if r["p50_ms"] else "-", f"{r['p99_ms']:.1f}" if r["p99_ms"] else "-",
                 f"{r['server_cpu_ms_per_img']:.2f}", f"{r['loadgen_cpu_ms_per_img']:.2f}", str(bad)]  # fmt: skip
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    result = {"model": MODEL, "in_process_img_s": limit, "in_process_cpu_ms_per_img": IN_PROCESS_CPU_MS,
              "machine": machine(), "rows": rows,
              "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    (out / f"serving-{MODEL}.json").write_text(json.dumps(result, indent=2))
    (out / f"serving-{MODEL}.md").write_text(
        "In-process limit (Predictor incl. preprocessing): "
        + ", ".join(
            f"batch {k}: {v:.0f} img/s ({IN_PROCESS_CPU_MS.get(k, 0):.2f} CPU ms/img)"
            for k, v in limit.items()
        )
        + "\n\n"
        + "\n".join(md)
        + "\n"
    )
    console.print(f"wrote {out}/serving-{MODEL}.json and .md")


if __name__ == "__main__":
    main()
