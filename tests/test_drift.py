"""Is a scene unlike the training data? The robust per-band shift on real Lahinch scenes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED
from eodeploy.geo.drift import scene_shift
from eodeploy.geo.sources import open_scene
from eodeploy.package import ModelRepository
from eodeploy.package.stats import robust_shift

S2 = SHARED / "data" / "sentinel2"
MODELS = Path(__file__).resolve().parents[1] / "models"


def shifted_copy(src: Path, dst: Path, add: float, bands: int = 13) -> Path:
    import rasterio

    with rasterio.open(src) as s:
        arr, profile, names = s.read(), s.profile, s.descriptions
    arr[:bands] += add
    with rasterio.open(dst, "w", **profile) as d:
        d.write(arr)
        d.descriptions = names
    return dst


def shift_of(path: Path) -> dict:  # type: ignore[type-arg]
    pkg = ModelRepository(MODELS).get("eurosat-cnn", 2)
    scene = open_scene(path, pkg.spec.bands)
    try:
        return scene_shift(scene, pkg.spec, pkg.properties["eodeploy:reference_stats"])  # type: ignore[return-value]
    finally:
        scene.close()


def test_statistic_is_median_shift_over_iqr() -> None:
    ref = {"bands": {"B04": {"quantiles": {"p25": 100.0, "p50": 150.0, "p75": 300.0}}}}
    out = robust_shift(np.array([np.full(1000, 550.0)]), ref, ["B04"])
    assert out["bands"]["B04"]["shift"] == pytest.approx(2.0)  # |550 - 150| / (300 - 100)
    assert out["unlike_training"] and out["bands_flagged"] == ["B04"]


def test_clear_scenes_pass_and_the_baseline_offset_is_caught(tmp_path: Path) -> None:
    for date in ("2017-09-18", "2017-09-26"):
        clear = shift_of(S2 / f"lahinch_IE_s2l1c_{date}.tif")
        assert not clear["unlike_training"], clear["median_shift"]
        plus = shift_of(shifted_copy(S2 / f"lahinch_IE_s2l1c_{date}.tif", tmp_path / f"{date}.tif", 1000))
        assert plus["unlike_training"] and plus["median_shift"] > 1.0
        assert len(plus["bands_flagged"]) >= 8
        assert "processing baseline 04.00" in plus["causes"][0]


def test_an_unmasked_cloud_deck_is_named(tmp_path: Path) -> None:
    # The storm date without its cloud layers (bands 14-15 dropped): nothing masks the clouds.
    import rasterio

    src = S2 / "lahinch_IE_s2l1c_2017-10-18.tif"
    with rasterio.open(src) as s:
        arr, profile, names = s.read(list(range(1, 14))), s.profile, s.descriptions[:13]
    profile.update(count=13)
    with rasterio.open(tmp_path / "cloudy.tif", "w", **profile) as d:
        d.write(arr)
        d.descriptions = names
    out = shift_of(tmp_path / "cloudy.tif")
    assert out["unlike_training"] and any("unmasked cloud" in c for c in out["causes"])


def test_cli_warns_and_stats_record_it(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from eodeploy.cli.main import app

    plus = shifted_copy(S2 / "lahinch_IE_s2l1c_2017-09-18.tif", tmp_path / "plus.tif", 1000)
    res = CliRunner().invoke(app, ["predict", "eurosat-cnn", str(plus), "--out", str(tmp_path / "o"),
                                   "--repo", str(MODELS)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "unlike the model's training data" in res.output and "--offset -1000" in res.output
    stats = json.loads((tmp_path / "o" / "stats.json").read_text())
    assert stats["training_data_shift"]["unlike_training"] is True
    res = CliRunner().invoke(app, ["predict", "eurosat-cnn", str(S2 / "lahinch_IE_s2l1c_2017-09-18.tif"),
                                   "--out", str(tmp_path / "c"), "--repo", str(MODELS)])  # fmt: skip
    assert res.exit_code == 0 and "unlike" not in res.output
