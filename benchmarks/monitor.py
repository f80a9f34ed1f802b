"""Monitoring cost per observation: how the time of a run grows with the area of interest, on a
large scene, and what the database adds (SQLite file vs the PostgreSQL server).

Builds a 5490 x 5490 px 13-band tile (a quarter Sentinel-2 tile, 3,014 km²) by tiling the real
Lahinch L1C scene in ../shared/data, shows it to the monitor as three dated scenes in a watched
folder, and runs ``run_monitoring`` for square areas of 1, 10 and 100 km² at the tile's centre
with the bundled model. Seconds per observation include reading, classifying the window around
the area, writing the COGs/polygons, measuring and storing. Prints a table, writes
benchmarks/results/monitor.{json,md}.

    python benchmarks/monitor.py [--size 5490] [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table
from scene import ROOT, build_tile

console = Console()


def square(cx: float, cy: float, km2: float, crs: str) -> dict:
    half = (km2**0.5) * 1000 / 2
    ring = [[cx - half, cy - half], [cx + half, cy - half], [cx + half, cy + half], [cx - half, cy + half]]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]], "crs_name": crs}


def measure(db_url: str, folder: Path, work: Path, km2: float, centre: tuple[float, float], crs: str) -> dict:
    from eodeploy.monitor.areas import AreaSpec, add_area
    from eodeploy.monitor.db import Database
    from eodeploy.monitor.run import run_monitoring
    from eodeploy.package import ModelRepository
    from eodeploy.settings import Settings

    cfg = Settings(
        model_repo=ROOT / "models", database_url=db_url, monitor_dir=work / f"out-{uuid.uuid4().hex[:6]}"
    )
    db = Database.from_settings(cfg)
    geom = square(*centre, km2, crs)
    geom.pop("crs_name")
    name = f"bench-{km2:g}km2-{uuid.uuid4().hex[:6]}"
    with db.session() as s:
        add_area(s, ModelRepository(cfg.model_repo), AreaSpec(
            name=name, geometry=geom, crs=crs, target_class="Pasture", source={"type": "folder", "path": str(folder)},
        ))  # fmt: skip
    t0 = time.perf_counter()
    report = run_monitoring(db, cfg, area=name)
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    again = run_monitoring(db, cfg, area=name)  # nothing new: the cost of an idle, idempotent run
    idle = time.perf_counter() - t1
    db.dispose()
    n = report.stored + report.cloudy
    assert n == 3 and again.already == 3, report.summary()
    return {"database": db_url.split(":", 1)[0].split("+")[0], "aoi_km2": km2, "observations": n,
            "seconds_per_observation": round(first / n, 2), "km2_per_s": round(km2 * n / first, 2),
            "idle_rerun_s": round(idle, 3)}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scene", type=Path,
                    default=ROOT.parent / "shared" / "data" / "sentinel2" / "lahinch_IE_s2l1c_2017-09-18.tif")  # fmt: skip
    ap.add_argument("--size", type=int, default=5490)
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    import rasterio

    work = Path(tempfile.mkdtemp(prefix="bench-monitor-", dir="/tmp"))
    folder = work / "inbox"
    folder.mkdir()
    tile = work / "tile.tif"
    with console.status(f"building a {args.size} px tile from {args.scene.name}"):
        build_tile(args.scene, tile, args.size)
    for d in ("2024-01-05", "2024-01-10", "2024-01-15"):
        (folder / f"s2_{d}.tif").symlink_to(tile)
    with rasterio.open(tile) as ds:
        b, crs = ds.bounds, ds.crs.to_string()
    centre = ((b.left + b.right) / 2, (b.bottom + b.top) / 2)
    scene_km2 = (b.right - b.left) * (b.top - b.bottom) / 1e6
    rows = []
    try:
        for km2 in (1, 10, 100):
            rows.append(measure(f"sqlite:///{work / 'm.db'}", folder, work, km2, centre, crs))
            console.print(rows[-1])
        if args.postgres:
            from sqlalchemy import create_engine, text

            name = f"eodeploy_bench_{uuid.uuid4().hex[:8]}"
            admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
            with admin.connect() as c:
                c.execute(text(f"CREATE DATABASE {name}"))
            try:
                rows.append(
                    measure(args.postgres.rsplit("/", 1)[0] + f"/{name}", folder, work, 10, centre, crs)
                )
                console.print(rows[-1])
            finally:
                with admin.connect() as c:
                    c.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                admin.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    title = f"monitoring, eurosat-cnn (latest), areas at the centre of a {args.size}² px scene ({scene_km2:,.0f} km²)"
    table = Table(title=title)
    cols = ["database", "area km²", "observations", "s / observation", "km²/s", "idle rerun s"]
    for c in cols:
        table.add_column(c, justify="right")
    md = [title, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["database"], f"{r['aoi_km2']:g}", str(r["observations"]), f"{r['seconds_per_observation']:.2f}",
                 f"{r['km2_per_s']:.1f}", f"{r['idle_rerun_s']:.3f}"]  # fmt: skip
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "monitor.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "scene_px": args.size,
                                                       "scene_km2": round(scene_km2, 1), "rows": rows}, indent=2))  # fmt: skip
    (args.out / "monitor.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
