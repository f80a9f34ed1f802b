"""Soak: a real ``eodeploy serve`` driven at half its capacity for minutes, watched for slow leaks.

1. start the server on 127.0.0.1 (response cache off, so every request runs the model);
2. measure its capacity briefly with the closed-loop load generator (benchmarks/loadgen.py);
3. drive it at 50 % of that rate with a paced, bounded load generator in its own process
   (``soak.py pace``: a fixed number of keep-alive connections, each sending on a schedule);
4. per window, sample the server's RSS (/proc/PID/status) and open file descriptors
   (/proc/PID/fd) and the window's latency percentiles.

Verdicts: 0 server errors (5xx or broken connections) and every answer 200; p99 drift between the
first and the last window <= 20 %; RSS growth <= 10 MB per 100k requests (least-squares slope
of RSS against requests served, the first window left out as warm-up; a fitted growth under
1 MB counts as allocator noise); descriptors flat. Then a
control that leaks on purpose (benchmarks/soak_server.py keeps 16 KiB of every request) must be
caught by the same detector. Prints a table and writes benchmarks/results/soak.json.

    python benchmarks/soak.py                 # 2 minutes (the CI form: make soak)
    python benchmarks/soak.py --minutes 30    # the long form
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"

#: Limits of the verdicts (issue 12).
MAX_P99_DRIFT = 0.20
MAX_RSS_MB_PER_100K = 10.0
MAX_FD_GROWTH = 2
#: RSS growth (fitted, over the steady windows) below this is allocator noise, not a leak: it keeps
#: a 20 s run's few thousand requests from turning a 0.5 MB step into "30 MB per 100k".
RSS_NOISE_MB = 1.0


# --- the server ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    repo: Path
    log: Path
    leak_bytes: int = 0
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        env = {
            **os.environ,
            "EODEPLOY_MODEL_REPO": str(self.repo),
            "EODEPLOY_HOST": "127.0.0.1",
            "EODEPLOY_PORT": str(self.port),
            "EODEPLOY_GRPC_PORT": "0",
            "EODEPLOY_CACHE_MIB": "0",  # every request runs the model, none is answered from memory
            "EODEPLOY_INTRA_OP_THREADS": "1",
            "EODEPLOY_ORT_SPINNING": "false",  # the load generator shares the cores
            "EODEPLOY_MONITOR_API": "false",
            "EODEPLOY_DATABASE_URL": f"sqlite:///{self.log.parent / 'soak.db'}",
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p),
        }
        if self.leak_bytes:
            env["SOAK_LEAK_BYTES"] = str(self.leak_bytes)
            cmd = [sys.executable, str(HERE / "soak_server.py")]
        else:
            cmd = [sys.executable, "-c", "from eodeploy.cli.main import main; main()", "serve"]
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        import requests

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            try:
                if (
                    requests.get(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=1).status_code
                    == 200
                ):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in 120 s; see {self.log}")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def sample(self) -> tuple[float, int]:
        """(RSS in MB, open file descriptors) of the server process, read from /proc."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return rss_kb / 1024, len(os.listdir(f"/proc/{self.proc.pid}/fd"))


# --- the request -------------------------------------------------------------------------------------
def oip_binary_request(repo: Path, model: str, folder: Path) -> tuple[str, Path, dict[str, str]]:
    """An OIP v2 binary request with one raw patch the model takes (path, body file, headers)."""
    from eodeploy.package import ModelRepository

    spec = ModelRepository(repo).get(model).spec
    x = np.random.default_rng(0).integers(200, 4000, (1, len(spec.bands), spec.height, spec.width))
    x = x.astype(np.uint16)
    header = json.dumps(
        {"inputs": [{"name": spec.input_name, "shape": list(x.shape), "datatype": "UINT16",
                     "parameters": {"binary_data_size": x.nbytes}}]}
    ).encode()  # fmt: skip
    body = folder / "request.bin"
    body.write_bytes(header + x.tobytes())
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return f"/v2/models/{model}/infer", body, headers


def capacity(
    port: int, request: tuple[str, Path, dict[str, str]], seconds: float, connections: int = 8
) -> float:
    """Requests per second the server sustains closed-loop (benchmarks/loadgen.py, own process)."""
    path, body, headers = request
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--target", f"127.0.0.1:{port}", "--path", path,
           "--body", str(body), "--headers", json.dumps(headers), "--connections", str(connections),
           "--duration", str(seconds), "--warmup", "1"]  # fmt: skip
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    if out["ok"] == 0 or out["errors"]:
        raise RuntimeError(f"the capacity run failed: {out}")
    return float(out["throughput"])


# --- the paced load generator (its own process) ----------------------------------------------------
async def _pace(args: argparse.Namespace) -> None:
    from loadgen import _read_response, build_http

    host, port = args.target.split(":")
    request = build_http(host, int(port), args.path, Path(args.body).read_bytes(), json.loads(args.headers))
    window: dict[str, Any] = {"lat": [], "status": {}, "conn_errors": 0, "late": 0}
    t0 = time.perf_counter()
    stop_at = t0 + args.seconds
    interval = args.connections / args.rate  # each connection's period

    async def worker(i: int) -> None:
        reader: Any = None
        writer: Any = None
        k = 0
        while True:
            due = t0 + (k * args.connections + i) / args.rate
            if due >= stop_at:
                break
            k += 1
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > interval:
                window["late"] += 1  # the server (or this box) fell behind the schedule
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                start = time.perf_counter()
                writer.write(request)
                await writer.drain()
                status, close = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError):
                window["conn_errors"] += 1
                if writer is not None:
                    writer.close()
                writer = None
                continue
            window["lat"].append(time.perf_counter() - start)
            window["status"][status] = window["status"].get(status, 0) + 1
            if close:
                writer.close()
                writer = None
        if writer is not None:
            still_open.append(writer)  # closed after the last window is sampled, not before

    async def report() -> None:
        nonlocal window
        n = 0
        while True:
            n += 1
            end = min(t0 + n * args.window, stop_at)
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            done, window = window, {"lat": [], "status": {}, "conn_errors": 0, "late": 0}
            lat = np.array(done["lat"]) * 1000
            line = {
                "t": round(time.perf_counter() - t0, 2),
                "requests": len(lat),
                "status": {str(k): v for k, v in done["status"].items()},
                "conn_errors": done["conn_errors"],
                "late": done["late"],
                "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
                "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
                "latencies_ms": [round(v, 3) for v in lat.tolist()],  # pooled later for the drift
            }
            print(json.dumps(line), flush=True)
            if end >= stop_at:
                return

    still_open: list[Any] = []
    workers = asyncio.gather(*(worker(i) for i in range(args.connections)))
    await report()
    await workers
    await asyncio.sleep(1.0)  # the parent samples the server with every connection still open
    for writer in still_open:
        writer.close()


def drive(
    server: Server, request: tuple[str, Path, dict[str, str]], rate: float, seconds: float, window: float,
    connections: int = 8,
) -> list[dict[str, Any]]:  # fmt: skip
    """Run the paced generator for ``seconds``; after each of its windows, sample the server."""
    path, body, headers = request
    cmd = [sys.executable, str(Path(__file__).resolve()), "pace", "--target", f"127.0.0.1:{server.port}",
           "--path", path, "--body", str(body), "--headers", json.dumps(headers), "--rate", str(rate),
           "--seconds", str(seconds), "--window", str(window), "--connections", str(connections)]  # fmt: skip
    rss, fds = server.sample()
    windows: list[dict[str, Any]] = [{"t": 0.0, "requests": 0, "rss_mb": rss, "fds": fds, "start": True}]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=HERE) as gen:
        assert gen.stdout is not None
        for line in gen.stdout:
            row = json.loads(line)
            row["rss_mb"], row["fds"] = server.sample()
            windows.append(row)
    if gen.returncode:
        raise RuntimeError(f"the load generator failed (exit {gen.returncode})")
    return windows


# --- verdicts ----------------------------------------------------------------------------------------
def verdicts(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures and pass/fail of one soak (``windows[0]`` is the sample before load)."""
    load = [w for w in windows if not w.get("start")]
    statuses: dict[str, int] = {}
    for w in load:
        for k, v in w["status"].items():
            statuses[k] = statuses.get(k, 0) + v
    requests = sum(w["requests"] for w in load)
    server_errors = sum(v for k, v in statuses.items() if k.startswith("5")) + sum(
        w["conn_errors"] for w in load
    )
    not_ok = sum(v for k, v in statuses.items() if k != "200")
    # RSS against requests served, leaving the first window out (allocator and ONNX Runtime arenas
    # warm up there): a slope in MB per 100k requests.
    steady = load[1:] if len(load) >= 3 else load
    served = np.cumsum([w["requests"] for w in load])[len(load) - len(steady) :]
    rss = np.array([w["rss_mb"] for w in steady])
    slope = float(np.polyfit(served, rss, 1)[0]) * 100_000 if len(steady) >= 2 and np.ptp(served) > 0 else 0.0
    growth = slope * float(np.ptp(served)) / 100_000 if len(steady) >= 2 else 0.0
    # p99 of the first and the last quarter of the steady windows (at least one window each), pooled:
    # one short window's p99 rests on a handful of requests.
    k = max(1, len(steady) // 4)
    head = [v for w in steady[:k] for v in w["latencies_ms"]]
    tail = [v for w in steady[-k:] for v in w["latencies_ms"]]
    first = float(np.percentile(head, 99)) if head else None
    last = float(np.percentile(tail, 99)) if tail else None
    drift = (last - first) / first if first and last is not None else None
    fd_growth = max(w["fds"] for w in steady) - steady[0]["fds"]
    return {
        "requests": requests,
        "statuses": statuses,
        "server_errors": server_errors,
        "non_200": not_ok,
        "late_sends": sum(w["late"] for w in load),
        "p99_first_ms": first,
        "p99_last_ms": last,
        "p99_drift": drift,
        "rss_start_mb": round(windows[0]["rss_mb"], 1),
        "rss_end_mb": round(windows[-1]["rss_mb"], 1),
        "rss_mb_per_100k": round(slope, 2),
        "rss_fitted_growth_mb": round(growth, 2),
        "fd_start": steady[0]["fds"],  # under load: the generator's connections are open
        "fd_end": steady[-1]["fds"],
        "fd_growth": fd_growth,
        "ok_errors": server_errors == 0 and not_ok == 0,
        "ok_p99_drift": drift is not None and drift <= MAX_P99_DRIFT,
        "ok_rss": slope <= MAX_RSS_MB_PER_100K or growth < RSS_NOISE_MB,
        "ok_fds": fd_growth <= MAX_FD_GROWTH,
    }


def soak(
    repo: Path, model: str, seconds: float, window: float, workdir: Path, leak_bytes: int = 0,
    capacity_s: float = 5.0,
) -> dict[str, Any]:  # fmt: skip
    """One soak of a fresh server: capacity, then 50 % of it for ``seconds`` (whole windows)."""
    seconds = max(1, round(seconds / window)) * window
    workdir.mkdir(parents=True, exist_ok=True)
    request = oip_binary_request(repo, model, workdir)
    name = "leaking-control" if leak_bytes else "soak"
    with Server(repo, workdir / f"{name}.log", leak_bytes) as server:
        cap = capacity(server.port, request, capacity_s)
        rate = max(1.0, cap / 2)
        windows = drive(server, request, rate, seconds, window)
    return {
        "run": name,
        "model": model,
        "leak_bytes_per_request": leak_bytes,
        "seconds": seconds,
        "window_s": window,
        "capacity_rps": round(cap, 1),
        "rate_rps": round(rate, 1),
        **verdicts(windows),
        "windows": [{k: v for k, v in w.items() if k != "latencies_ms"} for w in windows],
    }


def table(results: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="soak: 50 % of measured capacity")
    for col in ("run", "min", "req/s", "requests", "server errors", "p99 first→last ms", "drift",
                "RSS MB start→end", "MB/100k req", "fds start→end", "verdict"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in results:
        ok = all(r[k] for k in ("ok_errors", "ok_p99_drift", "ok_rss", "ok_fds"))
        verdict = ("leak caught" if not r["ok_rss"] else "[red]LEAK MISSED") if r["leak_bytes_per_request"] else (
            "pass" if ok else "[red]FAIL: " + ", ".join(k[3:] for k in ("ok_errors", "ok_p99_drift", "ok_rss", "ok_fds") if not r[k])
        )  # fmt: skip
        p99 = f"{r['p99_first_ms']:.1f}→{r['p99_last_ms']:.1f}" if r["p99_first_ms"] else "-"
        t.add_row(
            r["run"], f"{r['seconds'] / 60:.1f}", f"{r['rate_rps']:.0f} of {r['capacity_rps']:.0f}",
            str(r["requests"]), str(r["server_errors"]), p99,
            f"{r['p99_drift']:+.0%}" if r["p99_drift"] is not None else "-",
            f"{r['rss_start_mb']:.0f}→{r['rss_end_mb']:.0f}", f"{r['rss_mb_per_100k']:.1f}",
            f"{r['fd_start']}→{r['fd_end']}", verdict,
        )  # fmt: skip
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    pace = sub.add_parser("pace", help="(internal) the paced load generator")
    for a in ("--target", "--path", "--body", "--headers"):
        pace.add_argument(a, required=True)
    pace.add_argument("--rate", type=float, required=True)
    pace.add_argument("--seconds", type=float, required=True)
    pace.add_argument("--window", type=float, default=10.0)
    pace.add_argument("--connections", type=int, default=8)
    ap.add_argument(
        "--minutes", type=float, default=2.0, help="soak length (default 2; 30 for the long form)"
    )
    ap.add_argument("--window", type=float, default=10.0, help="seconds per sampled window")
    ap.add_argument("--control-minutes", type=float, default=0.5, help="length of the leaking control")
    ap.add_argument("--repo", type=Path, default=ROOT / "models", help="model repository")
    ap.add_argument("--model", default="eurosat-cnn")
    ap.add_argument("--json", type=Path, default=RESULTS / "soak.json")
    args = ap.parse_args()
    if args.cmd == "pace":
        asyncio.run(_pace(args))
        return 0
    from rich.console import Console

    console = Console(width=160)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        results = []
        for leak, minutes in ((0, args.minutes), (16384, args.control_minutes)):
            console.print(f"{'leaking control' if leak else 'soak'}: {minutes:g} min at 50 % of capacity ...")
            results.append(soak(args.repo, args.model, minutes * 60, args.window, Path(tmp), leak_bytes=leak))
    console.print(table(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"platform": os.uname().machine, "cpus": os.cpu_count(), "runs": results}, indent=2)
    )
    console.print(f"written {args.json}")
    healthy, control = results
    passed = (
        all(healthy[k] for k in ("ok_errors", "ok_p99_drift", "ok_rss", "ok_fds")) and not control["ok_rss"]
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
