"""The dashboard over HTTP (its pages and data in a real browser: test_dashboard_browser.py): a
database filled by a real monitoring run, tiles by observation id only, exports equal to the
chart's data, keys on every page and read, secrets masked, bad input as clear 4xx."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import wait_ready
from dashboard_demo import ROOT, S2, SECRET, build_demo

pytestmark = pytest.mark.skipif(not S2.is_dir(), reason="../shared/data is not here")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_demo(tmp_path_factory.mktemp("dashboard"))


def _client(**settings: Any) -> Any:
    from fastapi.testclient import TestClient

    from eodeploy.settings import Settings
    from eodeploy.web.app import create_app

    cfg = Settings(**{"grpc_port": 0, "poll_interval_s": 0, "intra_op_threads": 1, **settings})
    return TestClient(create_app(cfg, grpc=False), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(demo: dict[str, Any]) -> Iterator[Any]:
    with _client(**demo, version_policy="all") as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def keyed(demo: dict[str, Any]) -> Iterator[Any]:
    with _client(**demo, api_keys=["s3cret-key"]) as c:
        wait_ready(c)
        yield c


def _observations(demo: dict[str, Any]) -> list[dict[str, Any]]:
    from eodeploy.monitor.db import Database
    from eodeploy.monitor.report import time_series
    from eodeploy.settings import Settings

    db = Database.from_settings(Settings(**demo))
    try:
        with db.session() as s:
            return time_series(s, "lahinch")["observations"]  # type: ignore[no-any-return]
    finally:
        db.dispose()


def test_monitor_core_imports_without_fastapi() -> None:
    """The monitoring core runs in jobs (cron, CronJob) without the web stack."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('fastapi', 'starlette', 'uvicorn', 'jinja2'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import pkgutil, importlib, eodeploy.monitor as m\n"
        "for info in pkgutil.iter_modules(m.__path__):\n"
        "    importlib.import_module('eodeploy.monitor.' + info.name)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_every_page_renders_on_the_demo_database(client: Any) -> None:
    for page in ("areas", "series", "alerts", "models", "try"):
        r = client.get(f"/dashboard/{page}", headers={"accept": "text/html"})
        assert r.status_code == 200, (page, r.text[:500])
        assert "<main" in r.text and SECRET not in r.text and "ana.reyes@" not in r.text
    assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard"
    # Uptime checkers and `curl -I` ask with HEAD (it was a 405).
    assert client.head("/dashboard", follow_redirects=False).status_code == 303
    assert all(client.head(f"/dashboard/{page}").status_code == 200 for page in ("areas", "series", "try"))
    areas = client.get("/dashboard/api/areas").json()
    assert [f["properties"]["name"] for f in areas["features"]] == ["lahinch", "palawan", "tawi-tawi"]
    lahinch, palawan, tawi = areas["features"]
    statuses = [o["status"] for o in lahinch["properties"]["observations"]]
    assert statuses == ["ok", "ok", "ok", "cloudy", "cloudy"]
    assert palawan["properties"]["observations"] == []
    assert [o["model"] for o in tawi["properties"]["observations"]] == ["eurosat-rgb v2"]
    assert all(o["tiles"] and o["truecolor"] for o in lahinch["properties"]["observations"][:3])
    assert [c["name"] for c in areas["legends"]["eurosat-cnn v3"]][:2] == ["AnnualCrop", "Forest"]
    assert SECRET not in json.dumps(areas)


def test_chart_data_csv_and_geojson_are_the_stored_numbers(client: Any, demo: dict[str, Any]) -> None:
    """Global Forest Watch users found the chart and the download disagreeing: here they are one
    table, and both equal the database."""
    stored = _observations(demo)
    chart = client.get("/dashboard/api/series/lahinch.json").json()
    rows = chart["rows"]
    table = list(csv.DictReader(io.StringIO(client.get("/dashboard/api/series/lahinch.csv").text)))
    geo = client.get("/dashboard/api/series/lahinch.geojson")
    assert geo.headers["content-type"].startswith("application/geo+json")
    features = geo.json()["features"]
    assert len(rows) == len(table) == len(features) == len(stored) == 5
    for o, row, line, feature in zip(stored, rows, table, features):
        assert row["observation_id"] == o["id"] == int(line["observation_id"]) == feature["id"]
        for key in ("target_ha", "estimate_ha", "baseline_ha", "observed_share"):
            want = o[key]
            assert row[key] == want and feature["properties"][key] == want
            assert (line[key] == "") if want is None else float(line[key]) == want
        assert row["status"] == line["status"] == o["status"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(r["alert_low_ha"] == pytest.approx(r["baseline_ha"] - 0.5) for r in ok)
    assert any(r["alert_id"] for r in rows)  # the 0.5 ha threshold was crossed at least once
    assert client.get("/dashboard/api/series/nope.json").status_code == 404


def test_tiles_are_addressed_by_observation_id_only(client: Any, demo: dict[str, Any]) -> None:
    from PIL import Image

    from eodeploy.package import ModelRepository

    obs = _observations(demo)[0]
    spec = ModelRepository(demo["model_repo"]).get(obs["model_name"], obs["model_version"]).spec
    colours = {tuple(int(c.color[i : i + 2], 16) for i in (1, 3, 5)) for c in spec.classes}
    lon, lat = -9.333, 52.947  # inside the area
    z = 14
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - np.arcsinh(np.tan(np.radians(lat))) / np.pi) / 2 * n)
    r = client.get(f"/dashboard/tiles/{obs['id']}/classes/{z}/{x}/{y}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    rgba = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
    seen = {tuple(p[:3]) for p in rgba.reshape(-1, 4) if p[3] == 255}
    assert seen and seen <= colours  # only class colours, never averaged ones
    assert (rgba[..., 3] == 0).any()  # outside the area's map: transparent
    again = client.get(r.request.url, headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304
    rgb = client.get(f"/dashboard/tiles/{obs['id']}/truecolor/{z}/{x}/{y}.png")
    assert rgb.status_code == 200
    # Anything but an observation id and a known kind is refused before any file is touched.
    assert client.get(f"/dashboard/tiles/999999/classes/{z}/{x}/{y}.png").status_code == 404
    assert client.get(f"/dashboard/tiles/{obs['id']}/confidence/{z}/{x}/{y}.png").status_code == 400
    for bad in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "1%3Bx", "-1", "99999999999999"):
        assert client.get(f"/dashboard/tiles/{bad}/classes/1/0/0.png").status_code in (400, 404), bad
    assert client.get(f"/dashboard/tiles/{obs['id']}/classes/3/9/0.png").status_code in (400, 404)
    assert client.get(f"/dashboard/tiles/{obs['id']}/classes/40/0/0.png").status_code in (400, 404)
    far = client.get(f"/dashboard/tiles/{obs['id']}/classes/{z}/0/0.png")
    assert far.status_code == 204  # outside the map: nothing to draw
    cloudy = _observations(demo)[-1]
    assert client.get(f"/dashboard/tiles/{cloudy['id']}/classes/{z}/{x}/{y}.png").status_code in (
        200,
        204,
        404,
    )


def test_keys_guard_every_page_tile_and_monitoring_read(keyed: Any, demo: dict[str, Any]) -> None:
    obs = _observations(demo)[0]
    html = {"accept": "text/html"}
    for page in ("", "/areas", "/series", "/alerts", "/models", "/try"):
        r = keyed.get(f"/dashboard{page}", headers=html, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/dashboard/login"), page
    for path in (
        "/dashboard/api/areas", "/dashboard/api/series/lahinch.csv", "/dashboard/models/stats",
        f"/dashboard/tiles/{obs['id']}/classes/14/7800/5300.png", "/dashboard/models/eurosat-cnn/3/model.onnx",
        "/monitor/areas", "/monitor/alerts", "/monitor/runs", "/monitor/areas/lahinch/series",
    ):  # fmt: skip
        assert keyed.get(path).status_code == 401, path
    assert keyed.post("/dashboard/api/try?model=eurosat-rgb&version=1").status_code == 401
    # The login page asks for the key; a wrong one is refused, a right one opens every page.
    assert keyed.get("/dashboard/login").status_code == 200
    r = keyed.post(
        "/dashboard/login", data={"key": "wrong", "next": "/dashboard/alerts"}, follow_redirects=False
    )
    assert r.status_code == 200 and "not valid" in r.text and "set-cookie" not in r.headers
    r = keyed.post(
        "/dashboard/login", data={"key": "s3cret-key", "next": "//evil.example/x"}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/dashboard"  # no open redirect
    cookie = r.cookies.get("eodeploy_dashboard")
    assert cookie and "s3cret-key" not in cookie
    assert (
        "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    )
    try:
        for page in ("/areas", "/alerts", "/models"):
            body = keyed.get(f"/dashboard{page}", headers=html).text
            assert "<main" in body and SECRET not in body and "s3cret-key" not in body
        assert keyed.get("/dashboard/api/areas").status_code == 200
        assert keyed.get("/monitor/areas").status_code == 401  # the cookie is the dashboard's only
        areas = keyed.get("/monitor/areas", headers={"X-API-Key": "s3cret-key"}).json()
        assert SECRET not in json.dumps(areas) and "ana.reyes@" not in json.dumps(areas)
        keyed.post("/dashboard/logout")
        assert keyed.get("/dashboard/api/areas").status_code == 401
    finally:
        keyed.cookies.clear()


def test_acknowledging_needs_the_dashboard_and_changes_the_database(
    client: Any, demo: dict[str, Any]
) -> None:
    from eodeploy.monitor.db import Database
    from eodeploy.monitor.report import list_alerts
    from eodeploy.settings import Settings

    rows = client.get("/dashboard/alerts/rows", params={"state": "open"})
    assert rows.status_code == 200 and "Acknowledge" in rows.text
    alert_id = next(o["alert_id"] for o in _observations(demo) if o["alert_id"])
    # From another site's page (no HX-Request header): refused, nothing changes.
    assert client.post(f"/dashboard/alerts/{alert_id}/ack").status_code == 403
    assert client.post("/dashboard/alerts/999999/ack", headers={"HX-Request": "true"}).status_code == 404
    r = client.post(f"/dashboard/alerts/{alert_id}/ack", headers={"HX-Request": "true"})
    assert r.status_code == 200 and f'id="alert-{alert_id}"' in r.text and "acknowledged" in r.text
    db = Database.from_settings(Settings(**demo))
    try:
        with db.session() as s:
            acked = [a for a in list_alerts(s, "lahinch") if a["id"] == alert_id]
        assert acked and acked[0]["acknowledged_by"] == "dashboard"
    finally:
        db.dispose()
    assert "no alerts" in client.get("/dashboard/alerts/rows", params={"area": "palawan"}).text.lower()


def test_empty_database_and_monitoring_off_render(tmp_path: Path) -> None:
    base = {"model_repo": ROOT / "models", "monitor_dir": tmp_path / "m"}
    with _client(**base, database_url=f"sqlite:///{tmp_path / 'empty.db'}") as c:
        for page in ("areas", "series", "alerts", "models", "try"):
            r = c.get(f"/dashboard/{page}")
            assert r.status_code == 200 and "<main" in r.text, page
        assert "No areas yet" in c.get("/dashboard/areas").text
        assert c.get("/dashboard/api/areas").json()["features"] == []
    with _client(**base, monitor_api=False) as c:
        assert "Monitoring is off" in c.get("/dashboard/areas").text
        assert c.get("/dashboard/api/areas").status_code == 404


def test_try_it_decodes_for_the_browser_and_answers_like_predict(client: Any) -> None:
    from eodeploy.package import ModelRepository
    from eodeploy.runtime.predictor import Predictor

    patch = next((ROOT.parent / "shared/data/eurosat_rgb_more").rglob("*.jpg"))
    with open(patch, "rb") as fh:
        data = fh.read()
    r = client.post("/dashboard/api/try", params={"model": "eurosat-rgb", "version": 1},
                    files={"image": (patch.name, data, "image/jpeg")})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    raw = np.frombuffer(__import__("base64").b64decode(body["input"]), np.float32).reshape(body["shape"])
    assert body["shape"] == [1, 3, 64, 64] and body["units"] == "rgb8"
    predictor = Predictor(ModelRepository(ROOT / "models").get("eurosat-rgb", 1))
    assert np.abs(predictor.predict_proba(raw)[0] - np.array(body["server"])).max() <= 1e-6
    upload = client.post("/predict", params={"model": "eurosat-rgb", "version": 1},
                         files={"image": (patch.name, data, "image/jpeg")}).json()  # fmt: skip
    assert upload["class"] == body["classes"][int(np.argmax(body["server"]))]
    # Bad input: a clear 4xx naming the problem.
    bad = client.post("/dashboard/api/try", params={"model": "eurosat-rgb", "version": 1},
                      files={"image": ("x.png", b"not an image", "image/png")})  # fmt: skip
    assert bad.status_code == 400 and "error" in bad.json()
    assert client.post("/dashboard/api/try", params={"model": "nope", "version": 1},
                       files={"image": (patch.name, data)}).status_code == 404  # fmt: skip
    assert client.post("/dashboard/api/try", params={"model": "eurosat-rgb", "version": 1, "units": "kelvin"},
                       files={"image": (patch.name, data)}).status_code == 400  # fmt: skip
    assert client.post("/dashboard/api/try", params={"model": "eurosat-rgb", "version": 1}).status_code == 400


def test_live_stats_come_from_the_servers_own_metrics(client: Any) -> None:
    patch = np.random.default_rng(0).integers(0, 255, (1, 3, 64, 64)).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": patch}]}
    for _ in range(5):
        assert client.post("/v2/models/eurosat-rgb/versions/1/infer", json=body).status_code == 200
    stats = client.app.state.live_stats.snapshot()
    row = next(s for s in stats if s["model"] == "eurosat-rgb" and s["version"] == "1")
    assert row["requests"] >= 5 and row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"]
    assert row["error_rate"] == 0.0 and row["mean_batch"] >= 1
    assert "eurosat-rgb" in client.get("/dashboard/models/stats").text


def test_histogram_quantile_matches_prometheus() -> None:
    from eodeploy.web.live import quantile

    # 100 observations: 50 in (0, 0.01], 45 in (0.01, 0.1], 5 in (0.1, 1]
    buckets = {0.01: 50, 0.1: 95, 1.0: 100, float("inf"): 100}
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.9, buckets) == pytest.approx(0.01 + 0.09 * 40 / 45)
    assert quantile(0.99, buckets) == pytest.approx(0.1 + 0.9 * 4 / 5)
    assert quantile(0.5, {0.01: 0, float("inf"): 0}) is None
    assert quantile(0.99, {0.01: 1, float("inf"): 10}) == 0.01  # beyond the last bound
