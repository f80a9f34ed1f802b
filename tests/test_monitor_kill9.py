"""kill -9 campaign: a monitoring run (a real process) killed with SIGKILL at random points of its
work, then run again; every rerun must end with the rows of a clean run (0 lost, 0 duplicates) and
the same files (no orphans), on SQLite and PostgreSQL. 20 kill points per database in CI;
EODEPLOY_KILL9_POINTS=200 for a longer run. The figures are printed (pytest -s) and appended to
$EODEPLOY_KILL9_REPORT when set."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import test_monitor
import test_monitor_hardening
from eodeploy.monitor.areas import add_area
from eodeploy.monitor.db import Database
from eodeploy.monitor.run import run_monitoring
from eodeploy.package import ModelRepository
from eodeploy.settings import Settings
from test_monitor import scene, spec
from test_monitor_hardening import _Hook

hook = test_monitor_hardening.hook  # a webhook receiver on 127.0.0.1
POINTS = int(os.environ.get("EODEPLOY_KILL9_POINTS", "20"))
LEASE_S = 0.6  # short, so that the rerun after a kill takes the dead run's lease over soon

#: A zygote: imports everything once, then forks one monitoring run per line read on stdin (its
#: environment and an events file) and prints the run's pid. The runs are real processes killed
#: with SIGKILL; forking them ready-made keeps 20 kill points per database within a few minutes.
ZYGOTE = r"""
import json, os, signal, sys
import onnxruntime, rasterio, shapely  # imported once, before any fork
from eodeploy.monitor.db import Database
from eodeploy.monitor.run import run_monitoring
from eodeploy.settings import Settings

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # exited runs are reaped by the kernel
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.environ.update(cmd["env"])
        out = open(cmd["events"], "w", buffering=1)
        code = 2
        try:
            def emit(kind, info):
                out.write(json.dumps({"event": kind}) + "\n")
            cfg = Settings()
            db = Database.from_settings(cfg)
            report = run_monitoring(db, cfg, force=True, on_event=emit)
            out.write(json.dumps({"event": "done", "summary": report.summary()}) + "\n")
            code = 1 if report.failures or report.busy else 0
        except BaseException as exc:
            out.write(json.dumps({"event": "error", "error": repr(exc)}) + "\n")
        out.flush()
        os._exit(code)
    print(pid, flush=True)
"""


def _fresh_db(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / f'm-{uuid.uuid4().hex[:8]}.db'}"
    from sqlalchemy import create_engine, text

    name = f"eodeploy_k_{uuid.uuid4().hex[:10]}"
    admin = create_engine(test_monitor.PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return test_monitor.PG_URL.rsplit("/", 1)[0] + f"/{name}"


def _drop(url: str) -> None:
    if url.startswith("postgresql"):
        from sqlalchemy import create_engine, text

        admin = create_engine(test_monitor.PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)"))
        admin.dispose()


def _settings(repo: ModelRepository, url: str, out: Path) -> dict[str, Any]:
    return {"model_repo": str(repo.root), "database_url": url, "monitor_dir": str(out),
            "allowed_url_hosts": ["127.0.0.1"], "monitor_lease_s": LEASE_S, "delivery_claim_s": 0,
            "webhook_backoff_s": 0.01, "db_connect_attempts": 3, "db_retry_backoff_s": 0.2}  # fmt: skip


class _Zygote:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], cwd=cwd, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip

    def start(self, settings: dict[str, Any]) -> tuple[int, Path]:
        events = self.cwd / f"events-{uuid.uuid4().hex[:8]}.jsonl"
        env = {
            f"EODEPLOY_{k.upper()}": v if isinstance(v, str) else json.dumps(v) for k, v in settings.items()
        }
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"env": env, "events": str(events)}) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline()), events

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")]


def _wait_for(path: Path, kinds: set[str], timeout: float = 300) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ev = _events(path)
        if any(e["event"] in kinds for e in ev):
            return ev
        time.sleep(0.01)
    raise AssertionError(f"no {kinds} event in {path} after {timeout} s: {_events(path)}")


def _rows(url: str) -> dict[str, Any]:
    """What a run leaves, without what differs by nature between runs (ids, times, run ids)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as c:
        obs = c.execute(text(
            "SELECT a.name, o.scene_id, o.model_version, o.status, o.target_ha, o.observed_share, "
            "o.estimate_ha, o.baseline_ha, o.change_baseline_ha, o.change_previous_ha, p.scene_id, o.outputs "
            "FROM observations o JOIN areas a ON a.id = o.area_id LEFT JOIN observations p ON p.id = o.previous_id"
        )).all()  # fmt: skip
        alerts = c.execute(text(
            "SELECT o.scene_id, al.message FROM alerts al JOIN observations o ON o.id = al.observation_id"
        )).all()  # fmt: skip
        deliveries = c.execute(text(
            "SELECT o.scene_id, d.channel, d.target, d.status FROM deliveries d JOIN alerts al ON al.id = d.alert_id "
            "JOIN observations o ON o.id = al.observation_id"
        )).all()  # fmt: skip
        leases = c.execute(text("SELECT count(*) FROM leases")).scalar_one()
    engine.dispose()
    strip = [(*r[:-1], Path(r[-1]).relative_to(Path(r[-1]).parents[1]).as_posix() if r[-1] else None)
             for r in obs]  # fmt: skip
    return {"observations": Counter(map(tuple, strip)), "alerts": Counter(map(tuple, alerts)),
            "deliveries": Counter(map(tuple, deliveries)), "leases": leases}  # fmt: skip


def _files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} if out.exists() else set()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_kill_9_at_random_points_then_rerun_ends_like_a_clean_run(
    repo: ModelRepository, tmp_path: Path, kind: str, hook: tuple[str, type[_Hook]]
) -> None:
    url_hook, receiver = hook
    t_start = time.monotonic()
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i, cols in enumerate((100, 100, 60)):  # a loss over the threshold (an alert) at the 3rd
        scene(folder / f"s2_2024-02-0{i + 1}.tif", cols, seed=i)

    def prepare() -> tuple[str, Path]:
        url = _fresh_db(kind, tmp_path)
        out = tmp_path / f"out-{uuid.uuid4().hex[:8]}"
        db = Database(url, attempts=1)
        with db.session() as s:
            add_area(s, repo, spec(folder, name="farm.north", webhook_url=url_hook))
        db.dispose()
        return url, out

    zygote = _Zygote(tmp_path)
    figures: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    trials = 0
    try:
        # The clean run: the reference rows and files, and how long its work takes.
        url, out = prepare()
        _, ev_path = zygote.start(_settings(repo, url, out))
        _wait_for(ev_path, {"run", "error"})
        started = time.monotonic()
        ev = _wait_for(ev_path, {"done", "error"})
        work_s = time.monotonic() - started
        assert ev[-1]["event"] == "done" and not ev[-1]["summary"]["failures"], ev[-1]
        reference, ref_files = _rows(url), _files(out)
        _drop(url)
        assert sum(reference["observations"].values()) == 3 and sum(reference["alerts"].values()) == 1
        assert {d[3] for d in reference["deliveries"]} == {"sent"} and reference["leases"] == 0

        rng = random.Random(int(os.environ.get("EODEPLOY_KILL9_SEED", "12")))
        while figures["killed"] < POINTS and trials < 3 * POINTS:
            trials += 1
            url, out = prepare()
            receiver.received.clear()
            pid, ev_path = zygote.start(_settings(repo, url, out))
            _wait_for(ev_path, {"run", "error"})
            delay = rng.uniform(0, work_s)
            time.sleep(delay)
            ev = _events(ev_path)
            if ev and ev[-1]["event"] in ("done", "error"):
                figures["finished before the kill (not counted)"] += 1
            else:
                os.kill(pid, signal.SIGKILL)
                figures["killed"] += 1
                phases[ev[-1]["event"] if ev else "start-up"] += 1
            time.sleep(LEASE_S + 0.1)  # the dead run's lease expires (its heartbeat stopped)
            db = Database(url, attempts=3)
            report = run_monitoring(db, Settings(**_settings(repo, url, out)), force=True)  # the rerun
            db.dispose()
            assert not report.failures and not report.busy, (trials, delay, report.summary())
            got, files = _rows(url), _files(out)
            _drop(url)
            figures["lost rows"] += sum((reference["observations"] - got["observations"]).values()) + sum(
                (reference["alerts"] - got["alerts"]).values()
            )
            figures["duplicate rows"] += sum(
                (got["observations"] - reference["observations"]).values()
            ) + sum((got["alerts"] - reference["alerts"]).values())
            figures["orphaned files"] += len(files - ref_files)
            figures["missing files"] += len(ref_files - files)
            keys = [r.split()[1] for r in receiver.received if r.startswith("2")]
            figures["webhook re-sends (same Idempotency-Key)"] += len(keys) - len(set(keys))
            assert got == reference, (trials, delay, phases)
            assert files == ref_files, (trials, delay, files ^ ref_files)
    finally:
        zygote.close()
    summary = {"database": kind, "kill_points": figures["killed"], "trials": trials,
               "clean_work_s": round(work_s, 2), "elapsed_s": round(time.monotonic() - t_start, 1),
               **figures, "killed after (last event seen)": dict(phases)}  # fmt: skip
    print(json.dumps(summary))
    if os.environ.get("EODEPLOY_KILL9_REPORT"):
        with open(os.environ["EODEPLOY_KILL9_REPORT"], "a") as f:
            f.write(json.dumps(summary) + "\n")
    assert figures["killed"] >= POINTS
    assert figures["lost rows"] == figures["duplicate rows"] == figures["orphaned files"] == 0
