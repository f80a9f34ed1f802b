"""Monitoring hardening (issue 12): area folders, failure isolation, the database under
concurrency (migrations, leases, outbox, conflicts, busy), secrets in responses and the URL guard.
Real SQLite and PostgreSQL, real HTTP servers on 127.0.0.1, real threads and processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

import test_monitor
from eodeploy.monitor.areas import add_area
from eodeploy.monitor.db import Area, Database
from eodeploy.monitor.report import time_series
from eodeploy.monitor.run import run_monitoring
from eodeploy.package import ModelRepository
from test_monitor import map_ha, scene, settings, spec

db_url = test_monitor.db_url  # the same fresh SQLite file / PostgreSQL database per test


def test_dotted_area_names_get_their_own_folders_and_one_failing_area_stays_alone(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """'farm.north' and 'farm.south' used to share 'farm/' (each observation pointed at the other's
    maps); an area whose model lost its target class (ValueError) used to abort the whole run."""
    north, south = tmp_path / "north", tmp_path / "south"
    north.mkdir()
    south.mkdir()
    scene(north / "s2_2024-06-01.tif", 120)
    scene(south / "s2_2024-06-01.tif", 40, seed=1)
    cfg = settings(tmp_path, repo, db_url)
    db = Database.from_settings(cfg)
    with db.session() as s:
        add_area(s, repo, spec(north, name="farm.north"))
        add_area(s, repo, spec(south, name="farm.south"))
        add_area(s, repo, spec(north, name="broken"))  # sorted first: it runs before the farms
    with db.session() as s:  # as if the latest model no longer had the class: measure_area's ValueError
        s.execute(update(Area).where(Area.name == "broken").values(target_class="Mangrove"))
    report = run_monitoring(db, cfg)
    assert report.stored == 2, report.summary()
    (failure,) = report.failures
    assert failure["area"] == "broken" and "ValueError" in failure["error"]
    with db.session() as s:
        (n,) = time_series(s, "farm.north")["observations"]
        (so,) = time_series(s, "farm.south")["observations"]
    assert n["outputs"] != so["outputs"]
    assert Path(n["outputs"]).parent.name == "farm.north"
    for o in (n, so):  # each observation's maps are its own
        assert o["estimate_ha"] == pytest.approx(map_ha(Path(o["outputs"])), rel=0.02)
    db.dispose()


def test_migrations_at_once_from_many_processes_run_one_after_the_other(db_url: str) -> None:
    """Replicas, cron and CLI starting together on an empty database: one migrates, the others wait
    for its lock and find nothing to do (without the lock: 'relation already exists', 'table
    already exists' or a duplicate alembic_version row)."""
    import os
    import subprocess
    import sys
    import time

    from sqlalchemy import inspect

    code = (
        "import sys, time\n"
        "from eodeploy.monitor.db import Database\n"
        "db = Database(sys.argv[1], attempts=1)\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "db.ensure()\n"
    )
    at = time.time() + 4.0  # every process imported and waiting by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, db_url, str(at)],
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-600:] for _, err in outs]
    db = Database(db_url)
    assert {"areas", "observations", "alembic_version"} <= set(inspect(db.engine).get_table_names())
    db.dispose()


def test_two_creates_of_one_name_at_once_are_a_conflict_not_a_crash(
    repo: ModelRepository, tmp_path: Path
) -> None:
    """The second of two overlapping creates of one area name meets the unique key at commit: a
    ConflictError (409 over HTTP), not an IntegrityError (500)."""
    import threading

    from eodeploy.errors import ConflictError
    from test_monitor import PG_URL  # noqa: F401 - the fresh database comes from the fixture below

    gen = test_monitor.db_url.__wrapped__(_Param("postgresql"), tmp_path)  # type: ignore[attr-defined]
    url = next(gen)
    try:
        db = Database(url, attempts=1)
        db.ensure()
        first_flushed, release = threading.Event(), threading.Event()

        def first() -> None:
            with db.session() as s:
                add_area(s, repo, spec(tmp_path))
                s.flush()
                first_flushed.set()
                release.wait(30)

        t = threading.Thread(target=first)
        t.start()
        first_flushed.wait(30)
        threading.Timer(0.5, release.set).start()  # the first commits while the second waits on the key
        with pytest.raises(ConflictError, match="concurrent change stored the same thing first"):
            with db.session() as s:
                add_area(s, repo, spec(tmp_path))
        t.join(30)
        with db.session() as s:
            assert len(list(s.scalars(select(Area)))) == 1
        db.dispose()
    finally:
        next(gen, None)


class _Param:
    def __init__(self, param: str) -> None:
        self.param = param


def test_a_locked_sqlite_database_is_busy_not_unreachable(tmp_path: Path) -> None:
    import sqlite3

    from eodeploy.errors import DatabaseBusyError

    path = tmp_path / "m.db"
    db = Database(f"sqlite:///{path}", attempts=2, backoff_s=0.01, busy_timeout_s=0.2)
    db.ensure()
    other = sqlite3.connect(path)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
    try:
        with pytest.raises(DatabaseBusyError, match="is busy .*database is locked"):
            db.retrying(lambda: _touch(db))
    finally:
        other.rollback()
        other.close()
    _touch(db)  # free again
    db.dispose()


def _touch(db: Database) -> None:
    with db.session() as s:
        s.execute(update(Area).values(active=True))


def test_metrics_survive_a_database_that_is_not_ours(repo: ModelRepository, tmp_path: Path) -> None:
    """Any database error (here a file that is not a database) reads as 'database down' on /metrics;
    the rest of /metrics, inference and the API's clear 503 stay."""
    from fastapi.testclient import TestClient

    from eodeploy.serve.app import create_app

    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not a SQLite file" * 100)
    cfg = settings(tmp_path, repo, f"sqlite:///{bad}", grpc_port=0, poll_interval_s=0)
    with TestClient(create_app(cfg, grpc=False)) as client:
        r = client.get("/metrics")
        assert r.status_code == 200 and "eodeploy_monitor_database_up 0.0" in r.text
        r = client.get("/monitor/areas")
        assert r.status_code == 503 and "cannot be used" in r.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200
    assert bad.read_bytes().startswith(b"this is not")  # nothing stored was touched
