"""The canary controller's reaction time: from a bad window closing to the rollback being served.

Starts a real ``eodeploy serve`` (tests/servers.py) on a repository of the tests' linear model:
v1, and a v2 whose top-1 class is never v1's. Under steady traffic from a thread, the controller
(a CLI-style process reading /metrics) rolls v2 out with 1 s windows and ``max_failures=1``: the
first window fails on agreement and the rollout rolls back. Per server poll interval (how often
the server re-reads serving.json), it reports: decision (window closed → serving.json written),
served (closed → every server reports the champion-only split, ``applied_at``), and last canary
answer (closed → the last answer from v2 the traffic saw). Prints a table, writes
benchmarks/results/rollout.json.

    python benchmarks/rollout.py [--repeats 3] [--polls 0.25,1,2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import requests
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import BIAS, CLASSES, WEIGHTS, linear_onnx, linear_spec, make_patch  # noqa: E402
from servers import live_server  # noqa: E402

console = Console()


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def traffic(url: str, stop: threading.Event, log: list[tuple[datetime, str, int]]) -> None:
    rng = np.random.default_rng(0)
    s = requests.Session()
    i = 0
    while not stop.is_set():
        x = make_patch(CLASSES[i % 3], rng)[None].astype(np.float32)
        i += 1
        head = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}]}).encode()  # fmt: skip
        r = s.post(f"{url}/v2/models/tiny/infer", data=head + x.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(head))}, timeout=30)  # fmt: skip
        log.append((now(), r.json().get("model_version", "") if r.ok else "", r.status_code))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--polls", default="0.25,1,2")
    args = ap.parse_args()

    from eodeploy.mlops import history
    from eodeploy.mlops.analysis import Thresholds, http_source
    from eodeploy.mlops.rollout import Controller, RolloutOptions
    from eodeploy.monitor.db import Database
    from eodeploy.package import ModelRepository
    from eodeploy.serve.policy import ServingConfig, VersionPolicy

    policy = VersionPolicy.parse("latest:1")
    rows = []
    for poll in (float(p) for p in args.polls.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            repo = ModelRepository(work / "models")
            repo.add("tiny", linear_onnx(WEIGHTS, BIAS), linear_spec())
            repo.add("tiny", linear_onnx(-WEIGHTS, -BIAS), linear_spec())
            ServingConfig(policy, {"stable": 1}).write(repo.root / "tiny")
            db_url = f"sqlite:///{work / 'history.db'}"
            env = {"EODEPLOY_POLL_INTERVAL_S": str(poll), "EODEPLOY_CANARY_MIRROR_SHARE": "1.0",
                   "EODEPLOY_DATABASE_URL": db_url, "EODEPLOY_DASHBOARD": "false"}  # fmt: skip
            db = Database(db_url)
            with live_server(repo.root, work / "server.log", **env) as server:
                stop, log = threading.Event(), []  # type: ignore[var-annotated]
                sender = threading.Thread(target=traffic, args=(server.http, stop, log), daemon=True)
                sender.start()
                decided, served, last_canary = [], [], []
                for _ in range(args.repeats):
                    opts = RolloutOptions(
                        2, window_s=1.0, max_failures=1, thresholds=Thresholds(min_requests=5)
                    )
                    c = Controller(repo.root, "tiny", opts, http_source([server.http]), db, policy)
                    assert c.run() == "rolled_back"
                    with db.session() as s:
                        done = [history.decision_dict(d) for d in history.rollout_rows(s, c.rollout_id or 0)]
                    fail = [d for d in done if d["verdict"] == "fail"][-1]
                    back = done[-1]
                    closed = datetime.fromisoformat(fail["figures"]["closed_at"].rstrip("Z"))
                    at = datetime.fromisoformat(back["at"].rstrip("Z"))
                    applied = datetime.fromisoformat(back["applied_at"].rstrip("Z"))
                    stop_wait = threading.Event()
                    stop_wait.wait(max(2 * poll, 0.5))  # let in-flight canary answers arrive
                    last = max((t for t, v, _ in log if v == "2"), default=closed)
                    decided.append((at - closed).total_seconds() * 1000)
                    served.append((applied - closed).total_seconds() * 1000)
                    last_canary.append((last - closed).total_seconds() * 1000)
                stop.set()
                sender.join(30)
            db.dispose()
            failed = sum(1 for *_, status in log if status != 200)
            rows.append({
                "server_poll_s": poll, "repeats": args.repeats, "requests": len(log), "failed_requests": failed,
                "decision_ms": round(statistics.median(decided), 1),
                "served_ms_median": round(statistics.median(served), 1), "served_ms_max": round(max(served), 1),
                "last_canary_answer_ms_max": round(max(last_canary), 1),
            })  # fmt: skip
    table = Table(title="canary rollback reaction (window closed → ...)")
    for col in (
        "server poll",
        "decision (median)",
        "served (median / max)",
        "last canary answer (max)",
        "requests",
        "failed",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['server_poll_s']:g} s", f"{r['decision_ms']:.0f} ms",
            f"{r['served_ms_median']:.0f} / {r['served_ms_max']:.0f} ms", f"{r['last_canary_answer_ms_max']:.0f} ms",
            str(r["requests"]), str(r["failed_requests"]),
        )  # fmt: skip
    console.print(table)
    out = ROOT / "benchmarks" / "results" / "rollout.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "window_s": 1.0}, indent=2))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
