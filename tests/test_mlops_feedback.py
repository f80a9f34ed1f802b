"""Feedback, live accuracy and retraining triggers against both databases (a SQLite file and the
real PostgreSQL): feedback by request id through the real app, patch bounds, Wilson figures,
alert verdicts, labelled points on a real observation's map, triggers recorded once and sent
through the outbox to a real webhook and SMTP server, and ``eodeploy retrain`` on generated data."""

from __future__ import annotations

import io
import json
import shutil
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, text, update
from typer.testing import CliRunner

import test_monitor
from conftest import CLASSES, make_patch, reference_proba, require
from eodeploy.mlops.feedback import (
    Accuracy,
    Feedback,
    FeedbackPatch,
    RecentPredictions,
    accuracy,
    accuracy_by_version,
    load_patch,
    prune_patches,
    record_feedback,
    wilson_interval,
)
from eodeploy.monitor.db import Database, Observation, utcnow
from eodeploy.package import ModelRepository
from test_monitor import _Receiver, scene, settings, spec
from test_scene import LEFT, RIGHT

TARGET, OTHER = CLASSES[LEFT], CLASSES[RIGHT]
db_url = test_monitor.db_url  # a fresh SQLite file / PostgreSQL database per test
webhook = test_monitor.webhook  # a real webhook receiver on loopback


# --- Wilson interval --------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "half_pt"), [(50, 10.4), (100, 7.4), (200, 5.2), (400, 3.7), (1000, 2.3)])
def test_wilson_interval_at_82_7_percent(n: int, half_pt: float) -> None:
    low, high = wilson_interval(0.827 * n, n)
    assert round((high - low) / 2 * 100, 1) == half_pt
    assert low < 0.827 < high
    # Not the normal approximation: the Wilson centre is pulled towards 1/2.
    assert (low + high) / 2 < 0.827


def test_accuracy_decidable_only_from_the_minimum() -> None:
    assert not Accuracy.of(160, 199).decidable and Accuracy.of(160, 200).decidable
    assert Accuracy.of(5, 10, min_labels=10).decidable
    none = Accuracy.of(0, 0)
    assert (none.rate, none.low, none.high, none.decidable) == (None, 0.0, 1.0, False)
    assert "too few labels" in Accuracy.of(41, 50).text() and "±10." in Accuracy.of(41, 50).text()
    low, high = wilson_interval(10, 10)  # all right: the interval still says how sure
    assert high == pytest.approx(1.0) and 0.69 < low < 0.73


# --- the in-memory store of recent predictions --------------------------------------------------


def _served(name: str = "m", version: int = 1) -> Any:
    from conftest import linear_spec

    return SimpleNamespace(name=name, version=version, spec=linear_spec())


def test_recent_predictions_bounded_by_count_bytes_and_age() -> None:
    raw = np.zeros((1, 13, 64, 64), np.uint16)
    proba = np.full((1, 3), 1 / 3, np.float32)
    store = RecentPredictions(max_requests=3, max_bytes=10**9, ttl_s=3600)
    for i in range(5):
        store.remember(_served(), raw, proba, request_id=f"r{i}")
    assert len(store) == 3 and store.get("r0") is None and store.get("r4") is not None
    store.get("r2")  # read, not touched: the order is the order of answers
    one = raw.nbytes + proba.nbytes + 512
    small = RecentPredictions(max_requests=100, max_bytes=2 * one, ttl_s=3600)
    for i in range(4):
        small.remember(_served(), raw, proba, request_id=f"r{i}")
    assert [small.get(f"r{i}") is not None for i in range(4)] == [False, False, True, True]
    small.remember(_served(), np.zeros((4, 13, 64, 64), np.uint16), proba, request_id="big")
    assert small.get("big") is None  # larger than the whole store: not kept, nothing evicted
    assert small.get("r3") is not None
    expired = RecentPredictions(max_requests=10, max_bytes=10**9, ttl_s=-1)
    expired.remember(_served(), raw, proba, request_id="old")
    assert expired.get("old") is None and len(expired) == 0
    store.remember(_served(), raw, proba)  # outside a request (no id): nothing remembered
    assert store.get("-") is None


# --- POST /feedback through the real app -------------------------------------------------------


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _upload(client: Any, patches: np.ndarray, rid: str | None = None) -> Any:
    files = [("files", (f"p{i}.npy", _npy(p), "application/octet-stream")) for i, p in enumerate(patches)]
    return client.post("/predict?model=tiny", files=files, headers={"X-Request-ID": rid} if rid else {})


def test_feedback_by_request_id_through_the_app(
    repo: ModelRepository, raw_patches: np.ndarray, db_url: str, tmp_path: Path, client_for: Any
) -> None:
    client = client_for(repo, database_url=db_url, api_keys=["k"], monitor_dir=tmp_path / "mon",
                        db_connect_attempts=1)  # fmt: skip
    key = {"X-API-Key": "k"}
    r = _upload(client, raw_patches)
    assert r.status_code == 200, r.text
    rid = r.headers["x-request-id"]
    predicted = [CLASSES[i] for i in reference_proba(raw_patches).argmax(1)]
    assert [p["class"] for p in r.json()["predictions"]] == predicted

    body = {"request_id": rid, "label": "Forest", "index": 0}
    assert client.post("/feedback", json=body).status_code == 401  # an admin write
    r = client.post("/feedback", json={**body, "request_id": "nope"}, headers=key)
    assert r.status_code == 404 and "no recent prediction with request id 'nope'" in r.json()["error"]
    r = client.post("/feedback", json={**body, "label": "Glacier"}, headers=key)
    assert r.status_code == 400
    assert (
        "'Glacier' is not a class of tiny v1" in r.json()["error"]
        and "Forest, River, SeaLake" in r.json()["error"]
    )
    r = client.post("/feedback", json={"request_id": rid, "label": "Forest"}, headers=key)
    assert r.status_code == 400 and "carried 4 patches" in r.json()["error"]
    r = client.post("/feedback", json={**body, "index": 4}, headers=key)
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    r = client.post("/feedback", json={**body, "index": -1}, headers=key)
    assert r.status_code == 400

    r = client.post("/feedback", json={**body, "by": "field-team"}, headers=key)
    assert r.status_code == 201, r.text
    row = r.json()
    assert (row["model"], row["version"], row["predicted"], row["label"]) == (
        "tiny",
        1,
        predicted[0],
        "Forest",
    )
    assert row["correct"] is (predicted[0] == "Forest") and row["patch_stored"] is True
    # Labelled again: replaced, not counted twice.
    assert client.post("/feedback", json={**body, "label": "River"}, headers=key).status_code == 201
    for i in (1, 2):
        assert (
            client.post("/feedback", json={**body, "index": i, "label": CLASSES[i]}, headers=key).status_code
            == 201
        )
    # A client's own request id works as well; one patch needs no index.
    r = _upload(client, raw_patches[:1], rid="client-req-7")
    assert r.headers["x-request-id"] == "client-req-7"
    assert client.post("/feedback", json={"request_id": "client-req-7", "label": "SeaLake"},
                       headers=key).status_code == 201  # fmt: skip

    db = Database(db_url)
    with db.session() as s:
        rows = s.scalars(select(Feedback).order_by(Feedback.id)).all()
        assert [(f.patch_index, f.label) for f in rows] == [
            (0, "River"),
            (1, "River"),
            (2, "SeaLake"),
            (0, "SeaLake"),
        ]
        assert [f.request_id for f in rows][-1] == "client-req-7"
        patch = load_patch(s.get(FeedbackPatch, rows[0].id).data)  # type: ignore[union-attr]
        np.testing.assert_array_equal(patch, raw_patches[0])  # the raw patch, as sent, for training
        expected = sum(
            f.label == p for f, p in zip(rows, [predicted[0], predicted[1], predicted[2], predicted[0]])
        )
    db.dispose()

    r = client.get("/feedback/accuracy?model=tiny", headers=key)
    assert r.status_code == 200
    (v1,) = r.json()["versions"]
    assert (v1["version"], v1["n"], v1["correct"], v1["decidable"]) == (1, 4, expected, False)
    assert v1["low"] < (v1["rate"] or 0) + 1e-9 and "interval" in v1["text"]
    assert client.get("/feedback/accuracy?model=tiny&last=0", headers=key).status_code == 400


def test_feedback_off_keeps_nothing(
    repo: ModelRepository, raw_patches: np.ndarray, db_url: str, client_for: Any
) -> None:
    client = client_for(repo, database_url=db_url, feedback=False, db_connect_attempts=1)
    rid = _upload(client, raw_patches).headers["x-request-id"]
    assert client.app.state.inference.recent is None
    r = client.post("/feedback", json={"request_id": rid, "label": "Forest", "index": 0})
    assert r.status_code == 404 and "feedback is off" in r.json()["error"]


# --- patch bounds and retention -----------------------------------------------------------------


def _feedback_settings(tmp_path: Path, db_url: str, **kw: Any) -> Any:
    from eodeploy.settings import Settings

    return Settings(database_url=db_url, model_repo=tmp_path / "models", db_connect_attempts=1, **kw)


def test_patch_store_bounded_by_count_bytes_and_retention(tmp_path: Path, db_url: str) -> None:
    rng = np.random.default_rng(3)
    patches = np.stack([make_patch(c, rng) for c in CLASSES * 2])
    one = len(_npy(patches[0]))
    cfg = _feedback_settings(tmp_path, db_url, feedback_max_patches=3)
    recent = RecentPredictions.from_settings(cfg)
    for i, p in enumerate(patches):
        recent.remember(
            _served("tiny"), p[None], reference_proba(p[None]).astype(np.float32), request_id=f"q{i}"
        )
    db = Database(db_url)
    for i in range(6):
        with db.session() as s:
            record_feedback(s, recent, cfg, f"q{i}", CLASSES[i % 3])
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Feedback)) == 6  # labels are all kept
        kept = s.scalars(select(FeedbackPatch.feedback_id).order_by(FeedbackPatch.feedback_id)).all()
        ids = s.scalars(select(Feedback.id).order_by(Feedback.id)).all()
        assert kept == ids[-3:]  # the newest three patches
        by_bytes = cfg.model_copy(
            update={"feedback_max_patches": 100, "feedback_max_patch_mib": 2.5 * one / 2**20}
        )
        assert prune_patches(s, by_bytes) == 1
        assert (
            s.scalars(select(FeedbackPatch.feedback_id).order_by(FeedbackPatch.feedback_id)).all() == ids[-2:]
        )
        s.execute(update(FeedbackPatch).where(FeedbackPatch.feedback_id == ids[-2])
                  .values(created_at=utcnow() - timedelta(days=400)))  # fmt: skip
    with db.session() as s:
        assert prune_patches(s, by_bytes) == 1  # past the 365-day retention
        assert s.scalars(select(FeedbackPatch.feedback_id)).all() == [ids[-1]]
    db.dispose()


# --- accuracy per version -----------------------------------------------------------------------


def _labels(
    s: Any, model: str, version: int, correct: int, n: int, start: int = 0, age_days: float = 0
) -> None:
    at = utcnow() - timedelta(days=age_days)
    for i in range(n):
        ok = i < correct
        s.add(Feedback(key=f"t:{model}:{version}:{start + i}", source="request", model_name=model,
                       model_version=version, predicted="Forest", label="Forest" if ok else "River",
                       correct=ok, holdout=False, created_at=at + timedelta(seconds=i)))  # fmt: skip


def test_accuracy_per_version_and_window(tmp_path: Path, db_url: str) -> None:
    db = Database(db_url)
    with db.session() as s:
        _labels(s, "m", 1, 165, 200, age_days=10)  # 82.5 % on 200 labels, ten days ago
        _labels(s, "m", 2, 40, 50)  # 80 % on 50 labels, now
        _labels(s, "other", 1, 0, 30)
    with db.session() as s:
        a1 = accuracy(s, "m", 1)
        assert (a1.n, a1.correct, a1.rate, a1.decidable) == (200, 165, 0.825, True)
        assert (
            a1.low == pytest.approx(wilson_interval(165, 200)[0]) and round((a1.high - a1.low) * 50, 1) == 5.3
        )
        a2 = accuracy(s, "m", 2)
        assert (a2.n, a2.decidable) == (50, False) and 0.10 < (a2.high - a2.low) / 2 < 0.12
        assert (
            accuracy(s, "m", 1, 35).n == 35 and accuracy(s, "m", 1, 35).correct == 0
        )  # the latest 35: wrong ones
        assert (
            accuracy(s, "m", 1, timedelta(days=1)).n == 0 and accuracy(s, "m", 2, timedelta(days=1)).n == 50
        )
        assert accuracy(s, "m", 3).n == 0
        assert sorted(accuracy_by_version(s, "m")) == [1, 2]
        assert accuracy(s, "m", 1, min_labels=201).decidable is False
    db.dispose()


# --- monitoring: alert verdicts and labelled points ---------------------------------------------


def _point(col: float, row: float) -> list[float]:
    from rasterio.warp import transform

    from test_monitor import RES, X0, Y0

    xs, ys = transform("EPSG:32633", "EPSG:4326", [X0 + (col + 0.5) * RES], [Y0 - (row + 0.5) * RES])
    return [xs[0], ys[0]]


def _fc(*points: tuple[list[float], str]) -> dict[str, Any]:
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": c}, "properties": {"class": k}}
        for c, k in points
    ]}  # fmt: skip


def test_alert_verdict_and_observation_labels(repo: ModelRepository, tmp_path: Path, db_url: str) -> None:
    from fastapi.testclient import TestClient

    from eodeploy.monitor.areas import add_area
    from eodeploy.monitor.run import run_monitoring
    from eodeploy.web.app import create_app

    folder = tmp_path / "inbox"
    folder.mkdir()
    scene(folder / "s2_2024-05-01.tif", 100)
    scene(folder / "s2_2024-05-06.tif", 70, seed=1)
    cfg = settings(tmp_path, repo, db_url, api_keys=["k"], grpc_port=0, poll_interval_s=0)
    db = Database.from_settings(cfg)
    with db.session() as s:
        add_area(s, repo, spec(folder))
    assert run_monitoring(db, cfg).alerts == 1
    key = {"X-API-Key": "k"}
    with TestClient(create_app(cfg, grpc=False)) as client:
        (alert,) = client.get("/monitor/alerts", headers=key).json()
        url = f"/monitor/alerts/{alert['id']}/verdict"
        assert client.post(url, json={"verdict": "false_positive"}).status_code == 401
        r = client.post(url, json={"verdict": "maybe"}, headers=key)
        assert r.status_code == 400 and "true_positive, false_positive" in r.json()["error"]
        assert (
            client.post(
                "/monitor/alerts/999/verdict", json={"verdict": "true_positive"}, headers=key
            ).status_code
            == 404
        )
        r = client.post(
            url, json={"verdict": "false_positive", "by": "ana", "note": "cloud shadow"}, headers=key
        )
        assert r.status_code == 200, r.text
        assert r.json()["verdict"] == "false_positive" and r.json()["area_precision"]["n"] == 1
        assert r.json()["area_precision"]["correct"] == 0
        r = client.post(url, json={"verdict": "true_positive", "by": "ana"}, headers=key)  # changed mind
        assert r.json()["area_precision"]["correct"] == 1
        (acked,) = client.get("/monitor/alerts?acknowledged=true", headers=key).json()
        assert acked["acknowledged_by"] == "ana"

        obs = client.get("/monitor/areas/square/series", headers=key).json()["observations"]
        oid = obs[-1]["id"]  # 70 columns of the target class on the left, SeaLake-like on the right
        path = f"/monitor/observations/{oid}/labels"
        pts = _fc((_point(20, 50), TARGET), (_point(150, 60), TARGET), (_point(160, 100), OTHER))
        r = client.post(path, json=pts, headers=key)
        assert r.status_code == 201, r.text
        out = r.json()
        assert [(p["predicted"], p["correct"]) for p in out["points"]] == [
            (TARGET, True),
            (OTHER, False),
            (OTHER, True),
        ]
        assert (out["accuracy"]["n"], out["accuracy"]["correct"], out["accuracy"]["decidable"]) == (
            3,
            2,
            False,
        )
        r = client.post(path, json=_fc((_point(20, 50), TARGET), (_point(900, 50), TARGET)), headers=key)
        assert (
            r.status_code == 400 and "point 1" in r.json()["error"] and "outside the map" in r.json()["error"]
        )
        r = client.post(path, json=_fc((_point(20, 50), "Glacier")), headers=key)
        assert r.status_code == 400 and "Forest, River, SeaLake" in r.json()["error"]
        bad = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"class": TARGET},
               "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}}]}  # fmt: skip
        r = client.post(path, json=bad, headers=key)
        assert r.status_code == 400 and "Point" in r.json()["error"]
        assert client.post("/monitor/observations/99999/labels", json=pts, headers=key).status_code == 404
        fb = client.get("/feedback/accuracy?model=tiny", headers=key).json()["versions"]
        assert fb[0]["n"] == 3  # the points count for the version that drew the map
    db.dispose()


# --- retraining triggers ------------------------------------------------------------------------


def test_each_trigger_fires_once_and_alerts_through_the_outbox(
    repo: ModelRepository, tmp_path: Path, db_url: str, webhook: tuple[str, type[_Receiver]]
) -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    from eodeploy.cli.main import app
    from eodeploy.mlops.triggers import (
        RetrainTrigger,
        TriggerDelivery,
        check_triggers,
        drift_flags,
        send_trigger_alerts,
    )
    from eodeploy.monitor.areas import add_area
    from servers import free_port

    require("aiosmtpd")

    class Inbox(Message):
        messages: list[Any] = []

        def handle_message(self, message: Any) -> None:
            type(self).messages.append(message)

    smtp = Controller(Inbox(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    url, receiver = webhook
    try:
        pkg = repo.get("tiny")
        pkg.update_properties({"eodeploy:metrics": {"split": "test", "n": 500, "accuracy": 0.9}})
        cfg = settings(tmp_path, repo, db_url, retrain_every_days={"*": 30}, feedback_min_labels=200,
                       retrain_feedback_labels=300, trigger_webhook_url=url, trigger_emails=["ml@example.org"],
                       smtp_host="127.0.0.1", smtp_port=smtp.port)  # fmt: skip
        db = Database.from_settings(cfg)
        folder = tmp_path / "inbox"
        folder.mkdir()
        with db.session() as s:
            area = add_area(s, repo, spec(folder))[0]
            area_id = area.id
            for i in range(6):
                s.add(Observation(area_id=area_id, scene_id=f"S{i}", scene_datetime=utcnow() - timedelta(days=60 - i),
                                  model_name="tiny", model_version=1, status="ok", target_ha=1.0, observed_ha=2.0,
                                  observed_share=1.0))  # fmt: skip
            _labels(s, "tiny", 1, 150, 199)  # 75 % but one label short of deciding
        with db.session() as s:
            assert drift_flags(s, area_id) == []  # no drift verdicts yet: no drift trigger
        assert check_triggers(db, repo, cfg) == []  # a new version, too few labels, no drift
        r = CliRunner().invoke(app, ["triggers", "list", "--db", db_url])
        assert r.exit_code == 0 and "no retraining triggers recorded yet" in r.output, r.output
        from eodeploy.mlops.drift import ObservationDrift

        with db.session() as s:  # drift verdicts as the drift monitor stores them (oldest first)
            ids = s.scalars(text("SELECT id FROM observations ORDER BY scene_datetime")).all()
            cause = {"causes": ["less 1000 DN the scene matches the training data"]}
            for oid, flagged in zip(ids, [True, False, True, True, False, True]):  # newest last
                s.add(ObservationDrift(observation_id=oid, area_id=area_id, clear_pixels=1000,
                                       median_shift=1.3 if flagged else 0.2, flagged=flagged,
                                       reference=cause if oid == ids[-1] else {}))  # fmt: skip
        with db.session() as s:
            assert drift_flags(s, area_id) == [True, False, True, True, False]  # newest first, 3 of 5
            assert drift_flags(s, area_id, last=2) == [True, False]
            _labels(s, "tiny", 1, 1, 1, start=199)  # the 200th label: 151/200 = 75.5 %, bound ~69 % < 85 %
            _labels(s, "tiny", 1, 100, 100, start=200)  # 300 labels since v1 was written
        later = utcnow() + timedelta(days=31)
        new = check_triggers(db, repo, cfg, now=later)
        assert sorted(t["kind"] for t in new) == ["accuracy", "drift", "feedback", "scheduled"]
        by_kind = {t["kind"]: t for t in new}
        assert by_kind["accuracy"]["figures"]["live"]["n"] == 300 and by_kind["accuracy"]["figures"][
            "floor"
        ] == pytest.approx(0.85)
        assert (
            by_kind["drift"]["key"] == "drift:square:tiny:v1"
            and by_kind["drift"]["figures"]["flags"].count(True) == 3
        )
        # The cause the reference check named travels with the trigger: fix the inputs, not the model.
        assert by_kind["drift"]["figures"]["causes"] == cause["causes"]
        assert "cause named: less 1000 DN" in by_kind["drift"]["message"]
        assert check_triggers(db, repo, cfg, now=later) == []  # each recorded once
        r = CliRunner().invoke(
            app, ["triggers", "check", "--db", db_url, "--repo", str(repo.root), "--no-send"]
        )
        assert r.exit_code == 0 and "0 new trigger(s)" in r.output, r.output

        assert send_trigger_alerts(db, cfg) == {"sent": 8, "failed": 0}  # 4 triggers x (webhook, e-mail)
        assert send_trigger_alerts(db, cfg) == {"sent": 0, "failed": 0}
        keys = sorted(m["key"] for m in receiver.received)
        with db.session() as s:
            tids = s.scalars(select(RetrainTrigger.id).order_by(RetrainTrigger.id)).all()
            assert {d.status for d in s.scalars(select(TriggerDelivery))} == {"sent"}
        assert keys == sorted(f"eodeploy-trigger-{i}" for i in tids)
        assert {m["body"]["kind"] for m in receiver.received} == {
            "scheduled",
            "accuracy",
            "drift",
            "feedback",
        }
        assert all(m["body"]["command"] == "eodeploy retrain tiny" for m in receiver.received)
        assert sorted(m["Subject"] for m in Inbox.messages) == sorted(
            f"[eodeploy] retrain tiny: {k}" for k in ("scheduled", "accuracy", "drift", "feedback")
        )
        r = CliRunner().invoke(app, ["triggers", "list", "--db", db_url])
        assert r.exit_code == 0 and "accuracy" in r.output and "drift" in r.output
        db.dispose()
    finally:
        smtp.stop()


def test_accuracy_trigger_needs_the_minimum_of_labels(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    from eodeploy.mlops.triggers import check_triggers

    repo.get("tiny").update_properties({"eodeploy:metrics": {"split": "test", "n": 500, "accuracy": 0.9}})
    cfg = settings(tmp_path, repo, db_url, feedback_min_labels=250)
    db = Database.from_settings(cfg)
    with db.session() as s:
        _labels(s, "tiny", 1, 100, 200)  # 50 %, far below, but 200 < 250 labels
    assert check_triggers(db, repo, cfg) == []
    with db.session() as s:
        _labels(s, "tiny", 1, 50, 50, start=200)
    assert [t["kind"] for t in check_triggers(db, repo, cfg)] == ["accuracy"]
    db.dispose()


# --- eodeploy retrain ---------------------------------------------------------------------------


@pytest.mark.slow
def test_retrain_on_training_data_plus_feedback(eurosat_dir: Path, tmp_path: Path, db_url: str) -> None:
    require("torch")
    from eodeploy.cli.main import app
    from eodeploy.data import load_patch_folder, stratified_split
    from eodeploy.mlops.triggers import RetrainTrigger

    runner = CliRunner()
    repo_dir = tmp_path / "models"
    r = runner.invoke(app, ["models", "accuracy", "tiny-cnn", "--db", db_url])
    assert r.exit_code == 0 and "no feedback" in r.output
    r = runner.invoke(app, ["train", str(eurosat_dir), "--name", "tiny-cnn", "--epochs", "2", "--patience", "2",
                            "--no-tta", "--repo", str(repo_dir)])  # fmt: skip
    assert r.exit_code == 0, r.output
    v1 = ModelRepository(repo_dir).get("tiny-cnn")
    cfg = _feedback_settings(tmp_path, db_url, feedback_holdout=0.5)
    recent = RecentPredictions.from_settings(cfg)
    rng = np.random.default_rng(11)
    served = SimpleNamespace(name="tiny-cnn", version=1, spec=v1.spec)
    db = Database(db_url)
    for i in range(12):
        cls = CLASSES[i % 3]
        p = make_patch(cls, rng)[None]
        recent.remember(served, p, np.full((1, 3), 1 / 3, np.float32), request_id=f"f{i}")
        with db.session() as s:
            record_feedback(s, recent, cfg, f"f{i}", cls)
    with db.session() as s:
        held = s.scalar(select(func.count()).select_from(Feedback).where(Feedback.holdout.is_(True)))
        s.add(RetrainTrigger(key="feedback:tiny-cnn:v1", kind="feedback", model_name="tiny-cnn", model_version=1,
                             message="m", payload={}))  # fmt: skip
    assert 0 < held < 12

    r = runner.invoke(app, ["retrain", "tiny-cnn", "--data", str(eurosat_dir), "--db", db_url, "--repo", str(repo_dir)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert f"{12 - held} feedback patches trained on, {held} held back" in r.output
    assert "held-back feedback, v1:" in r.output and "held-back feedback, v2:" in r.output
    v2 = ModelRepository(repo_dir).get("tiny-cnn")
    assert v2.version == 2
    props = v2.properties
    expected = stratified_split(load_patch_folder(eurosat_dir), seed=0)
    assert props["eodeploy:metrics"]["n"] == len(expected.test)  # scored on the original test split
    assert props["eodeploy:evaluations"]["feedback-holdout"]["n"] == held
    assert props["eodeploy:retraining"]["source_version"] == 1
    assert props["eodeploy:retraining"]["feedback_train"] == 12 - held
    assert props["eodeploy:derived_from"] == {"name": "tiny-cnn", "version": 1}
    split = json.loads((v2.path / "split.json").read_text())
    assert split["test"] == expected.test and split["val"] == expected.val
    assert sum(f.startswith("feedback/") for f in split["train"]) == 12 - held
    assert props["eodeploy:training"]["split"]["train"] == len(expected.train) + 12 - held
    with db.session() as s:
        assert s.scalar(select(RetrainTrigger.retrained_version)) == 2
    # A model with no such name: said plainly.
    r = runner.invoke(
        app, ["retrain", "nope", "--data", str(eurosat_dir), "--db", db_url, "--repo", str(repo_dir)]
    )
    assert r.exit_code == 2 and "no model named 'nope'" in r.output
    # A fine-tuned package's recipe includes the network it started from (--init-from).
    r = runner.invoke(app, ["train", str(eurosat_dir), "--name", "tiny-ft", "--init-from", "tiny-cnn:1", "--epochs", "1",
                            "--patience", "1", "--no-tta", "--repo", str(repo_dir)])  # fmt: skip
    assert r.exit_code == 0, r.output
    common = ["--data", str(eurosat_dir), "--db", db_url, "--repo", str(repo_dir), "--epochs", "1"]
    r = runner.invoke(app, ["retrain", "tiny-ft", *common])
    assert r.exit_code == 0, r.output
    ft2 = ModelRepository(repo_dir).get("tiny-ft")
    assert ft2.version == 2 and ft2.properties["mlm:pretrained_source"] == "tiny-cnn v1 (eodeploy package)"
    # ... and when that network is gone, retraining says so instead of silently starting from scratch.
    shutil.rmtree(repo_dir / "tiny-cnn" / "1")
    r = runner.invoke(app, ["retrain", "tiny-ft", *common])
    assert r.exit_code == 2 and "fine-tuned from tiny-cnn v1, which is not in the repository" in r.output, (
        r.output
    )
    assert ModelRepository(repo_dir).versions("tiny-ft") == [1, 2]  # nothing written
    db.dispose()
