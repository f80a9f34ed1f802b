"""Plotting is the ``plot`` extra (the server image leaves matplotlib out): without it a plot asked
for by name is a clear error naming the extra, and the work around a plot (scene maps, monitoring,
evaluation scores) still happens."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import CLASSES
from eodeploy.cli.main import app
from eodeploy.errors import MissingExtraError
from eodeploy.package import ModelPackage, ModelRepository
from test_scene import scene_array, write_scene

EXTRA_LINE = "pip install 'eodeploy[plot]'"


@pytest.fixture
def no_matplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in the server image: ``import matplotlib`` fails (None in sys.modules is how Python itself
    marks a module as not importable); the real modules come back after the test."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_plots_name_the_extra(no_matplotlib: None, tmp_path: Path) -> None:
    from eodeploy.evaluate.report import plot_confusion
    from eodeploy.monitor.report import plot_series

    report = {"confusion_matrix": [[1, 0], [0, 1]], "class_names": ["a", "b"], "accuracy": 1.0,
              "macro_f1": 1.0, "n": 2}  # fmt: skip
    with pytest.raises(MissingExtraError, match=r"eodeploy\[plot\]") as err:
        plot_confusion(report, tmp_path / "c.png")
    assert err.value.extra == "plot" and EXTRA_LINE in str(err.value)
    with pytest.raises(MissingExtraError, match=r"eodeploy\[plot\]"):
        plot_series({"observations": []}, tmp_path / "s.png")
    assert not list(tmp_path.iterdir())


def test_scene_maps_without_the_preview(
    no_matplotlib: None, repo: ModelRepository, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Monitoring runs in the server image go through predict_scene: the maps and statistics are
    written, only preview.png is left out, with a warning naming the extra."""
    from eodeploy.geo import predict_scene

    src = write_scene(tmp_path / "scene.tif", scene_array())
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="eodeploy.geo.predict"):
        stats = predict_scene(repo.get("tiny"), src, out, stride=64, polygons=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "classes.tif",
        "confidence.tif",
        "stats.json",
        "item.json",
    } <= names and "preview.png" not in names
    assert stats["windows"] > 0
    assert any("no preview.png" in r.getMessage() and EXTRA_LINE in r.getMessage() for r in caplog.records)


def test_cli_evaluate_without_the_extra(
    no_matplotlib: None, repo: ModelRepository, eurosat_dir: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    args = ["evaluate", "tiny", str(eurosat_dir), "--split", "all", "--repo", str(repo.root)]
    r = runner.invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "no confusion-matrix plot" in r.output and EXTRA_LINE in r.output
    pkg = ModelPackage(repo.get("tiny").path)
    assert pkg.properties["eodeploy:evaluations"][f"{eurosat_dir.name}:all"]["n"] == 8 * len(CLASSES)
    assert not list(pkg.path.glob("confusion_*.png"))

    r = runner.invoke(app, [*args, "--plot", str(tmp_path / "c.png")], catch_exceptions=False)
    assert r.exit_code == 2 and EXTRA_LINE in r.output and "Traceback" not in r.output
    assert not (tmp_path / "c.png").exists()
