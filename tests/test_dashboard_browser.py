"""The dashboard in a real browser (Debian's Chromium through Playwright) against a real
``eodeploy serve`` and a database filled by a real monitoring run: tiles on the map, chart points
equal to the stored observations, acknowledging from the page, browser inference equal to the
server's, empty states, zero console errors and no serious accessibility violation on every page."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from browser import axe
from dashboard_demo import ROOT, S2, build_demo
from servers import LiveServer, live_server

pytestmark = pytest.mark.skipif(not S2.is_dir(), reason="../shared/data is not here")
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_demo(tmp_path_factory.mktemp("dashboard-browser"))


@pytest.fixture(scope="module")
def live(demo: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with live_server(
        ROOT / "models", log, EODEPLOY_DATABASE_URL=demo["database_url"],
        EODEPLOY_MONITOR_DIR=str(demo["monitor_dir"]), EODEPLOY_VERSION_POLICY="all",
    ) as server:  # fmt: skip
        yield server


def _stored(demo: dict[str, Any]) -> list[dict[str, Any]]:
    from eodeploy.monitor.db import Database
    from eodeploy.monitor.report import time_series
    from eodeploy.settings import Settings

    db = Database.from_settings(Settings(**demo))
    try:
        with db.session() as s:
            return time_series(s, "lahinch")["observations"]  # type: ignore[no-any-return]
    finally:
        db.dispose()


def _clean(watched: Any) -> None:
    watched.assert_clean()
    violations = axe(watched.page)
    assert violations == [], violations


def test_map_shows_class_tiles_of_each_observation(
    open_page: Any, live: LiveServer, demo: dict[str, Any]
) -> None:
    from PIL import Image

    from eodeploy.package import ModelRepository

    first = _stored(demo)[0]
    spec = ModelRepository(ROOT / "models").get(first["model_name"], first["model_version"]).spec
    colours = {tuple(int(c.color[i : i + 2], 16) for i in (1, 3, 5)) for c in spec.classes}
    w = open_page(
        f"{live.http}/dashboard/areas?area=lahinch&obs={first['id']}", viewport={"width": 1280, "height": 900}
    )
    page = w.page
    page.wait_for_selector(".tiles-classes img.leaflet-tile-loaded")
    page.wait_for_selector(".tiles-truecolor img.leaflet-tile-loaded")
    assert first["datetime"][:10] in page.inner_text("#obs-info")
    assert page.locator("#legend li").count() == len(spec.classes)
    # The class map alone, fully opaque: the pixels over the area are class colours.
    page.uncheck("#show-rgb")
    page.locator("#opacity").fill("100")
    page.wait_for_function("document.querySelectorAll('.tiles-truecolor').length === 0")
    page.wait_for_selector(".tiles-classes img.leaflet-tile-loaded")
    page.wait_for_timeout(300)  # Leaflet fades tiles in
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#map").screenshot())).convert("RGB"))
    pixels = [tuple(int(v) for v in p) for p in shot.reshape(-1, 3)]
    in_class_colours = sum(p in colours for p in pixels)
    assert in_class_colours > 2000, f"only {in_class_colours} class-coloured pixels on the map"
    # The date control steps through the observations and keeps the state in the URL.
    page.click("#next")
    second = _stored(demo)[1]
    page.wait_for_function(f"location.search.includes('obs={second['id']}')")
    assert second["datetime"][:10] in page.inner_text("#obs-info")
    page.select_option("#area", "palawan")  # an area with no observation yet
    assert "No observation yet" in page.inner_text("#obs-info")
    # Leaflet cancels the tile requests of a layer it removes (stepping dates): not failures.
    w.failed_requests[:] = [
        f for f in w.failed_requests if not ("/dashboard/tiles/" in f and "ERR_ABORTED" in f)
    ]
    _clean(w)


def test_chart_points_equal_the_stored_observations(
    open_page: Any, live: LiveServer, demo: dict[str, Any]
) -> None:
    from datetime import datetime

    w = open_page(f"{live.http}/dashboard/series?area=lahinch")
    w.page.wait_for_function("window.eodeployChart !== undefined")
    data = w.page.evaluate("window.eodeployChart.data")
    stored = _stored(demo)
    xs = [datetime.fromisoformat(o["datetime"].replace("Z", "+00:00")).timestamp() for o in stored]
    assert data[0] == pytest.approx(xs)
    line = data[1]  # one model version: one line
    assert line == [o["estimate_ha"] if o["status"] == "ok" else None for o in stored]
    alerts = data[-1]
    assert [v is not None for v in alerts] == [bool(o["alert_id"]) for o in stored]
    assert w.page.locator("#rows tbody tr").count() == len(stored)
    assert "Pasture" in w.page.inner_text("#summary")
    _clean(w)


def test_acknowledging_from_the_page_changes_the_database(
    open_page: Any, live: LiveServer, demo: dict[str, Any]
) -> None:
    from eodeploy.monitor.db import Database
    from eodeploy.monitor.report import list_alerts
    from eodeploy.settings import Settings

    w = open_page(f"{live.http}/dashboard/alerts")
    page = w.page
    assert "webhook: failed" in page.inner_text("#alert-rows")  # delivery status shown
    button = page.locator("#alert-rows button").first
    row_id = button.evaluate("b => b.closest('tr').id")
    alert_id = int(row_id.split("-")[1])
    button.click()
    page.wait_for_function(f"document.querySelector('#{row_id}').innerText.includes('acknowledged')")
    db = Database.from_settings(Settings(**demo))
    try:
        with db.session() as s:
            row = next(a for a in list_alerts(s) if a["id"] == alert_id)
        assert row["acknowledged_at"] and row["acknowledged_by"] == "dashboard"
    finally:
        db.dispose()
    page.select_option("#state", "acknowledged")  # htmx swaps the filtered rows in
    page.wait_for_function(
        f"document.querySelector('#{row_id}') && !document.querySelector('#alert-rows button[hx-post$=\"/{alert_id}/ack\"]')"
    )
    _clean(w)


def test_models_page_shows_the_repository_and_live_figures(open_page: Any, live: LiveServer) -> None:
    import requests

    w = open_page(f"{live.http}/dashboard/models")
    text = w.page.inner_text("main")
    assert "eurosat-rgb" in text and "eurosat-cnn" in text and "97.51 %" in text
    assert w.page.locator("details table.confusion").count() >= 3
    patch = np.zeros((1, 3, 64, 64), np.float32).tolist()
    body = {"inputs": [{"name": "input", "shape": [1, 3, 64, 64], "datatype": "FP32", "data": patch}]}
    for _ in range(3):
        assert requests.post(f"{live.http}/v2/models/eurosat-rgb/versions/1/infer", json=body, timeout=30).ok
    # htmx polls the live figures every 5 s
    w.page.wait_for_function(
        "document.querySelector('#stats-table').innerText.includes('eurosat-rgb')", timeout=15000
    )
    _clean(w)


def _patches() -> list[tuple[str, int, Path]]:
    rgb = sorted((SHARED / "eurosat_rgb_more").rglob("*.jpg"))[::2500][:6]
    ms = sorted((SHARED / "eurosat").rglob("*.tif"))[::90][:3]
    return (
        [("eurosat-rgb", 1, p) for p in rgb]
        + [("eurosat-rgb", 2, p) for p in rgb[:2]]
        + [("eurosat-cnn", 3, p) for p in ms]
    )


def test_browser_inference_equals_the_server(open_page: Any, live: LiveServer) -> None:
    """onnxruntime-web (WASM, one thread) on the package's fused graph against the server's Python
    path, on real EuroSAT patches, the INT8 version included."""
    w = open_page(f"{live.http}/dashboard/try")
    page = w.page
    for name, version, path in _patches():
        page.select_option("#model", f"{name}/{version}")
        page.evaluate("window.eodeployTry = undefined")
        page.set_input_files("#file", str(path))
        page.wait_for_function("window.eodeployTry !== undefined", timeout=30000)
        result = page.evaluate("window.eodeployTry")
        assert result["sameClass"], (name, version, path.name, result)
        # FP32: the same numbers to 1e-5. INT8 (eurosat-rgb v2): onnxruntime-web's WASM kernels for
        # quantised convolutions round differently from the server's (measured up to 7.8e-3 on the
        # test split, every class the same: benchmarks/dashboard.py), so only a looser bound holds.
        bound = 1e-2 if (name, version) == ("eurosat-rgb", 2) else 1e-5
        assert result["maxDelta"] <= bound, (name, version, path.name, result["maxDelta"])
    assert "Same class" in page.inner_text("#agreement")
    # A file that is not an image: the page says why, nothing breaks.
    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"}]
    )
    page.wait_for_function("document.querySelector('#status').innerText.startsWith('Could not classify')")
    # The 400 was provoked on purpose (Chromium also logs it to the console): nothing else.
    w.http_errors[:] = [e for e in w.http_errors if not ("/dashboard/api/try" in e and e.endswith("400"))]
    w.console_errors[:] = [
        e for e in w.console_errors if not ("400 (Bad Request)" in e and "/dashboard/api/try" in e)
    ]
    _clean(w)


@pytest.fixture(scope="module")
def empty_keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("empty")
    with live_server(
        ROOT / "models", folder / "server.log", EODEPLOY_DATABASE_URL=f"sqlite:///{folder / 'empty.db'}",
        EODEPLOY_API_KEYS='["field-office-key"]',
    ) as server:  # fmt: skip
        yield server


def test_an_empty_database_behind_a_key_renders_every_page(open_page: Any, empty_keyed: LiveServer) -> None:
    w = open_page(f"{empty_keyed.http}/dashboard/areas")
    page = w.page
    assert "/dashboard/login" in page.url
    page.fill("#key", "not-the-key")
    with page.expect_navigation():
        page.click("main button[type=submit]")
    assert "not valid" in page.inner_text("main")
    page.fill("#key", "field-office-key")
    page.click("main button[type=submit]")
    page.wait_for_url("**/dashboard/areas")
    assert "No areas yet" in page.inner_text("main")
    _clean_after_login(w)
    for slug in ("series", "alerts", "models", "try"):
        page.goto(f"{empty_keyed.http}/dashboard/{slug}")
        assert page.locator("main h1").count() == 1
        _clean_after_login(w)


def _clean_after_login(w: Any) -> None:
    # The login page's redirect and the refused key are the only non-200s, and on purpose.
    w.http_errors[:] = [e for e in w.http_errors if "/dashboard/login" not in e]
    _clean(w)
