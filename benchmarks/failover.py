"""Replica loss and rolling restarts behind nginx: three ``eodeploy serve`` processes on loopback
behind Debian's nginx running deploy/nginx/eodeploy.conf, a fixed-rate open-loop client at 100
requests/s counting every answer that is not 200 — the scenarios of tests/test_nginx_replicas.py,
with the shipped config and with the nginx settings it replaces. Prints a table, writes
benchmarks/results/failover.json.

    python benchmarks/failover.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import make_repo  # noqa: E402
from replicas import NGINX_CONF, FixedRateLoad, Nginx, Replica, infer_body  # noqa: E402

console = Console()
SHIPPED = NGINX_CONF.read_text()
RETRY = "proxy_next_upstream error timeout http_503 non_idempotent;"
CONFIGS = {
    "shipped": SHIPPED,
    "no non_idempotent": SHIPPED.replace(RETRY, "proxy_next_upstream error timeout http_503;"),
    "max_fails=3 fail_timeout=10s": SHIPPED.replace("max_fails=0;", "max_fails=3 fail_timeout=10s;"),
}


def stack(work: Path, site: str, env: dict[str, str]) -> tuple[list[Replica], Nginx]:
    repo = make_repo(work).root
    replicas = [Replica(repo, work / f"replica-{i}.log", env) for i in range(3)]
    for r in replicas:
        r.start()
    for r in replicas:
        r.wait_ready()
    nginx = Nginx(work / "nginx", site)
    nginx.start([r.port for r in replicas], [r.grpc_port for r in replicas])
    return replicas, nginx


def scenario(name: str, config: str, rate: float) -> dict:
    env = {"EODEPLOY_MAX_QUEUE_DELAY_MS": "100"} if name == "kill -9" else {}
    with tempfile.TemporaryDirectory(prefix="failover-") as tmp:
        replicas, nginx = stack(Path(tmp), CONFIGS[config], env)
        try:
            url = f"http://127.0.0.1:{nginx.port}/v2/models/tiny/infer"
            t0 = time.monotonic()
            with FixedRateLoad(url, infer_body(), rate) as load:
                time.sleep(5)
                steady_end = load.mark()
                codes = []
                if name == "kill -9":
                    replicas[0].kill()
                    time.sleep(8)
                else:
                    for r in replicas:
                        codes.append(r.terminate())
                        r.start()
                        r.wait_ready()
                    while load.sent < steady_end + 1500:
                        time.sleep(0.2)
                event_end = load.mark()
            res, steady, event = load.result(), load.result(0, steady_end), load.result(steady_end, event_end)
        finally:
            nginx.stop()
            for r in replicas:
                r.kill()
    return {
        "scenario": name, "config": config, "rate": rate, "sent": res.sent, "failed": res.failed,
        "status": dict(res.status), "steady_p50_ms": steady.p(50), "steady_p99_ms": steady.p(99),
        "event_p50_ms": event.p(50), "event_p99_ms": event.p(99), "event_requests": len(event.latencies_ms),
        "exit_codes": codes, "seconds": time.monotonic() - t0,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    plan = [("kill -9", "shipped"), ("kill -9", "no non_idempotent"), ("rolling restart", "shipped"),
            ("rolling restart", "max_fails=3 fail_timeout=10s")]  # fmt: skip
    rows = []
    for _ in range(args.repeats):
        for name, config in plan:
            row = scenario(name, config, args.rate)
            rows.append(row)
            console.print(f"{name:16s} {config:30s} failed {row['failed']}/{row['sent']} {row['status']}")
    table = Table(title=f"3 replicas behind nginx, {args.rate:g} requests/s (open loop)")
    for c in (
        "scenario",
        "nginx config",
        "requests",
        "failed",
        "steady p50/p99 ms",
        "during p50/p99 ms",
        "p99 ratio",
    ):
        table.add_column(c, justify="left" if c in ("scenario", "nginx config") else "right")
    for r in rows:
        table.add_row(
            r["scenario"], r["config"], str(r["sent"]), str(r["failed"]),
            f"{r['steady_p50_ms']:.1f} / {r['steady_p99_ms']:.1f}", f"{r['event_p50_ms']:.1f} / {r['event_p99_ms']:.1f}",
            f"{r['event_p99_ms'] / r['steady_p99_ms']:.2f}x",
        )  # fmt: skip
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "failover.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2)
    )
    console.print(f"wrote {args.out / 'failover.json'}")


if __name__ == "__main__":
    main()
