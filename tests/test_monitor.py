"""Monitoring against both databases (a SQLite file and the real PostgreSQL on 127.0.0.1:5432):
runs, change, idempotence, resuming, alerts over real HTTP/SMTP, bad input, the REST API."""

from __future__ import annotations

import http.server
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import CLASSES, SHARED, SPECTRA
from eodeploy.errors import ConflictError, DatabaseUnavailableError, DataError
from eodeploy.monitor.areas import AreaSpec, add_area, load_geometry
from eodeploy.monitor.db import Database
from eodeploy.monitor.report import list_alerts, list_runs, time_series
from eodeploy.monitor.run import run_monitoring
from eodeploy.package import ModelRepository
from eodeploy.settings import Settings
from test_scene import BANDS, LEFT, RIGHT, write_scene

PG_URL = os.environ.get("EODEPLOY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TARGET = CLASSES[LEFT]
SIZE, RES, X0, Y0 = 200, 10.0, 500000.0, 5000000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on the real PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'monitor.db'}"
        return
    from sqlalchemy import create_engine, text

    name = f"eodeploy_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def scene(path: Path, left_cols: int, cloud_cols: int = 0, seed: int = 0) -> Path:
    """Target (Forest-spectrum) pixels in the ``left_cols`` first columns, SeaLake elsewhere; a
    cloud-probability band at 100 over the ``cloud_cols`` last columns."""
    rng = np.random.default_rng(seed)
    arr = np.empty((14, SIZE, SIZE), np.float64)
    arr[:13] = np.array(SPECTRA["SeaLake"])[:, None, None]
    arr[:13, :, :left_cols] = np.array(SPECTRA["Forest"])[:, None, None]
    arr[:13] += rng.normal(0, 30, (13, SIZE, SIZE))
    arr[13] = 0
    if cloud_cols:
        arr[13, :, SIZE - cloud_cols :] = 100
    return write_scene(path, np.clip(arr, 0, 18000).astype(np.uint16), names=[*BANDS, "probability"],
                       origin=(X0, Y0), res=RES, nodata=None)  # fmt: skip


def aoi(margin_px: int = 8) -> dict[str, Any]:
    """The scene square less a margin, in the scene's UTM CRS (stored as WGS84)."""
    a, b = X0 + margin_px * RES, X0 + (SIZE - margin_px) * RES
    c, d = Y0 - (SIZE - margin_px) * RES, Y0 - margin_px * RES
    return {"type": "Polygon", "coordinates": [[[a, c], [b, c], [b, d], [a, d], [a, c]]]}


def spec(folder: Path, **kw: Any) -> AreaSpec:
    base = {"name": "square", "geometry": aoi(), "crs": "EPSG:32633", "model": "tiny", "target_class": TARGET,
            "threshold_pct": 20.0, "mmu_ha": 0.1, "source": {"type": "folder", "path": str(folder)}}  # fmt: skip
    return AreaSpec(**{**base, **kw})


def settings(tmp_path: Path, repo: ModelRepository, db_url: str, **kw: Any) -> Settings:
    # Webhooks, SMTP and STAC APIs in these tests are real servers on loopback: allowed explicitly.
    base = {"db_connect_attempts": 1, "webhook_backoff_s": 0.01, "allowed_url_hosts": ["127.0.0.1"]}
    return Settings(model_repo=repo.root, database_url=db_url, monitor_dir=tmp_path / "monitoring",
                    **{**base, **kw})  # fmt: skip


def map_ha(outputs: Path, margin: int = 8) -> float:
    """Target hectares inside the AOI counted straight from an observation's class map."""
    import rasterio

    with rasterio.open(outputs / "classes.tif") as ds:
        assert ds.transform.c == X0 and ds.transform.f == Y0  # the crop starts at the scene corner here
        classes = ds.read(1)
    return float((classes[margin : SIZE - margin, margin : SIZE - margin] == LEFT).sum()) * RES * RES / 1e4


def test_series_change_alerts_and_idempotence(repo: ModelRepository, tmp_path: Path, db_url: str) -> None:
    assert CLASSES[RIGHT] != TARGET
    folder = tmp_path / "inbox"
    folder.mkdir()
    scene(folder / "s2_2024-01-05.tif", 100)
    scene(folder / "s2_2024-01-10.tif", 100, seed=1)
    scene(folder / "s2_2024-01-15.tif", 70, seed=2)  # loss: 92 -> 62 columns of target
    scene(folder / "s2_2024-01-20.tif", 70, cloud_cols=150, seed=3)  # 75 % cloud: skipped
    cfg = settings(tmp_path, repo, db_url)
    db = Database.from_settings(cfg)
    with db.session() as s:
        add_area(s, repo, spec(folder))
    # Up to the 12th: two scenes; then the rest.
    first = run_monitoring(db, cfg, as_of=datetime(2024, 1, 12))
    assert (first.stored, first.cloudy, first.alerts) == (2, 0, 0), first.summary()
    report = run_monitoring(db, cfg, area="square")
    assert (report.stored, report.cloudy, report.already, report.alerts) == (1, 1, 2, 1), report.summary()
    with db.session() as s:
        data = time_series(s, "square")
    obs = data["observations"]
    assert [o["status"] for o in obs] == ["ok", "ok", "ok", "cloudy"]
    # Against the class maps counted independently (AOI = rows/cols 8..191; 10 m pixels, UTM scale < 0.1 %).
    for o in obs[:3]:
        assert o["estimate_ha"] == pytest.approx(map_ha(Path(o["outputs"])), rel=0.02)
    assert obs[2]["estimate_ha"] < 0.8 * obs[0]["estimate_ha"]
    assert obs[0]["change_baseline_ha"] == 0 and obs[0]["change_previous_ha"] is None
    assert abs(obs[1]["change_previous_pct"]) < 5 and obs[1]["alert_id"] is None
    assert obs[2]["change_baseline_pct"] < -20 and obs[2]["alert_id"] is not None
    assert (
        obs[3]["observed_share"] < 0.3
        and obs[3]["estimate_ha"] is None
        and obs[3]["change_baseline_ha"] is None
    )
    # Rerunning stores nothing twice and raises no new alert.
    again = run_monitoring(db, cfg, force=True)
    assert (again.stored, again.cloudy, again.already, again.alerts) == (0, 0, 4, 0)
    with db.session() as s:
        assert len(time_series(s, "square")["observations"]) == 4
        assert len(list_alerts(s)) == 1
        assert [r["status"] for r in list_runs(s)] == ["succeeded"] * 3
    # Not due again within its interval unless forced or named.
    assert run_monitoring(db, cfg).not_due == ["square"]
    # Outputs of each observation are real maps.
    assert (Path(obs[2]["outputs"]) / "classes.tif").is_file()
    db.dispose()


def test_a_crash_mid_run_leaves_nothing_partial_and_the_next_run_finishes(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    for i, cols in enumerate((100, 100, 70)):
        scene(folder / f"s2_2024-02-0{i + 1}.tif", cols, seed=i)
    cfg = settings(tmp_path, repo, db_url)
    db = Database.from_settings(cfg)
    with db.session() as s:
        add_area(s, repo, spec(folder))
    seen: list[str] = []

    def crash_on_second(kind: str, info: dict[str, Any]) -> None:
        if kind == "scene":
            seen.append(info["scene"])
            if len(seen) == 2:
                raise KeyboardInterrupt  # as if the process were stopped here

    with pytest.raises(KeyboardInterrupt):
        run_monitoring(db, cfg, on_event=crash_on_second)
    with db.session() as s:
        assert len(time_series(s, "square")["observations"]) == 1
        assert list_runs(s)[0]["status"] == "interrupted"
    report = run_monitoring(db, cfg, force=True)
    assert (report.stored, report.already, report.alerts) == (2, 1, 1)
    with db.session() as s:
        series = time_series(s, "square")["observations"]
    assert [o["scene"] for o in series] == sorted(p.name for p in folder.iterdir())
    db.dispose()


def test_gee_patch_export_folder_is_one_observation(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """A dated sub-folder of GEE-exported patches is mosaicked and measured like the whole scene."""
    import rasterio
    from rasterio.windows import Window, transform

    folder = tmp_path / "inbox"
    (folder / "export_2024-08-01").mkdir(parents=True)
    whole = scene(tmp_path / "whole_2024-08-01.tif", 100, cloud_cols=20)
    with rasterio.open(whole) as src:
        profile = src.profile
        for r in range(0, SIZE, 50):
            for c in range(0, SIZE, 50):
                win = Window(c, r, 50, 50)
                profile.update(width=50, height=50, transform=transform(win, src.transform))
                with rasterio.open(
                    folder / "export_2024-08-01" / f"patch_{r}_{c}.tif", "w", **profile
                ) as dst:
                    dst.write(src.read(window=win))
                    dst.descriptions = src.descriptions
    cfg = settings(tmp_path, repo, db_url)
    db = Database.from_settings(cfg)
    with db.session() as s:
        add_area(s, repo, spec(folder))
        add_area(s, repo, spec(tmp_path, name="whole", source={"type": "files", "paths": [str(whole)]}))
    report = run_monitoring(db, cfg)
    assert report.stored == 2 and not report.failures, report.summary()
    with db.session() as s:
        (patches,) = time_series(s, "square")["observations"]
        (ref,) = time_series(s, "whole")["observations"]
    assert patches["scene"] == "export_2024-08-01"
    assert patches["estimate_ha"] == pytest.approx(ref["estimate_ha"], rel=1e-6)
    assert patches["observed_share"] == pytest.approx(ref["observed_share"], rel=1e-6)
    assert patches["observed_share"] < 0.95  # the cloud band came through the mosaic
    assert not any(p.is_file() for p in (tmp_path / "monitoring" / ".mosaics").rglob("*"))
    db.dispose()


def test_database_lost_mid_run_loses_nothing(
    repo: ModelRepository, tmp_path: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL refuses connections after the first scene: the run fails with a clear error,
    what was stored stays, and the next run (database back) finishes the work."""
    if not db_url.startswith("postgresql"):
        pytest.skip("needs a server that can be taken away mid-run")
    from sqlalchemy import create_engine, text

    folder = tmp_path / "inbox"
    folder.mkdir()
    for i in range(3):
        scene(folder / f"s2_2024-09-0{i + 1}.tif", 100, seed=i)
    cfg = settings(tmp_path, repo, db_url)
    db = Database.from_settings(cfg)
    with db.session() as s:
        add_area(s, repo, spec(folder))
    name = db_url.rsplit("/", 1)[1]
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    scenes: list[str] = []

    def take_database_away(kind: str, info: dict[str, Any]) -> None:
        if kind == "scene":
            scenes.append(info["scene"])
            if len(scenes) == 2:
                with admin.connect() as c:
                    c.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                    c.execute(
                        text(
                            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                        )
                    )

    try:
        with pytest.raises(DatabaseUnavailableError, match="rolled back, nothing partial was stored"):
            run_monitoring(db, cfg, on_event=take_database_away)
    finally:
        with admin.connect() as c:
            c.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
        admin.dispose()
    db.dispose()
    db = Database.from_settings(cfg)
    with db.session() as s:
        assert len(time_series(s, "square")["observations"]) == 1
    report = run_monitoring(db, cfg, force=True)
    assert (report.stored, report.already) == (2, 1)
    db.dispose()
    # With retries configured, an outage shorter than the back-off is waited out: nothing fails.
    scene(folder / "s2_2024-09-04.tif", 100, seed=3)
    cfg = settings(tmp_path, repo, db_url, db_connect_attempts=5, db_retry_backoff_s=0.3)
    db = Database.from_settings(cfg)
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")

    def allow() -> None:
        with admin.connect() as c:
            c.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))

    class AllowOnRetry(logging.Handler):
        """The outage ends once the run has met it (its first retry is logged), however slow the
        machine: a fixed 0.8 s window could end before the run next touched the database."""

        def emit(self, record: logging.LogRecord) -> None:
            if "retrying" in record.getMessage():
                allow()

    handler = AllowOnRetry()
    logging.getLogger("eodeploy").addHandler(handler)
    safety = threading.Timer(30, allow)

    def brief_outage(kind: str, info: dict[str, Any]) -> None:
        if kind == "scene":
            with admin.connect() as c:
                c.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                c.execute(
                    text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
                )
            safety.start()  # ends the outage in any case

    try:
        report = run_monitoring(db, cfg, force=True, on_event=brief_outage)
    finally:
        logging.getLogger("eodeploy").removeHandler(handler)
        safety.cancel()
        allow()
        admin.dispose()
    assert (report.stored, report.already, report.failures) == (1, 3, [])
    assert "database unavailable; retrying" in caplog.text  # the outage was met and waited out
    db.dispose()


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A real webhook endpoint: fails the first ``fail`` requests with 500, or sleeps ``delay``."""

    fail = 0
    delay = 0.0
    received: list[dict[str, Any]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(type(self).delay)
        if type(self).fail > 0:
            type(self).fail -= 1
            self.send_response(500)
            self.end_headers()
            return
        type(self).received.append({"body": body, "key": self.headers.get("Idempotency-Key")})
        self.send_response(204)
        self.end_headers()


@pytest.fixture
def webhook() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"fail": 0, "delay": 0.0, "received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def test_alert_deliveries_retry_until_sent_and_email_over_smtp(
    repo: ModelRepository, tmp_path: Path, db_url: str, webhook: tuple[str, type[_Receiver]]
) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Inbox(Message):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[Any] = []

        def handle_message(self, message: Any) -> None:
            self.messages.append(message)

    from conftest import require

    require("aiosmtpd")
    inbox = Inbox()
    from servers import free_port

    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    url, receiver = webhook
    try:
        folder = tmp_path / "inbox"
        folder.mkdir()
        scene(folder / "s2_2024-03-01.tif", 100)
        scene(folder / "s2_2024-03-06.tif", 70, seed=1)
        cfg = settings(tmp_path, repo, db_url, webhook_attempts=2, smtp_host="127.0.0.1",
                       smtp_port=smtp.port)  # fmt: skip
        db = Database.from_settings(cfg)
        with db.session() as s:
            add_area(s, repo, spec(folder, webhook_url=url, emails=["ops@example.org"]))
        receiver.fail = 3  # both attempts of the first run fail, the next run's first fails too
        first = run_monitoring(db, cfg)
        assert first.alerts == 1 and first.deliveries == {"sent": 1, "failed": 1}  # e-mail sent, webhook not
        with db.session() as s:
            (alert,) = list_alerts(s)
        hook = next(d for d in alert["deliveries"] if d["channel"] == "webhook")
        assert hook["status"] == "failed" and "500" in hook["last_error"]
        assert len(inbox.messages) == 1 and "square" in inbox.messages[0]["Subject"]
        second = run_monitoring(db, cfg, force=True)  # no new scene; the failed delivery is retried
        assert second.alerts == 0 and second.deliveries == {"sent": 1, "failed": 0}
        assert len(receiver.received) == 1
        got = receiver.received[0]
        assert got["key"] == f"eodeploy-alert-{alert['id']}" and got["body"]["change_baseline_pct"] < -20
        with db.session() as s:
            (alert,) = list_alerts(s)
        assert {d["status"] for d in alert["deliveries"]} == {"sent"} and len(inbox.messages) == 1
        # A webhook that times out is recorded as failed, with the reason, and kept for later.
        scene(folder / "s2_2024-03-11.tif", 100, seed=2)  # back up: a gain over the threshold
        receiver.delay = 1.0
        third = run_monitoring(db, settings(tmp_path, repo, db_url, webhook_attempts=1, webhook_timeout_s=0.2,
                                            smtp_host="127.0.0.1", smtp_port=smtp.port), force=True)  # fmt: skip
        assert third.alerts == 1 and third.deliveries["failed"] == 1
        with db.session() as s:
            newest = list_alerts(s)[0]
        assert "Timeout" in next(d for d in newest["deliveries"] if d["channel"] == "webhook")["last_error"]
        db.dispose()
    finally:
        smtp.stop()


def test_bad_areas_are_refused_or_repaired_with_the_reason(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    scene(folder / "s2_2024-04-01.tif", 100)
    cfg = settings(tmp_path, repo, db_url)
    db = Database.from_settings(cfg)
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    geom, notes = load_geometry(bowtie)
    assert geom.is_valid and geom.area > 0 and "Self-intersection" in notes[0]
    for bad, words in [
        ({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "Polygon or MultiPolygon"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]}, "no area"),
        ({"type": "Polygon", "coordinates": "nope"}, "not a valid GeoJSON geometry"),
        (aoi(), "not longitude/latitude"),  # UTM metres given without their CRS
        ({"type": "FeatureCollection", "features": []}, "no features"),
    ]:
        with pytest.raises(DataError, match=words):
            load_geometry(bad)
    with pytest.raises(DataError, match="unknown CRS"):
        load_geometry(aoi(), "EPSG:999999")
    with db.session() as s, pytest.raises(DataError, match=f"no class 'Mangrove'.*{TARGET}"):
        add_area(s, repo, spec(folder, target_class="Mangrove"))
    with db.session() as s:
        _, _, created = add_area(s, repo, spec(folder))
        assert created
    with db.session() as s:  # the same again: nothing changes
        _, notes, created = add_area(s, repo, spec(folder))
        assert not created and "unchanged" in notes[-1]
    run_monitoring(db, cfg)
    with db.session() as s, pytest.raises(ConflictError, match="already exists"):
        add_area(s, repo, spec(folder, target_class=CLASSES[RIGHT]))
    with db.session() as s:  # the refused change left the stored area and its history intact
        assert time_series(s, "square")["target_class"] == TARGET
        assert len(time_series(s, "square")["observations"]) == 1
    # An area far from every scene: nothing stored, and the run says why.
    far = {
        "type": "Polygon",
        "coordinates": [[[120.0, 10.0], [120.01, 10.0], [120.01, 10.01], [120.0, 10.0]]],
    }
    with db.session() as s:
        add_area(s, repo, spec(folder, name="palawan", geometry=far, crs=None))
    report = run_monitoring(db, cfg, area="palawan")
    assert report.stored == 0 and "outside every scene" in report.warnings[0]
    db.dispose()


def test_database_down_fails_cleanly(repo: ModelRepository, tmp_path: Path) -> None:
    from eodeploy.monitor.db import redact

    down = "postgresql+psycopg://postgres:secret@127.0.0.1:1/test"
    db = Database(down, attempts=2, backoff_s=0.01)
    with pytest.raises(DatabaseUnavailableError, match="cannot reach the database .* after 2 attempt") as exc:
        db.ensure()
    assert "secret" not in str(exc.value) and "***" in redact(down)
    env = {**os.environ, "EODEPLOY_MODEL_REPO": str(repo.root), "EODEPLOY_DB_CONNECT_ATTEMPTS": "1"}
    run = subprocess.run([sys.executable, "-m", "eodeploy.cli.main", "monitor", "run", "--db", down],
                         capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 2 and "cannot reach the database" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    # The server keeps serving: /metrics says the database is down, the API answers 503.
    from fastapi.testclient import TestClient

    from conftest import wait_ready
    from eodeploy.web.app import create_app

    cfg = Settings(model_repo=repo.root, database_url=down, grpc_port=0, poll_interval_s=0)
    with TestClient(create_app(cfg, grpc=False)) as client:
        wait_ready(client)  # models load in the background after start-up
        assert "eodeploy_monitor_database_up 0.0" in client.get("/metrics").text
        r = client.get("/monitor/areas")
        assert r.status_code == 503 and "cannot reach the database" in r.json()["error"]
        assert client.get("/v2/health/ready").status_code == 200


def test_migrations_match_the_models(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from eodeploy.monitor.db import Base

    db = Database(db_url)
    db.ensure()
    db.ensure()  # twice is harmless
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    db.dispose()


def test_rest_api(repo: ModelRepository, tmp_path: Path, db_url: str) -> None:
    from fastapi.testclient import TestClient

    from eodeploy.web.app import create_app

    folder = tmp_path / "inbox"
    folder.mkdir()
    scene(folder / "s2_2024-05-01.tif", 100)
    scene(folder / "s2_2024-05-06.tif", 70, seed=1)
    cfg = settings(tmp_path, repo, db_url, api_keys=["k"], grpc_port=0, poll_interval_s=0)
    body = spec(folder).model_dump(mode="json")
    with TestClient(create_app(cfg, grpc=False)) as client:
        admin = {"X-API-Key": "k"}
        assert client.post("/monitor/areas", json=body).status_code == 401
        for path in ("/monitor/areas", "/monitor/runs", "/monitor/alerts"):  # reads need a key too
            assert client.get(path).status_code == 401
        r = client.post("/monitor/areas", json=body, headers=admin)
        assert r.status_code == 201 and r.json()["area"]["area_ha"] == pytest.approx(184**2 / 100, rel=1e-3)
        assert client.post("/monitor/areas", json=body, headers=admin).status_code == 200  # identical
        changed = {**body, "target_class": CLASSES[RIGHT]}
        assert client.post("/monitor/areas", json=changed, headers=admin).status_code == 409
        bad = {**body, "name": "x", "target_class": "Mangrove"}
        r = client.post("/monitor/areas", json=bad, headers=admin)
        assert r.status_code == 400 and "Mangrove" in r.json()["error"]
        r = client.post(
            "/monitor/areas", json={**body, "name": "y", "geometry": {"type": "Point"}}, headers=admin
        )
        assert r.status_code == 400 and "error" in r.json()
        assert client.post("/monitor/areas", json={"name": "z"}, headers=admin).status_code == 400
        assert client.post("/monitor/runs", json={}).status_code == 401
        assert client.post("/monitor/runs", json={"area": "nope"}, headers=admin).status_code == 404
        r = client.post("/monitor/runs", json={"area": "square"}, headers=admin)
        assert r.status_code == 202
        for _ in range(600):
            run = client.get(f"/monitor/runs/{r.json()['run_id']}", headers=admin).json()
            if run["status"] != "running":
                break
            time.sleep(0.1)
        assert run["status"] == "succeeded" and run["summary"]["stored"] == 2 and run["trigger"] == "api"
        assert client.get("/monitor/runs/999", headers=admin).status_code == 404
        metrics = client.get("/metrics").text
        assert "eodeploy_monitor_database_up 1.0" in metrics
        assert "eodeploy_monitor_alerts_unacknowledged 1.0" in metrics
        assert 'eodeploy_monitor_observations{area="square"} 2.0' in metrics
        assert 'eodeploy_monitor_last_run{status="succeeded"} 1.0' in metrics
        series = client.get("/monitor/areas/square/series", headers=admin).json()
        assert [o["status"] for o in series["observations"]] == ["ok", "ok"]
        alerts = client.get("/monitor/alerts", headers=admin, params={"acknowledged": "false"}).json()
        assert len(alerts) == 1
        assert client.post(f"/monitor/alerts/{alerts[0]['id']}/ack").status_code == 401
        r = client.post(f"/monitor/alerts/{alerts[0]['id']}/ack", params={"by": "ana"}, headers=admin)
        assert r.status_code == 200 and r.json()["acknowledged_by"] == "ana"
        assert client.get("/monitor/alerts", headers=admin, params={"acknowledged": "false"}).json() == []
        assert client.post("/monitor/alerts/999/ack", headers=admin).status_code == 404
        r = client.patch("/monitor/areas/square", json={"threshold_pct": 60, "active": False}, headers=admin)
        assert r.status_code == 200 and r.json()["threshold_pct"] == 60 and r.json()["active"] is False
        assert client.patch("/monitor/areas/square", json={"geometry": {}}, headers=admin).status_code == 400
        assert client.delete("/monitor/areas/square", headers=admin).status_code == 409  # has history
        assert client.get("/monitor/areas/square/series", headers=admin).status_code == 200
        assert client.get("/monitor/runs", headers=admin).json()[0]["status"] == "succeeded"
        assert client.get("/monitor/areas/nope", headers=admin).status_code == 404
        r = client.delete("/monitor/areas/square", params={"purge": "true"}, headers=admin)
        assert r.status_code == 200 and r.json()["observations_deleted"] == 2
        assert client.get("/monitor/areas", headers=admin).json() == []
        schema = client.get("/openapi.json").json()
        assert {"/monitor/areas", "/monitor/areas/{name}/series", "/monitor/alerts/{alert_id}/ack"} <= set(
            schema["paths"]
        )


def test_stac_api_search_source(repo: ModelRepository, tmp_path: Path) -> None:
    """pystac-client searching a STAC API (a minimal one served here) by area, dates and cloud cover."""
    from shapely.geometry import box, mapping

    from eodeploy.monitor.imagery import list_scenes

    files = [scene(tmp_path / f"a{i}.tif", 100, seed=i) for i in range(3)]
    footprint = mapping(box(14.99, 45.0, 15.05, 45.2))

    def item(i: int, day: int, cloud: float) -> dict[str, Any]:
        return {"type": "Feature", "stac_version": "1.0.0", "id": f"S2_{i}", "geometry": footprint,
                "bbox": [14.99, 45.0, 15.05, 45.2], "collection": "s2", "links": [],
                "properties": {"datetime": f"2024-06-{day:02d}T10:00:00Z", "eo:cloud_cover": cloud},
                "assets": {"image": {"href": str(files[i]), "type": "image/tiff"}}}  # fmt: skip

    items = [item(0, 1, 5.0), item(1, 5, 80.0), item(2, 9, 10.0)]
    searches: list[dict[str, Any]] = []

    class Api(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _json(self, data: Any) -> None:
            raw = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:  # noqa: N802
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            self._json({"type": "Catalog", "id": "api", "stac_version": "1.0.0", "description": "test API",
                        "conformsTo": ["https://api.stacspec.org/v1.0.0/core",
                                       "https://api.stacspec.org/v1.0.0/item-search",
                                       "https://api.stacspec.org/v1.0.0/item-search#query"],
                        "links": [{"rel": "self", "href": base + "/"}, {"rel": "root", "href": base + "/"},
                                  {"rel": "search", "href": base + "/search", "method": "POST",
                                   "type": "application/geo+json"}]})  # fmt: skip

        def do_POST(self) -> None:  # noqa: N802
            q = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            searches.append(q)
            start, end = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in q["datetime"].split("/"))
            lte = q.get("query", {}).get("eo:cloud_cover", {}).get("lte", 100)
            hits = [i for i in items
                    if start <= datetime.fromisoformat(i["properties"]["datetime"].replace("Z", "+00:00")) <= end
                    and i["properties"]["eo:cloud_cover"] <= lte]  # fmt: skip
            self._json({"type": "FeatureCollection", "features": hits, "links": []})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        geom, _ = load_geometry(aoi(), "EPSG:32633")
        source = {"type": "stac", "url": f"http://127.0.0.1:{server.server_address[1]}/", "collections": ["s2"],
                  "max_cloud": 30, "days": 7, "max_items": 10}  # fmt: skip
        # The URL guard refuses loopback unless allowed: a search can never reach the server's own
        # network (169.254.169.254, localhost admin ports) by default.
        with pytest.raises(DataError, match="loopback address; such addresses are refused"):
            list_scenes(source, geom, datetime(2024, 6, 10), tmp_path / "cache")
        assert searches == []
        from eodeploy.netguard import URLPolicy, using

        with using(URLPolicy(allowed_hosts=("127.0.0.1",))):
            found = list_scenes(source, geom, datetime(2024, 6, 10), tmp_path / "cache")
    finally:
        server.shutdown()
        server.server_close()
    assert [c.scene_id for c in found] == ["S2_2"]  # S2_0 is older than 7 days, S2_1 too cloudy
    assert searches[0]["collections"] == ["s2"] and searches[0]["intersects"]["type"] == "Polygon"
    assert Path(found[0].source).is_file()  # the item, kept where predict_scene can read it


def test_cli_add_run_series_and_bad_cron(repo: ModelRepository, tmp_path: Path) -> None:
    folder = tmp_path / "inbox"
    folder.mkdir()
    scene(folder / "s2_2024-07-01.tif", 100)
    (tmp_path / "aoi.geojson").write_text(
        json.dumps({"type": "Feature", "properties": {}, "geometry": aoi()})
    )
    env = {
        **os.environ,
        "EODEPLOY_MODEL_REPO": str(repo.root),
        "EODEPLOY_DATABASE_URL": f"sqlite:///{tmp_path / 'm.db'}",
        "EODEPLOY_MONITOR_DIR": str(tmp_path / "out"),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "eodeploy.cli.main", "monitor", *args], capture_output=True,
                              text=True, env=env, timeout=300, cwd=tmp_path)  # fmt: skip

    r = cli("add", "square", "-g", "aoi.geojson", "--crs", "EPSG:32633", "--model", "tiny", "--class", TARGET,
            "--folder", str(folder), "--threshold-ha", "5", "--mmu", "0.1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = cli("run")
    assert r.returncode == 0 and "stored 1 observation" in r.stdout, r.stdout + r.stderr
    r = cli("series", "square", "--json", "--plot", "series.png")
    assert r.returncode == 0 and (tmp_path / "series.png").stat().st_size > 5000
    r = cli(
        "add", "other", "-g", "aoi.geojson", "--model", "tiny", "--class", TARGET, "--folder", str(folder)
    )
    assert r.returncode == 2 and "longitude/latitude" in r.stderr and "Traceback" not in r.stderr
    r = cli(
        "add", "other", "-g", "missing.geojson", "--model", "tiny", "--class", TARGET, "--folder", str(folder)
    )
    assert r.returncode == 2 and "no such file" in r.stderr
    (tmp_path / "broken.geojson").write_text('{"type": "Polygon", ')
    r = cli(
        "add", "other", "-g", "broken.geojson", "--model", "tiny", "--class", TARGET, "--folder", str(folder)
    )
    assert r.returncode == 2 and "not valid GeoJSON" in r.stderr and "Traceback" not in r.stderr
    r = cli("add", "other", "-g", "aoi.geojson", "--crs", "EPSG:32633", "--model", "tiny", "--class", TARGET,
            "--folder", str(folder), "--alert-on", "sideways", "--min-observed", "2")  # fmt: skip
    assert r.returncode == 2 and "alert_on" in r.stderr and "min_observed" in r.stderr
    scene(folder / "s2_2024-07-06.tif", 100, seed=1)
    assert cli("update", "square", "--every", "0.0001").returncode == 0  # due again after 0.36 s
    time.sleep(0.5)
    r = cli("schedule", "--cron", "0 6 * * *", "--run-now", "--max-runs", "1")
    assert r.returncode == 0 and "stored 1 observation" in r.stdout, r.stdout + r.stderr
    r = cli("runs")
    assert r.returncode == 0 and "schedule" in r.stdout and "succeeded" in r.stdout
    r = cli("schedule", "--cron", "every day")
    assert r.returncode == 2 and "not a cron expression" in r.stderr
    r = cli("ack", "42")
    assert r.returncode == 2 and "no alert with id 42" in r.stderr


@pytest.mark.shared_data
def test_real_lahinch_time_series(tmp_path: Path) -> None:
    """The README demo: five real dates over Lahinch with the bundled model; the two cloudy ones skipped."""
    s2 = SHARED / "data" / "sentinel2"
    if not s2.is_dir():
        pytest.skip("../shared/data is not here")
    from eodeploy.monitor.areas import AreaSpec

    root = Path(__file__).resolve().parents[1]
    bundled = ModelRepository(root / "models")
    cfg = Settings(model_repo=bundled.root, database_url=f"sqlite:///{tmp_path / 'm.db'}",
                   monitor_dir=tmp_path / "out")  # fmt: skip
    db = Database.from_settings(cfg)
    geometry = json.loads((root / "src/eodeploy/monitor/examples/lahinch.geojson").read_text())
    with db.session() as s:
        add_area(s, bundled, AreaSpec(name="lahinch", geometry=geometry, target_class="Pasture",
                                      source={"type": "folder", "path": str(s2), "pattern": "lahinch_*.tif"}))  # fmt: skip
    report = run_monitoring(db, cfg)
    assert (report.stored, report.cloudy) == (3, 2)
    with db.session() as s:
        obs = time_series(s, "lahinch")["observations"]
    assert [o["datetime"][:10] for o in obs] == [
        "2017-09-18",
        "2017-09-21",
        "2017-09-26",
        "2017-10-08",
        "2017-10-18",
    ]
    assert [o["status"] for o in obs] == ["ok", "ok", "ok", "cloudy", "cloudy"]
    assert obs[-1]["observed_share"] < 0.05
    db.dispose()
