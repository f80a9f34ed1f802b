"""Monitoring hardening (issue 12): area folders, failure isolation, the database under
concurrency (migrations, leases, outbox, conflicts, busy), secrets in responses and the URL guard.
Real SQLite and PostgreSQL, real HTTP servers on 127.0.0.1, real threads and processes."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite: writers queue (BEGIN IMMEDIATE)
def test_two_creates_of_one_name_at_once_are_a_conflict_not_a_crash(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """The second of two overlapping creates of one area name meets the unique key at commit: a
    ConflictError (409 over HTTP), not an IntegrityError (500)."""
    from eodeploy.errors import ConflictError

    db = Database(db_url, attempts=1)
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
        from prometheus_client import CollectorRegistry, generate_latest

        from eodeploy.monitor.metrics import MonitorCollector

        registry = CollectorRegistry()
        registry.register(MonitorCollector(lambda: db))
        text = generate_latest(registry).decode()
        assert "eodeploy_monitor_database_up 1.0" in text and "eodeploy_monitor_database_busy 1.0" in text
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

    from conftest import wait_ready
    from eodeploy.web.app import create_app

    bad = tmp_path / "not-a-db.sqlite"
    bad.write_bytes(b"this is not a SQLite file" * 100)
    cfg = settings(tmp_path, repo, f"sqlite:///{bad}", grpc_port=0, poll_interval_s=0)
    with TestClient(create_app(cfg, grpc=False)) as client:
        r = client.get("/metrics")
        assert r.status_code == 200 and "eodeploy_monitor_database_up 0.0" in r.text
        r = client.get("/monitor/areas")
        assert r.status_code == 503 and "cannot be used" in r.json()["error"]
        assert str(tmp_path) not in r.text and "sqlite:///…" in r.text  # no server paths in errors
        wait_ready(client)  # models load in the background: ready once loaded, database or not
        assert client.get("/v2/health/ready").status_code == 200
    assert bad.read_bytes().startswith(b"this is not")  # nothing stored was touched


class _Hook(http.server.BaseHTTPRequestHandler):
    """A webhook receiver on 127.0.0.1 answering from a script of (status, body) replies."""

    replies: list[tuple[int, bytes]] = []
    received: list[str] = []  # Idempotency-Keys
    delay = 0.0
    during: Any = None  # called while a request is being handled

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if cls.during is not None:
            cls.during()
        time.sleep(cls.delay)
        status, body = cls.replies.pop(0) if cls.replies else (204, b"")
        cls.received.append(f"{status} {self.headers.get('Idempotency-Key')}")
        self.send_response(status)
        if status in (301, 302, 307):
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def hook() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"replies": [], "received": [], "delay": 0.0, "during": None})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/SECRETTOKEN", handler
    server.shutdown()
    server.server_close()


def _alerts(db: Database, repo: ModelRepository, tmp_path: Path, url: str, n: int) -> None:
    """``n`` stored alerts of one area, each with a pending webhook delivery to ``url``."""
    from datetime import datetime, timedelta

    from eodeploy.monitor.db import Alert, Delivery, Observation

    with db.session() as s:
        area, _, _ = add_area(s, repo, spec(tmp_path, webhook_url=url, emails=["ops@example.org"]))
        s.flush()
        for i in range(n):
            obs = Observation(area_id=area.id, scene_id=f"s{i}", scene_datetime=datetime(2024, 1, 1) + timedelta(i),
                              model_name="tiny", model_version=1, status="ok", target_ha=1.0, observed_ha=1.0,
                              observed_share=1.0, areas_ha={}, outputs=str(tmp_path / f"out{i}"))  # fmt: skip
            alert = Alert(area_id=area.id, observation=obs, message=f"alert {i}",
                          payload={"area": "square", "target_class": "Forest"})  # fmt: skip
            alert.deliveries.append(Delivery(channel="webhook", target=url))
            s.add(alert)


def test_webhooks_4xx_not_retried_5xx_retried_no_redirects_no_reply_bodies_no_private_hosts(
    repo: ModelRepository, tmp_path: Path, db_url: str, hook: tuple[str, type[_Hook]]
) -> None:
    from eodeploy.monitor.alerts import deliver_pending
    from eodeploy.monitor.report import list_alerts

    url, receiver = hook
    cfg = settings(tmp_path, repo, db_url, webhook_attempts=3)
    db = Database.from_settings(cfg)
    _alerts(db, repo, tmp_path, url, 3)
    receiver.replies = [
        (400, b"bad payload: token SECRETTOKEN leaked in this reply body"),  # alert 1: refused, once
        (503, b"busy"),  # alert 2: retried...
        (200, b"ok"),  # ...and sent on its second attempt
        (302, b""),  # alert 3: a redirect (to the metadata address) is not followed
    ]
    counts = deliver_pending(db, cfg)
    assert counts == {"sent": 1, "failed": 2}, receiver.received
    assert [r.split()[0] for r in receiver.received] == ["400", "503", "200", "302"]  # no 4xx/3xx retries
    with db.session() as s:
        deliveries = {a["message"]: a["deliveries"][0] for a in list_alerts(s)}
    assert deliveries["alert 0"]["status"] == "failed" and deliveries["alert 0"]["attempts"] == 1
    assert (
        deliveries["alert 0"]["last_error"] == "WebhookRefused: HTTP 400: the receiver refuses this request"
    )
    assert deliveries["alert 1"]["status"] == "sent"
    assert "redirects are not followed" in deliveries["alert 2"]["last_error"]
    assert all(
        "SECRETTOKEN" not in (d["last_error"] or "") for d in deliveries.values()
    )  # no reply body kept
    # Without loopback allowed, the same URL is refused before any request is made.
    strict = settings(tmp_path, repo, db_url, allowed_url_hosts=[])
    before = len(receiver.received)
    assert deliver_pending(db, strict) == {"sent": 0, "failed": 2}
    assert len(receiver.received) == before
    with db.session() as s:
        errors = [a["deliveries"][0]["last_error"] for a in list_alerts(s)]
    assert sum("loopback address; such addresses are refused" in (e or "") for e in errors) == 2
    db.dispose()


def test_concurrent_senders_never_send_one_delivery_twice_and_hold_no_transaction_while_sending(
    repo: ModelRepository, tmp_path: Path, db_url: str, hook: tuple[str, type[_Hook]]
) -> None:
    """Two runs delivering at once (two threads here; processes or replicas alike): each delivery
    is sent exactly once. While a request is on the wire, no transaction of ours is open."""
    from sqlalchemy import create_engine, text

    from eodeploy.monitor.alerts import deliver_pending

    url, receiver = hook
    cfg = settings(tmp_path, repo, db_url, webhook_attempts=1)
    db = Database.from_settings(cfg)
    _alerts(db, repo, tmp_path, url, 8)
    receiver.delay = 0.15
    open_tx: list[int] = []
    if db_url.startswith("postgresql"):
        name = db_url.rsplit("/", 1)[1]
        admin = create_engine(test_monitor.PG_URL, isolation_level="AUTOCOMMIT")

        def idle_in_transaction() -> None:
            with admin.connect() as c:
                open_tx.append(
                    c.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND "
                            "state LIKE 'idle in transaction%'"
                        ),
                        {"d": name},
                    ).scalar_one()  # fmt: skip
                )

        receiver.during = idle_in_transaction
    else:  # SQLite: another writer gets the write lock at once while a request is being handled
        other = Database(db_url, busy_timeout_s=0.05)

        def idle_in_transaction() -> None:
            try:
                _touch(other)
                open_tx.append(0)
            except Exception:  # noqa: BLE001 - the lock was held
                open_tx.append(1)

        receiver.during = idle_in_transaction
    results: list[dict[str, int]] = []
    threads = [threading.Thread(target=lambda: results.append(deliver_pending(db, cfg))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    keys = [r.split()[1] for r in receiver.received]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 8, keys  # each once, none lost
    assert sum(r["sent"] for r in results) == 8
    assert open_tx == [0] * 8
    db.dispose()
    if db_url.startswith("postgresql"):
        admin.dispose()
    else:
        other.dispose()


def test_monitoring_responses_mask_secrets_and_server_paths(
    repo: ModelRepository, tmp_path: Path, db_url: str, hook: tuple[str, type[_Hook]]
) -> None:
    from fastapi.testclient import TestClient

    from eodeploy.monitor.alerts import deliver_pending
    from eodeploy.web.app import create_app

    url, receiver = hook
    cfg = settings(tmp_path, repo, db_url, api_keys=["k"], grpc_port=0, poll_interval_s=0, webhook_attempts=1)
    db = Database.from_settings(cfg)
    _alerts(db, repo, tmp_path, url, 1)
    receiver.replies = [(500, b"stack trace with SECRETTOKEN")]
    deliver_pending(db, cfg)
    db.dispose()
    with TestClient(create_app(cfg, grpc=False)) as client:
        admin = {"X-API-Key": "k"}
        for path in ("/monitor/areas", "/monitor/areas/square", "/monitor/alerts", "/monitor/runs",
                     "/monitor/areas/square/series"):  # fmt: skip
            assert client.get(path).status_code == 401
            r = client.get(path, headers=admin)
            assert r.status_code == 200
            for secret in ("SECRETTOKEN", "/services/", "ops@example.org", str(tmp_path)):
                assert secret not in r.text, (path, secret)
        area = client.get("/monitor/areas/square", headers=admin).json()
        assert area["webhook_url"] == f"http://127.0.0.1:{url.split(':')[2].split('/')[0]}/…"
        assert area["emails"] == ["o***@example.org"]
        (alert,) = client.get("/monitor/alerts", headers=admin).json()
        assert alert["deliveries"][0]["last_error"] == "RuntimeError: HTTP 500"
        # A webhook the guard refuses is refused when it is given, with the reason.
        meta = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
        r = client.patch("/monitor/areas/square", json={"webhook_url": meta}, headers=admin)
        assert r.status_code == 400 and "link-local address" in r.json()["error"]
        r = client.post("/monitor/areas", json={**spec(tmp_path, name="x", webhook_url=meta).model_dump(mode="json")},
                        headers=admin)  # fmt: skip
        assert r.status_code == 400 and "169.254.169.254" in r.json()["error"]


def test_area_leases_a_live_holder_is_respected_a_stale_one_taken_over(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """Another process's lease on the area that is still renewed: this run skips the area (says so,
    stores nothing). A lease whose heartbeat stopped (expired: its holder died): taken over."""
    from datetime import timedelta

    from eodeploy.monitor.db import Lease, utcnow

    folder = tmp_path / "inbox"
    folder.mkdir()
    scene(folder / "s2_2024-06-01.tif", 100)
    cfg = settings(tmp_path, repo, db_url)
    db = Database.from_settings(cfg)
    with db.session() as s:
        area, _, _ = add_area(s, repo, spec(folder))
        s.flush()
        s.add(Lease(name=f"area:{area.id}", owner="other-host:4242:alive", acquired_at=utcnow(),
                    expires_at=utcnow() + timedelta(minutes=5)))  # fmt: skip
    report = run_monitoring(db, cfg)
    assert report.stored == 0 and report.busy == ["square"] and "other-host:4242:alive" in report.warnings[0]
    with db.session() as s:
        assert time_series(s, "square")["observations"] == []
        lease = s.get(Lease, f"area:{area.id}")
        lease.expires_at = utcnow() - timedelta(seconds=1)  # the holder stopped renewing: it died
        lease.owner = "other-host:4242:dead"
    report = run_monitoring(db, cfg)
    assert report.stored == 1 and report.busy == [], report.summary()
    with db.session() as s:
        assert s.get(Lease, f"area:{area.id}") is None  # released at the end
    db.dispose()


def test_two_runs_at_once_classify_each_scene_once(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """Two runs started together (cron and CLI, two replicas): one works on the area, the other
    skips it; no scene is classified twice, nothing stored twice, no output folder written twice."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i in range(3):
        scene(folder / f"s2_2024-06-0{i + 1}.tif", 100, seed=i)
    cfg = settings(tmp_path, repo, db_url)
    setup = Database.from_settings(cfg)
    with setup.session() as s:
        add_area(s, repo, spec(folder))
    setup.dispose()
    barrier = threading.Barrier(2)
    classified: list[str] = []
    reports: list[Any] = []

    def one() -> None:
        db = Database.from_settings(cfg)
        barrier.wait()
        reports.append(
            run_monitoring(
                db, cfg, on_event=lambda k, i: classified.append(i["scene"]) if k == "scene" else None
            )
        )
        db.dispose()

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert sorted(classified) == sorted(p.name for p in folder.iterdir()), classified
    assert sorted(r.stored for r in reports) == [0, 3] and sum(len(r.busy) for r in reports) == 1
    db = Database.from_settings(cfg)
    with db.session() as s:
        assert len(time_series(s, "square")["observations"]) == 3
    db.dispose()


def test_stac_items_cannot_reach_outside_their_folder_or_private_networks(
    repo: ModelRepository, tmp_path: Path, hook: tuple[str, type[_Hook]]
) -> None:
    """Asset hrefs from an Item's JSON are not trusted: '../' and absolute paths out of the Item's
    folder, file: URLs and hosts on loopback/link-local/private networks are refused before GDAL
    opens anything; Item bodies are read with a size bound."""
    import json

    import numpy as np

    from eodeploy.errors import DataError
    from eodeploy.geo.predict import predict_scene
    from eodeploy.netguard import URLPolicy, using
    from test_scene import BANDS, write_scene

    outside = tmp_path / "private"
    outside.mkdir()
    for name in BANDS:
        write_scene(outside / f"{name}.tif", np.full((1, 64, 64), 1000, np.uint16), names=None)
    folder = tmp_path / "items"
    folder.mkdir()

    def item(href: str) -> Path:
        assets = {n: {"href": href.format(n=n), "eo:bands": [{"name": n}]} for n in BANDS}
        path = folder / f"item-{abs(hash(href))}.json"
        path.write_text(json.dumps({"type": "Feature", "stac_version": "1.1.0", "id": "X", "geometry": None,
                                    "properties": {"datetime": "2024-05-01T00:00:00Z"}, "assets": assets}))  # fmt: skip
        return path

    for href, words in [
        ("../private/{n}.tif", "points outside the Item's folder"),
        (str(outside) + "/{n}.tif", "points outside the Item's folder"),
        ("file://" + str(outside) + "/{n}.tif", "only http"),
        ("http://169.254.169.254/latest/meta-data/{n}.tif", "link-local address"),
        ("http://10.0.0.7/{n}.tif", "private address"),
        ("http://127.0.0.1:9/{n}.tif", "loopback address"),
    ]:
        with pytest.raises(DataError, match=words):
            predict_scene(repo.get("tiny"), item(href), tmp_path / "out", polygons=False)
    assert not (tmp_path / "out").exists()
    # Item bodies: bounded, from a file or over HTTP.
    big = item("{n}.tif")
    big.write_text(big.read_text() + " " * 5000)
    with using(URLPolicy(max_bytes=4000)), pytest.raises(DataError, match="over the 4000-byte limit"):
        predict_scene(repo.get("tiny"), big, tmp_path / "out", polygons=False)
    url, receiver = hook
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        type(
            "H",
            (http.server.SimpleHTTPRequestHandler,),
            {
                "log_message": lambda *a: None,
                "__init__": lambda self, *a, **k: http.server.SimpleHTTPRequestHandler.__init__(
                    self, *a, directory=str(folder), **k
                ),
            },
        ),  # fmt: skip
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        remote = f"http://127.0.0.1:{server.server_address[1]}/{big.name}"
        with pytest.raises(DataError, match="loopback address"):  # loopback not allowed by default
            predict_scene(repo.get("tiny"), remote, tmp_path / "out", polygons=False)
        policy = URLPolicy(allowed_hosts=("127.0.0.1",), max_bytes=4000)
        with using(policy), pytest.raises(DataError, match="over the limit of 4000"):
            predict_scene(repo.get("tiny"), remote, tmp_path / "out", polygons=False)
    finally:
        server.shutdown()
        server.server_close()


def test_a_webhook_host_no_dns_name_can_be_is_400_not_500(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """Found by schemathesis: a host with characters IDNA refuses made the resolver raise
    UnicodeError inside the URL guard, and PATCH/POST /monitor/areas answered 500."""
    from fastapi.testclient import TestClient

    from eodeploy.web.app import create_app

    cfg = settings(tmp_path, repo, db_url, grpc_port=0)
    bad = "https://qq\u00c6\u001e\u00c0f.w\u0086/hook"
    with TestClient(create_app(cfg, grpc=False)) as client:
        body = spec(tmp_path).model_dump(mode="json")
        assert client.post("/monitor/areas", json=body).status_code == 201
        r = client.patch("/monitor/areas/square", json={"webhook_url": bad})
        assert r.status_code == 400 and "no valid host name" in r.json()["error"], r.text
        r = client.post("/monitor/areas", json={**body, "name": "other", "webhook_url": bad})
        assert r.status_code == 400 and "no valid host name" in r.json()["error"], r.text


def test_ids_past_the_integer_columns_are_400_not_500(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """Found by schemathesis: GET /monitor/runs/{id} and POST /monitor/alerts/{id}/ack with an id
    past 2**63-1 overflowed in SQLite's driver (500), past 2**31-1 in PostgreSQL ("integer out of
    range", 503); ids are INTEGER columns, so a larger one is refused as a bad request."""
    from fastapi.testclient import TestClient

    from eodeploy.web.app import create_app

    cfg = settings(tmp_path, repo, db_url, grpc_port=0)
    with TestClient(create_app(cfg, grpc=False)) as client:
        for big in (2**31, 2**63, 2**65 + 1):
            for r in (client.get(f"/monitor/runs/{big}"), client.post(f"/monitor/alerts/{big}/ack")):
                assert r.status_code == 400 and "less than or equal" in r.json()["error"], r.text
        assert client.get(f"/monitor/runs/{2**31 - 1}").status_code == 404
        assert client.post(f"/monitor/alerts/{2**31 - 1}/ack").status_code == 404


def test_nul_characters_are_400_not_a_database_outage(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """Found probing what schemathesis generates: on PostgreSQL a NUL in an area name, a query or a
    body string made the driver's DataError read as "the database cannot be used" (503)."""
    from fastapi.testclient import TestClient

    from eodeploy.web.app import create_app

    cfg = settings(tmp_path, repo, db_url, grpc_port=0)
    body = spec(tmp_path).model_dump(mode="json")
    with TestClient(create_app(cfg, grpc=False)) as client:
        assert client.post("/monitor/areas", json=body).status_code == 201
        for r in (
            client.get("/monitor/areas/a%00b"),
            client.get("/monitor/areas/a%00b/series"),
            client.delete("/monitor/areas/a%00b"),
            client.patch("/monitor/areas/a%00b", json={"active": True}),
            client.get("/monitor/alerts", params={"area": "a\x00b"}),
            client.post("/monitor/runs", json={"area": "a\x00b"}),
            client.patch("/monitor/areas/square", json={"emails": ["a\x00b@example.org"]}),
            client.post("/monitor/areas", json={**body, "name": "other", "emails": ["a\x00b@example.org"]}),
        ):
            assert r.status_code == 400 and "NUL" in r.json()["error"], (r.request.url, r.text)
        assert client.get("/monitor/areas/square").status_code == 200
