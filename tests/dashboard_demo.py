"""A monitoring database filled by a real run, for the dashboard's tests and benchmarks: the five
real Lahinch dates (three clear, two cloudy) seen by the bundled 13-band model, with an alert, and
an area on the Tawi-Tawi mangrove coast (Philippines) with no observation yet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
S2 = ROOT.parent / "shared" / "data" / "sentinel2"
#: A secret in a webhook URL, as Slack puts it: no page or response may show it.
SECRET = "T000SECRETTOKEN"
TAWITAWI = ROOT / "src/eodeploy/monitor/examples/tawitawi.geojson"
PALAWAN = {  # mangroves of Puerto Princesa Bay, Palawan: no scene in the shared data covers it
    "type": "Polygon",
    "coordinates": [[[118.75, 9.70], [118.77, 9.70], [118.77, 9.72], [118.75, 9.72], [118.75, 9.70]]],
}


def build_demo(folder: Path) -> dict[str, Any]:
    """Settings (as keyword arguments) of a database and map folder under ``folder``."""
    from eodeploy.monitor.areas import AreaSpec, add_area
    from eodeploy.monitor.db import Database
    from eodeploy.monitor.run import run_monitoring
    from eodeploy.package import ModelRepository
    from eodeploy.settings import Settings

    cfg = {
        "model_repo": ROOT / "models",
        "database_url": f"sqlite:///{folder / 'demo.db'}",
        "monitor_dir": folder / "monitoring",
    }
    settings = Settings(**cfg)  # type: ignore[arg-type]
    db = Database.from_settings(settings)
    repo = ModelRepository(cfg["model_repo"])
    geometry = json.loads((ROOT / "src/eodeploy/monitor/examples/lahinch.geojson").read_text())
    with db.session() as s:
        add_area(s, repo, AreaSpec(
            name="lahinch", geometry=geometry, target_class="Pasture", threshold_ha=0.5, alert_on="any",
            source={"type": "folder", "path": str(S2), "pattern": "lahinch_*.tif"},
            webhook_url=f"http://127.0.0.1:9/services/{SECRET}", emails=["ana.reyes@example.org"],
        ))  # fmt: skip
        add_area(s, repo, AreaSpec(
            name="tawi-tawi", geometry=json.loads(TAWITAWI.read_text()), model="eurosat-rgb",
            target_class="Forest", source={"type": "folder", "path": str(S2), "pattern": "tawitawi_*.tif"},
        ))  # fmt: skip
        add_area(s, repo, AreaSpec(
            name="palawan", geometry=PALAWAN, model="eurosat-rgb", target_class="Forest",
            source={"type": "folder", "path": str(S2), "pattern": "palawan_*.tif"},
        ))  # fmt: skip
    report = run_monitoring(db, settings, area="lahinch")
    assert (report.stored, report.cloudy) == (3, 2), report.summary()
    report = run_monitoring(db, settings, area="tawi-tawi")
    assert report.stored + report.cloudy == 1, report.summary()
    db.dispose()
    return cfg
