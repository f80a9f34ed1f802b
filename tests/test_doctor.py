"""``eodeploy doctor`` against real things: the bundled packages, broken copies of them, a real
server process, SQLite and PostgreSQL databases at old and current migrations, a real HTTP webhook
receiver (which must receive nothing), a real SMTP server and real COGs."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from typer.testing import CliRunner

import test_monitor
from conftest import require
from eodeploy.cli.main import app
from eodeploy.mlops import _doctor_alerts as alerts
from eodeploy.mlops import _doctor_infra as infra
from eodeploy.mlops.doctor import FAIL, OK, WARN, Check, model_checks, run_doctor, scaling_check
from eodeploy.monitor.db import Area, Database, Observation, migrate
from eodeploy.package import ModelRepository
from eodeploy.settings import Settings
from servers import free_port, live_server

db_url = test_monitor.db_url  # a fresh SQLite file / PostgreSQL database per test
BUNDLED = Path(__file__).resolve().parents[1] / "models"
runner = CliRunner()


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def doctor_cli(*args: str, tmp_path: Path, **env: str) -> Any:
    environ = {"EODEPLOY_MONITOR_DIR": str(tmp_path / "monitoring"), "COLUMNS": "250", **env}
    return runner.invoke(app, ["doctor", *args], env=environ, catch_exceptions=False)


# --- models ---------------------------------------------------------------------------------------
def test_bundled_repository_passes_the_model_checks(tmp_path: Path) -> None:
    checks = model_checks(Settings(), BUNDLED)
    named = by_name(checks)
    assert not [c for c in checks if c.status == FAIL], [c.line() for c in checks]
    for ref in ("eurosat-cnn v3", "eurosat-rgb v2"):  # the served (latest) versions
        for what in ("MLM item", "sha256", "accuracy", "reference stats", "input scaling"):
            assert named[f"{ref} {what}"].status == OK, named[f"{ref} {what}"].line()
    assert "93.7 %" in named["eurosat-cnn v3 accuracy"].finding
    assert named["eurosat-rgb optimised"].status == OK and "int8" in named["eurosat-rgb optimised"].finding
    # eurosat-cnn has no INT8/FP16 version and nothing has a TFLite/Triton export: warnings with the command
    assert named["eurosat-cnn optimised"].status == WARN
    assert named["eurosat-cnn optimised"].fix == (
        "eodeploy optimize eurosat-cnn:3 --int8 (writes a new version with its measured accuracy)"
    )
    assert named["eurosat-rgb exports"].status == WARN and "--format tflite" in (
        named["eurosat-rgb exports"].fix or ""
    )


def test_a_served_version_below_90_percent_fails(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(BUNDLED / "eurosat-cnn", repo / "eurosat-cnn")
    (repo / "eurosat-cnn" / "serving.json").write_text('{"version_policy": "specific:1"}')
    named = by_name(model_checks(Settings(), repo))
    acc = named["eurosat-cnn v1 accuracy"]
    assert acc.status == FAIL and "82.7 % on its test split (75 patches), not above 90.0 %" in acc.finding
    assert "eodeploy train --init-from eurosat-cnn:1" in (acc.fix or "")


def test_scaling_that_kept_the_baseline_offset_fails(tmp_path: Path) -> None:
    shutil.copytree(BUNDLED / "eurosat-cnn" / "3", tmp_path / "scaled" / "3")
    item_path = tmp_path / "scaled" / "3" / "item.json"
    item = json.loads(item_path.read_text())
    for s in item["properties"]["mlm:input"][0]["value_scaling"]:
        s["mean"] += 1000  # normalised as if every input still carried the +1000 of baseline 04.00
    item_path.write_text(json.dumps(item))
    check = scaling_check(ModelRepository(tmp_path).get("scaled", 3))
    assert check.status == FAIL
    assert (
        "z-score means sit +1000 from the training data's (the +1000 DN offset of processing baseline 04.00)"
        in check.finding
    )


def test_broken_packages_fail_with_the_fix_and_exit_2(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(BUNDLED / "eurosat-rgb" / "2", repo / "damaged" / "1")
    with open(repo / "damaged" / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")  # one byte more than was recorded
    shutil.copytree(BUNDLED / "eurosat-rgb" / "2", repo / "invalid" / "1")
    item = json.loads((repo / "invalid" / "1" / "item.json").read_text())
    item["properties"]["mlm:tasks"] = "classification"  # the schema wants an array
    (repo / "invalid" / "1" / "item.json").write_text(json.dumps(item))

    result = doctor_cli(
        "--repo",
        str(repo),
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
        "--results",
        str(tmp_path),
        tmp_path=tmp_path,
    )
    out = result.output
    assert result.exit_code == 2, out
    assert "✗ damaged v1 sha256: " in out and "does not match its recorded sha256" in out
    assert (
        "fix: restore model.onnx from a backup or re-import the model; then eodeploy models validate damaged:1"
        in out
    )
    assert "✗ invalid v1 MLM item: item.json fails the STAC MLM schema: properties/mlm:tasks" in out
    assert (
        f"fix: fix {repo / 'invalid' / '1' / 'item.json'} or re-create the package (eodeploy import); check with: eodeploy models validate invalid:1"
        in out
    )
    assert "✓ invalid v1 sha256" in out  # the other checks still run

    as_json = doctor_cli(
        "--repo",
        str(repo),
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
        "--results",
        str(tmp_path),
        "--json",
        tmp_path=tmp_path,
    )
    doc = json.loads(as_json.output)
    assert as_json.exit_code == doc["exit_code"] == 2
    failed = {c["name"] for c in doc["checks"] if c["status"] == "fail"}
    assert failed == {"damaged v1 sha256", "invalid v1 MLM item"}
    assert all(set(c) == {"group", "name", "status", "finding", "fix", "symbol"} for c in doc["checks"])


# --- a real server --------------------------------------------------------------------------------
def test_live_server_passes_the_server_checks_and_serves_get_doctor(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(BUNDLED / "eurosat-rgb", repo / "eurosat-rgb")
    key = "doctor-test-key-0123456789"
    with live_server(repo, tmp_path / "server.log", EODEPLOY_API_KEYS=json.dumps([key])) as server:
        settings = Settings(
            model_repo=repo,
            database_url=f"sqlite:///{tmp_path / 'monitor.db'}",
            monitor_dir=tmp_path / "monitoring",
            api_keys=[key],
        )
        report = run_doctor(settings, server=server.http, results_dir=tmp_path)
        server_checks = {c.name: c for c in report.checks if c.group == "server"}
        assert set(server_checks) == {"health", "metrics", "logging", "API docs", "dashboard", "API keys"}
        assert all(c.status == OK for c in server_checks.values()), [c.line() for c in server_checks.values()]
        assert "behind its login page" in server_checks["dashboard"].finding  # keys set: a login redirect
        assert "keys required" in server_checks["API keys"].finding
        named = by_name(report.checks)
        assert named["migrations"].status == OK  # the server migrated its database at start-up
        assert key not in json.dumps(report.to_dict())

        assert requests.get(f"{server.http}/doctor", timeout=10).status_code == 401
        r = requests.get(f"{server.http}/doctor", headers={"X-API-Key": key}, timeout=30)
        assert r.status_code == 200
        doc = r.json()
        api = {c["name"]: c for c in doc["checks"]}
        assert api["eurosat-rgb v2 sha256"]["status"] == "ok"
        assert (
            api["migrations"]["status"] == "ok" and doc["exit_code"] == 1
        )  # warnings: no backup, no load test
        assert str(tmp_path) not in r.text  # server folders are scrubbed from the API's answer

    report = run_doctor(settings, server=server.http, results_dir=tmp_path, timeout_s=0.5)  # stopped now
    down = [c for c in report.checks if c.group == "server"]
    assert down and all(c.status == FAIL and "does not answer" in c.finding for c in down)


# --- database -------------------------------------------------------------------------------------
def upgrade_to(url: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from eodeploy.monitor.db import MIGRATIONS, make_engine

    engine = make_engine(url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    engine.dispose()


def test_database_at_an_old_migration_fails_until_migrated(db_url: str, tmp_path: Path) -> None:
    upgrade_to(db_url, "0001")
    settings = Settings(database_url=db_url, monitor_dir=tmp_path / "monitoring")
    named = by_name(infra.database_checks(settings, db_url, 2.0))
    assert named["reachable"].status == OK
    mig = named["migrations"]
    assert mig.status == FAIL and "migrations not current: the database is at 0001" in mig.finding
    assert "each migrates to head under the migration lock" in (mig.fix or "")

    result = doctor_cli("--repo", str(BUNDLED), "--db", db_url, "--results", str(tmp_path), tmp_path=tmp_path)
    assert result.exit_code == 2 and "✗ migrations: migrations not current" in result.output

    from eodeploy.monitor.db import make_engine

    engine = make_engine(db_url)
    migrate(engine)
    engine.dispose()
    assert by_name(infra.database_checks(settings, db_url, 2.0))["migrations"].status == OK


def test_sqlite_backups_and_the_postgres_fix(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'eodeploy.db'}"
    Database(url).ensure()
    settings = Settings(database_url=url, monitor_dir=tmp_path)
    backup = by_name(infra.database_checks(settings, url, 2.0))["backup"]
    assert backup.status == WARN and f'sqlite3 {tmp_path / "eodeploy.db"} ".backup' in (backup.fix or "")
    copy = tmp_path / "eodeploy.db.bak"
    shutil.copy(tmp_path / "eodeploy.db", copy)
    assert by_name(infra.database_checks(settings, url, 2.0))["backup"].status == OK
    os.utime(copy, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    stale = by_name(infra.database_checks(settings, url, 2.0))["backup"]
    assert stale.status == WARN and "2.0 days old" in stale.finding
    elsewhere = tmp_path / "backups"
    elsewhere.mkdir()
    (elsewhere / "eodeploy-2026-11-23.db").write_bytes(copy.read_bytes())
    configured = settings.model_copy(update={"backup_dir": elsewhere})
    assert by_name(infra.database_checks(configured, url, 2.0))["backup"].status == OK

    pg = infra.backup_check(settings, "postgresql+psycopg://ops:pw@db.example.org:5433/eo", None)
    assert pg.status == WARN
    assert "pg_dump -Fc -h db.example.org -p 5433 -U ops -d eo -f eo-$(date +%F).dump" in (pg.fix or "")
    assert "pw" not in (pg.fix or "").replace("pg_", "")


# --- alerts: dry runs against real receivers -------------------------------------------------------
@pytest.fixture
def receiver() -> Iterator[tuple[str, list[str]]]:
    """A real HTTP server that records every request it gets (a dry run must send none)."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.end_headers()

        do_GET = do_POST = do_HEAD = do_OPTIONS = _any

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def add_area(url: str, name: str, webhook: str | None, emails: list[str] | None = None) -> int:
    db = Database(url)
    with db.session() as s:
        area = Area(
            name=name,
            geojson={"type": "Point", "coordinates": [0, 0]},
            wkb=b"",
            area_ha=1.0,
            model="eurosat-cnn",
            target_class="Forest",
            source={"type": "folder"},
            webhook_url=webhook,
            emails=emails or [],
        )
        s.add(area)
        s.flush()
        area_id = area.id
    db.dispose()
    return area_id


def test_webhook_dry_run_connects_and_sends_nothing(
    db_url: str, tmp_path: Path, receiver: tuple[str, list[str]]
) -> None:
    base, seen = receiver
    token = "T0KEN-abcdef-secret"
    add_area(db_url, "live", f"{base}/hooks/{token}")
    add_area(db_url, "closed", f"http://127.0.0.1:{free_port()}/hooks/{token}")
    add_area(db_url, "silent", None)
    settings = Settings(database_url=db_url, allowed_url_hosts=["127.0.0.1"], monitor_dir=tmp_path)
    report = run_doctor(settings, repo=BUNDLED, results_dir=tmp_path)
    lines = [c for c in report.checks if c.group == "alerts"]
    named = by_name(lines)
    assert named["configured"].status == WARN and "2 of 3 active areas" in named["configured"].finding
    assert "silent: silent" in named["configured"].finding
    port = base.rsplit(":", 1)[1]
    live = named[f"webhook http://127.0.0.1:{port}/…"]
    assert live.status == OK and "nothing sent" in live.finding
    closed = [c for c in lines if c.name.startswith("webhook") and c is not live]
    assert len(closed) == 1 and closed[0].status == FAIL and "ConnectionRefusedError" in closed[0].finding
    assert seen == []  # a dry run never makes a request, let alone POSTs an alert
    assert token not in json.dumps(report.to_dict())

    strict = settings.model_copy(update={"allowed_url_hosts": []})
    refused = alerts.webhook_dry_run(strict, f"{base}/hooks/{token}", 1.0)
    assert refused.status == FAIL and "loopback address" in refused.finding
    assert "EODEPLOY_ALLOWED_URL_HOSTS" in (refused.fix or "") and token not in refused.finding


def test_smtp_dry_run_against_a_real_smtp_server(tmp_path: Path) -> None:
    require("aiosmtpd")
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Inbox(Message):
        def handle_message(self, message: Any) -> None:
            received.append(message)

    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        password = "smtp-Pa55word-xyz"
        settings = Settings(
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            smtp_user="ops",
            smtp_password=password,
            database_url=f"sqlite:///{tmp_path / 'm.db'}",
        )
        check = alerts.smtp_dry_run(settings, 2.0)
        assert check.status == OK and "connect, EHLO, QUIT" in check.finding and received == []
        report = run_doctor(settings, repo=BUNDLED, results_dir=tmp_path)
        assert by_name(report.checks)[f"smtp 127.0.0.1:{smtp.port}"].status == OK
        assert password not in json.dumps(report.to_dict())
    finally:
        smtp.stop()
    closed = alerts.smtp_dry_run(settings.model_copy(update={"smtp_port": free_port()}), 1.0)
    assert closed.status == FAIL and "ConnectionRefusedError" in closed.finding


def test_e_mail_alerts_without_an_smtp_server_fail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    add_area(url, "mailed", None, ["ops@example.org"])
    checks = by_name(alerts.alert_checks(Settings(database_url=url), url, 1.0, lambda s: s, dry_run=False))
    assert checks["configured"].status == OK
    assert checks["smtp"].status == FAIL and "EODEPLOY_SMTP_HOST" in (checks["smtp"].fix or "")


def test_secrets_never_in_the_output(tmp_path: Path, receiver: tuple[str, list[str]]) -> None:
    from sqlalchemy import create_engine, text

    base, _ = receiver
    name = "eodeploy_doc_" + os.urandom(4).hex()
    admin = create_engine(test_monitor.PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    try:
        # The test server trusts local connections, so the password is accepted and ignored.
        password = "Db-Pa55w0rd-987"
        url = test_monitor.PG_URL.replace("postgres@", f"postgres:{password}@").rsplit("/", 1)[0] + f"/{name}"
        token = "xoxb-hook-secret-4242"
        add_area(url, "aoi", f"{base}/services/{token}")
        env = {"EODEPLOY_ALLOWED_URL_HOSTS": '["127.0.0.1"]'}
        for fmt in ([], ["--json"]):
            result = doctor_cli(
                "--repo",
                str(BUNDLED),
                "--db",
                url,
                "--results",
                str(tmp_path),
                *fmt,
                tmp_path=tmp_path,
                **env,
            )
            assert "postgresql+psycopg://postgres:***@" in result.output
            assert password not in result.output and token not in result.output
            assert "nothing sent" in result.output
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


# --- load tests and maps --------------------------------------------------------------------------
def test_load_test_results(tmp_path: Path) -> None:
    assert infra.load_test_checks(tmp_path, 30)[0].status == WARN
    result = tmp_path / "serving.json"
    result.write_text('{"rows": []}')
    assert infra.load_test_checks(tmp_path, 30)[0].status == OK
    os.utime(result, (time.time() - 40 * 86400, time.time() - 40 * 86400))
    old = infra.load_test_checks(tmp_path, 30)[0]
    assert old.status == WARN and "40 days old" in old.finding and "benchmarks/serving.py" in (old.fix or "")


def class_cog(folder: Path, resampling: str, size: int = 1024) -> None:
    import rasterio
    from rasterio.transform import from_origin

    from eodeploy.geo.outputs import CLASSES_TIF, to_cog

    folder.mkdir(parents=True)
    work = folder / "work.tif"
    classes = np.random.default_rng(0).integers(0, 3, (size, size), dtype=np.uint8)
    with rasterio.open(
        work,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=from_origin(500000, 5000000, 10, 10),
    ) as dst:
        dst.write(classes, 1)
    to_cog(work, folder / CLASSES_TIF, resampling)


def test_latest_observation_cog_overviews_use_mode(db_url: str, tmp_path: Path) -> None:
    from datetime import datetime

    assert infra.cog_checks(db_url, 2.0) == []  # no database yet, nothing to say
    area_id = add_area(db_url, "aoi", None)
    db = Database(db_url)
    for day, resampling in ((1, "mode"), (2, "average")):
        class_cog(tmp_path / f"obs{day}", resampling)
        with db.session() as s:
            s.add(
                Observation(
                    area_id=area_id,
                    scene_id=f"s{day}",
                    scene_datetime=datetime(2024, 3, day),
                    model_name="m",
                    model_version=1,
                    status="ok",
                    target_ha=1,
                    observed_ha=1,
                    observed_share=1,
                    outputs=str(tmp_path / f"obs{day}"),
                )
            )
    db.dispose()
    (check,) = infra.cog_checks(db_url, 2.0)
    assert check.status == FAIL and "overviews use AVERAGE" in check.finding  # the latest is day 2
    shutil.rmtree(tmp_path / "obs2")
    class_cog(tmp_path / "obs2", "mode")
    (check,) = infra.cog_checks(db_url, 2.0)
    assert check.status == OK and "overviews built with MODE" in check.finding
    # A map too small for overviews (make run's Tawi-Tawi clip) is fine: it once failed the check.
    shutil.rmtree(tmp_path / "obs2")
    class_cog(tmp_path / "obs2", "mode", size=200)
    (check,) = infra.cog_checks(db_url, 2.0)
    assert check.status == OK and "none needed at this size" in check.finding, check.finding
