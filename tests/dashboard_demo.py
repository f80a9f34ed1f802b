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
TAWITAWI = {  # inside the shared Tawi-Tawi scene (119.767-119.840 E, 5.062-5.135 N)
    "type": "Polygon",
    "coordinates": [[[119.79, 5.08], [119.81, 5.08], [119.81, 5.10], [119.79, 5.10], [119.79, 5.08]]],
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
            name="tawi-tawi", geometry=TAWITAWI, model="eurosat-rgb", target_class="Forest",
            source={"type": "folder", "path": str(S2), "pattern": "tawitawi_*_2099-*.tif"},
        ))  # fmt: skip
    report = run_monitoring(db, settings, area="lahinch")
    assert (report.stored, report.cloudy) == (3, 2), report.summary()
    db.dispose()
    return cfg
