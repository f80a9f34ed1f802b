"""Monitoring hardening (issue 12): area folders, failure isolation, the database under
concurrency (migrations, leases, outbox, conflicts, busy), secrets in responses and the URL guard.
Real SQLite and PostgreSQL, real HTTP servers on 127.0.0.1, real threads and processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update

import test_monitor
from eodeploy.monitor.areas import add_area
from eodeploy.monitor.db import Area, Database
from eodeploy.monitor.report import time_series
from eodeploy.monitor.run import run_monitoring
from eodeploy.package import ModelRepository
from test_monitor import map_ha, scene, settings, spec

db_url = test_monitor.db_url  # the same fresh SQLite file / PostgreSQL database per test


def test_dotted_area_names_get_their_own_folders_and_one_failing_area_stays_alone(
    repo: ModelRepository, tmp_path: Path, db_url: str
) -> None:
    """'farm.north' and 'farm.south' used to share 'farm/' (each observation pointed at the other's
    maps); an area whose model lost its target class (ValueError) used to abort the whole run."""
    north, south = tmp_path / "north", tmp_path / "south"
    north.mkdir()
    south.mkdir()
    scene(north / "s2_2024-06-01.tif", 120)
    scene(south / "s2_2024-06-01.tif", 40, seed=1)
    cfg = settings(tmp_path, repo, db_url)
    db = Database.from_settings(cfg)
    with db.session() as s:
        add_area(s, repo, spec(north, name="farm.north"))
        add_area(s, repo, spec(south, name="farm.south"))
        add_area(s, repo, spec(north, name="broken"))  # sorted first: it runs before the farms
    with db.session() as s:  # as if the latest model no longer had the class: measure_area's ValueError
        s.execute(update(Area).where(Area.name == "broken").values(target_class="Mangrove"))
    report = run_monitoring(db, cfg)
    assert report.stored == 2, report.summary()
    (failure,) = report.failures
    assert failure["area"] == "broken" and "ValueError" in failure["error"]
    with db.session() as s:
        (n,) = time_series(s, "farm.north")["observations"]
        (so,) = time_series(s, "farm.south")["observations"]
    assert n["outputs"] != so["outputs"]
    assert Path(n["outputs"]).parent.name == "farm.north"
    for o in (n, so):  # each observation's maps are its own
        assert o["estimate_ha"] == pytest.approx(map_ha(Path(o["outputs"])), rel=0.02)
    db.dispose()
