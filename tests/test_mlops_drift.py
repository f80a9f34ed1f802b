"""Drift on real data: Lahinch (L1C, 5 dates), the Thailand L2A cell and real EuroSAT patches,
per monitoring observation and per serving window, against SQLite and the real PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import SHARED
from eodeploy.geo.drift import scene_shift
from eodeploy.geo.sources import open_scene
from eodeploy.mlops.drift import (
    DriftWindow,
    baseline_check,
    l2a_signature,
    observation_drift,
    prediction_shift,
    reference_shares,
    signed_shifts,
)
from eodeploy.mlops.sketch import Reservoir, ServingDrift, Uniform
from eodeploy.package import ModelRepository
from test_drift import shifted_copy
from test_monitor import db_url  # noqa: F401  (fixture: a fresh SQLite file / PostgreSQL database)

pytestmark = pytest.mark.shared_data
S2 = SHARED / "data" / "sentinel2"
ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
CLEAR = ("2017-09-18", "2017-09-21", "2017-09-26")


@pytest.fixture(scope="module")
def package() -> Any:
    if not S2.is_dir():
        pytest.skip("../shared/data is not here")
    return ModelRepository(MODELS).get("eurosat-cnn", 3)


def shift_of(path: Path, pkg: Any, bands: list[str] | None = None) -> dict[str, Any]:
    spec = pkg.spec
    if bands is not None:  # a subset of the model's bands (the Thailand L2A cell has no B10)
        scaling = [v for b, v in zip(spec.bands, spec.value_scaling) if b in bands]
        spec = dataclasses.replace(spec, bands=bands, value_scaling=scaling)
    scene = open_scene(path, spec.bands)
    try:
        out = scene_shift(scene, spec, pkg.properties["eodeploy:reference_stats"])
        assert out is not None
        return out
    finally:
        scene.close()


def without_cloud_layers(src: Path, dst: Path) -> Path:
    """The scene with its 13 spectral bands only (QA60 and probability dropped): nothing masks clouds."""
    import rasterio

    with rasterio.open(src) as s:
        arr, profile, names = s.read(list(range(1, 14))), s.profile, s.descriptions[:13]
    profile.update(count=13)
    with rasterio.open(dst, "w", **profile) as d:
        d.write(arr)
        d.descriptions = names
    return dst


# --- the statistic and the rule -----------------------------------------------------------------


def test_baseline_rule_needs_three_observations_and_flags_beyond_three_sigma() -> None:
    history = [{"B02": 0.0, "B03": 0.1}, {"B02": 0.2, "B03": 0.1}]
    assert baseline_check({"B02": 5.0, "B03": 5.0}, history) == {
        "n": 2, "flagged": False, "judged": False, "note": "collecting a baseline: 2 of 3 clear observations",
    }  # fmt: skip
    history.append({"B02": 0.1, "B03": 0.1})  # B02: mean 0.1, σ 0.1; B03: σ 0 -> the floor 0.1
    inside = baseline_check({"B02": 0.35, "B03": 0.05}, history)
    assert inside["judged"] and not inside["flagged"] and inside["bands"]["B02"]["z"] == pytest.approx(2.5)
    out = baseline_check({"B02": 0.45, "B03": 0.45}, history)
    assert out["flagged"] and out["bands_flagged"] == ["B02", "B03"]
    one = baseline_check({"B02": 0.45, "B03": 0.1}, history)  # one band of two out: not most bands
    assert not one["flagged"] and one["bands_flagged"] == ["B02"]


def test_reservoir_is_bounded_and_uniform() -> None:
    r = Reservoir(2, 1000, Uniform(np.random.default_rng(0)))
    for start in range(0, 100_000, 500):
        r.add(np.stack([np.arange(start, start + 500), np.zeros(500)], axis=1).astype(np.float32))
    assert r.seen == 100_000 and r.values.nbytes == 1000 * 2 * 4
    kept = r.sample()[0]
    assert kept.shape == (1000,) and len(np.unique(kept)) == 1000
    assert abs(float(np.median(kept)) - 50_000) < 5_000  # a uniform sample's median, not the first 1000


def test_class_shares_from_the_package(package: Any) -> None:
    classes = package.spec.class_names
    shares = reference_shares(package.properties, classes)
    assert shares is not None and sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    # An older package without class_frequencies: the test split's per-class support.
    props = {k: v for k, v in package.properties.items() if k != "eodeploy:reference_stats"}
    support = reference_shares(props, classes)
    assert support is not None and support["AnnualCrop"] == pytest.approx(7 / 79, abs=1e-4)
    assert prediction_shift(shares, shares) == 0.0
    assert prediction_shift({"Forest": 1.0}, {"SeaLake": 1.0}) == 1.0


# --- monitoring: real scenes --------------------------------------------------------------------


def test_real_lahinch_dates_against_the_reference(package: Any, tmp_path: Path) -> None:
    base = signed_shifts(shift_of(S2 / f"lahinch_IE_s2l1c_{CLEAR[0]}.tif", package))
    for date in CLEAR[1:]:
        clear = observation_drift(shift_of(S2 / f"lahinch_IE_s2l1c_{date}.tif", package), [base])
        assert clear is not None and not clear["flagged"], clear["median_shift"]
        assert clear["baseline"]["judged"] is False  # one earlier clear date: not yet a baseline
        plus = shifted_copy(S2 / f"lahinch_IE_s2l1c_{date}.tif", tmp_path / f"{date}.tif", 1000)
        drifted = observation_drift(shift_of(plus, package), [base])
        assert drifted is not None and drifted["flagged"] and drifted["reference"]["flagged"]
        assert len(drifted["reference"]["bands_flagged"]) >= 10, drifted["reference"]["bands_flagged"]
        assert "processing baseline 04.00" in drifted["reference"]["causes"][0]
    # The storm date: masked, nothing clear is left to judge; unmasked, the cloud deck is named.
    masked = shift_of(S2 / "lahinch_IE_s2l1c_2017-10-18.tif", package)
    assert masked["median_shift"] is None and masked["clear_pixels"] < 500
    unmasked = observation_drift(
        shift_of(without_cloud_layers(S2 / "lahinch_IE_s2l1c_2017-10-18.tif", tmp_path / "c.tif"), package),
        [base],
    )
    assert unmasked is not None and unmasked["flagged"]
    assert any("unmasked cloud" in c for c in unmasked["reference"]["causes"])
    assert not any("L2A" in c for c in unmasked["reference"]["causes"])


def test_thailand_l2a_is_unlike_the_l1c_model(package: Any) -> None:
    folder = S2 / "majortom_199U_1099R_TH_s2l2a_2020-02-23"
    if not folder.is_dir():
        pytest.skip("the Thailand L2A cell is not here")
    bands = [b for b in package.spec.bands if b != "B10"]  # L2A has no cirrus band
    out = observation_drift(shift_of(folder, package, bands), [])
    assert out is not None and out["flagged"] and out["reference"]["flagged"]
    # Most bands are close (median shift 0.33, under the 0.75 limit): the atmospheric correction
    # shows in the aerosol and water-vapour bands, and that signature is what flags it.
    assert {"B01", "B02", "B09"} <= set(out["reference"]["bands_flagged"])
    assert out["reference"]["causes"][0].startswith("surface reflectance (L2A")


def test_the_l2a_signature_never_fires_on_l1c_patches(package: Any) -> None:
    """All 377 real EuroSAT-MS (L1C) patches, one by one: the noisiest case, none looks like L2A."""
    from eodeploy.package.stats import robust_shift

    reference = package.properties["eodeploy:reference_stats"]
    patches = eurosat_patches(per_class=100)
    assert len(patches) == 377
    for p in patches:
        assert l2a_signature(robust_shift(p.reshape(13, -1), reference, package.spec.bands)) is None


def test_monitoring_run_stores_drift_per_observation(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Three clear dates form the baseline; a later copy of a clear date passes it, the same scene
    +1000 DN and the storm date without its cloud mask are flagged by both checks."""
    from typer.testing import CliRunner

    from eodeploy.cli.main import app
    from eodeploy.monitor.areas import AreaSpec, add_area
    from eodeploy.monitor.db import Database
    from eodeploy.monitor.report import time_series
    from eodeploy.monitor.run import run_monitoring
    from eodeploy.settings import Settings

    if not S2.is_dir():
        pytest.skip("../shared/data is not here")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for date in CLEAR:
        shutil.copy(S2 / f"lahinch_IE_s2l1c_{date}.tif", inbox)
    shutil.copy(S2 / "lahinch_IE_s2l1c_2017-09-26.tif", inbox / "lahinch_IE_s2l1c_2017-10-01.tif")
    shifted_copy(S2 / "lahinch_IE_s2l1c_2017-09-21.tif", inbox / "lahinch_IE_s2l1c_2017-10-02.tif", 1000)
    without_cloud_layers(S2 / "lahinch_IE_s2l1c_2017-10-18.tif", inbox / "lahinch_IE_s2l1c_2017-10-18.tif")
    cfg = Settings(
        model_repo=MODELS, database_url=db_url, monitor_dir=tmp_path / "out", db_connect_attempts=1
    )
    db = Database.from_settings(cfg)
    geometry = json.loads((ROOT / "src/eodeploy/monitor/examples/lahinch.geojson").read_text())
    with db.session() as s:
        add_area(s, ModelRepository(MODELS), AreaSpec(
            name="lahinch", geometry=geometry, target_class="Pasture", model="eurosat-cnn",
            source={"type": "folder", "path": str(inbox), "pattern": "lahinch_*.tif"}))  # fmt: skip
    report = run_monitoring(db, cfg)
    assert report.failures == [] and report.stored == 6
    with db.session() as s:
        obs = {o["datetime"][:10]: o for o in time_series(s, "lahinch")["observations"]}
    drift = {d: o["drift"] for d, o in obs.items()}
    for i, date in enumerate(CLEAR):
        assert not drift[date]["flagged"] and drift[date]["baseline"]["n"] == i
        assert drift[date]["median_shift"] < 0.5
    repeat = drift["2017-10-01"]["baseline"]
    assert repeat["judged"] and repeat["n"] == 3 and not drift["2017-10-01"]["flagged"]
    for date in ("2017-10-02", "2017-10-18"):  # +1000 DN; the storm unmasked
        d = drift[date]
        assert d["flagged"] and d["reference"]["flagged"] and d["baseline"]["flagged"], (date, d)
        assert d["baseline"]["n"] == 4  # the 3 clear dates and 10-01; never the flagged 10-02
        assert len(d["baseline"]["bands_flagged"]) >= 10
    assert any("processing baseline 04.00" in c for c in drift["2017-10-02"]["reference"]["causes"])
    assert any("unmasked cloud" in c for c in drift["2017-10-18"]["reference"]["causes"])
    res = CliRunner().invoke(app, ["monitor", "series", "lahinch", "--db", db_url], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    rows = {
        m.group(1): line for line in res.output.splitlines() if (m := re.search(r"(2017-\d\d-\d\d)", line))
    }
    assert "! reference, baseline" in rows["2017-10-02"] and "!" not in rows["2017-09-21"]
    res = CliRunner().invoke(app, ["monitor", "series", "lahinch", "--db", db_url, "--json"])
    assert json.loads(res.output)["observations"][4]["drift"]["flagged"] is True
    db.dispose()


# --- serving ------------------------------------------------------------------------------------


def eurosat_patches(per_class: int = 8) -> np.ndarray:
    import rasterio

    folder = SHARED / "data" / "eurosat"
    if not folder.is_dir():
        pytest.skip("../shared/data/eurosat is not here")
    out = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        for f in sorted(cls.glob("*.tif"))[:per_class]:
            with rasterio.open(f) as ds:
                out.append(ds.read())
    return np.stack(out)


def gauges(text: str, name: str, **where: str) -> dict[str, float]:
    """The samples of ``name`` whose labels include ``where``, by their other labels."""
    out = {}
    for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(labels.get(k) == v for k, v in where.items()):
            out[",".join(f"{k}={v}" for k, v in labels.items() if k not in where)] = float(m.group(2))
    return out


def test_serving_windows_gauges_and_rows(client_for: Any, db_url: str) -> None:  # noqa: F811
    from sqlalchemy import select

    from eodeploy.web.monitor_api import app_database

    patches = eurosat_patches()
    rng = np.random.default_rng(0)
    rng.shuffle(patches)
    client = client_for(ModelRepository(MODELS), database_url=db_url, drift_sample_every=2,
                        drift_window_s=1e6, cache_mib=0)  # fmt: skip
    drift: ServingDrift = client.app.state.inference.drift

    def send(batch: np.ndarray) -> None:
        for i in range(0, len(batch), 4):
            body = {"instances": batch[i : i + 4].tolist()}
            r = client.post("/v1/models/eurosat-cnn:predict", content=json.dumps(body))
            assert r.status_code == 200, r.text

    send(patches)
    clean = drift.close_due(force=True)
    assert len(clean) == 1 and clean[0]["requests"] == len(patches) // 4
    assert clean[0]["sampled_requests"] == (clean[0]["requests"] + 1) // 2
    low = client.get("/metrics").text
    send(np.clip(patches.astype(np.int64) + 1000, 0, 65535).astype(np.uint16))
    high = client.get("/metrics").text  # the scrape alone closes nothing: the window is not due
    assert gauges(high, "eodeploy_drift_score") == gauges(low, "eodeploy_drift_score")
    shifted = drift.close_due(force=True)
    high = client.get("/metrics").text
    mv = {"model": "eurosat-cnn", "version": "3"}
    assert (
        gauges(low, "eodeploy_drift_score", **mv)[""]
        < 0.3
        < 1.0
        < gauges(high, "eodeploy_drift_score", **mv)[""]
    )
    assert (
        gauges(low, "eodeploy_drift_flagged", **mv)[""]
        == 0
        == gauges(high, "eodeploy_drift_flagged", **mv)[""] - 1
    )
    # +1000 DN is over one reference IQR on the 7 bands whose IQR is under ~800 DN (B01-B05, B09, B10).
    assert sum(v > 1.0 for v in gauges(high, "eodeploy_drift_band_shift", **mv).values()) >= 7
    shares = gauges(low, "eodeploy_prediction_share", **mv)
    assert len(shares) == 10 and sum(shares.values()) == pytest.approx(1.0, abs=1e-3)
    assert gauges(low, "eodeploy_prediction_shift", **mv)[""] < shifted[0]["prediction_shift"]
    drift.flush()
    with app_database(client.app.state).session() as s:
        rows = s.scalars(select(DriftWindow).order_by(DriftWindow.id)).all()
        assert [(r.model_name, r.model_version, r.flagged) for r in rows] == [
            ("eurosat-cnn", 3, False), ("eurosat-cnn", 3, True),
        ]  # fmt: skip
        assert rows[0].median_shift == clean[0]["median_shift"] and rows[1].pixels > 500
        assert set(rows[0].bands) == set(ModelRepository(MODELS).get("eurosat-cnn", 3).spec.bands)
    api = client.get("/monitor/drift/windows", params={"model": "eurosat-cnn"}).json()
    assert [(w["model_version"], w["flagged"]) for w in api] == [(3, True), (3, False)]  # newest first
    assert client.get("/monitor/drift/windows", params={"limit": 0}).status_code == 400


def test_windows_close_on_time_and_requests_are_sampled(package: Any) -> None:
    from types import SimpleNamespace

    served = SimpleNamespace(name="eurosat-cnn", version=3, spec=package.spec, package=package)
    patches = eurosat_patches(2)
    proba = np.eye(10, dtype=np.float32)[np.arange(len(patches)) % 10]
    d = ServingDrift(every=10, patches=2, pixels=8, window_s=60.0, min_pixels=10, seed=1)
    for _ in range(30):
        d.observe(served, patches, None, "auto", proba)
    assert d.close_due(now=0.0) == []  # nothing due yet
    (w,) = d.close_due(now=1e12)
    assert (w["requests"], w["sampled_requests"], w["pixels"]) == (30, 3, 3 * 2 * 8)
    assert w["patches"] == 3 * len(patches) and w["median_shift"] is not None
