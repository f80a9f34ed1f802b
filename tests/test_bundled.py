"""The committed default model, and the README's promises about it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import SHARED, SHARED_EUROSAT
from eodeploy.evaluate.report import evaluate, load_for_package
from eodeploy.package import ModelRepository, validate_item
from eodeploy.runtime import Predictor

ROOT = Path(__file__).resolve().parents[1]


#: (name, version, the data its split names, bands)
BUNDLED = [
    ("eurosat-cnn", 1, SHARED_EUROSAT, 13),
    ("eurosat-cnn", 2, SHARED_EUROSAT, 13),
    ("eurosat-cnn", 3, SHARED_EUROSAT, 13),
    ("eurosat-rgb", 1, SHARED / "data" / "eurosat_rgb_more", 3),
]


@pytest.fixture(scope="module", params=BUNDLED, ids=[f"{n}-v{v}" for n, v, _, _ in BUNDLED])
def bundled(request):  # type: ignore[no-untyped-def]
    name, version, data, bands = request.param
    pkg = ModelRepository(ROOT / "models").get(name, version)
    pkg.test_data, pkg.n_bands = data, bands
    return pkg


def test_bundled_package_is_valid(bundled) -> None:  # type: ignore[no-untyped-def]
    validate_item(bundled.item)
    bundled.verify()
    assert len(bundled.spec.bands) == bundled.n_bands and len(bundled.spec.classes) == 10
    assert (bundled.path / "split.json").is_file()
    assert bundled.model_path.stat().st_size < 8 * 2**20  # small enough to commit


@pytest.mark.shared_data
@pytest.mark.skipif(not SHARED_EUROSAT.is_dir(), reason="../shared/data is not here")
def test_bundled_metrics_reproduce_on_real_data(bundled) -> None:  # type: ignore[no-untyped-def]
    """Re-evaluating through the one predictor path gives exactly what the package records."""
    p = Predictor(bundled)
    report = evaluate(p, load_for_package(p, bundled.test_data, "test"))
    recorded = bundled.properties["eodeploy:metrics"]
    assert report["n"] == recorded["n"]
    assert report["accuracy"] == pytest.approx(recorded["accuracy"], abs=1e-9)
    assert report["confusion_matrix"] == recorded["confusion_matrix"]
    assert report["data_hash"] == p.package.properties["eodeploy:training"]["test_files_hash"]


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert [b.strip() for b in blocks[:2]] == ["make run", "make test"]
    targets = re.findall(r"^([a-z-]+):", (ROOT / "Makefile").read_text(), re.M)
    assert {"run", "test"} <= set(targets)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
