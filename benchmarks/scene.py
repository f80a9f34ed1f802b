"""Scene inference at Sentinel-2 tile scale: km²/s, wall time, peak memory, pipeline efficiency.

Builds a full 10980 x 10980 px, 13-band uint16 tile (and a quarter tile) by tiling the real
Lahinch L1C scene in ../shared/data (no full tile is there), runs ``predict_scene`` on each in its
own process (peak RSS from getrusage), and measures the same model on the same windows already in
memory in the same run. Prints a table, writes benchmarks/results/scene.{json,md}.

    python benchmarks/scene.py [--size 10980] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console()
EUROSAT_ORDER = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]


def build_tile(src: Path, dst: Path, size: int) -> None:
    """Repeat the real scene to ``size`` x ``size`` px, written 512 rows at a time (tiled GeoTIFF)."""
    import rasterio
    from rasterio.windows import Window

    from eodeploy.geo.sources import normalize_band

    with rasterio.open(src) as s:
        names = [normalize_band(d or "") for d in s.descriptions]
        idx = [names.index(b) + 1 for b in EUROSAT_ORDER]
        base = s.read(idx)
        transform = s.transform
        crs = s.crs
    base = np.where(np.isfinite(base), base, 0).clip(0, 65535).astype(np.uint16)
    reps_x = int(np.ceil(size / base.shape[2]))
    row_band = np.tile(base, (1, 1, reps_x))[:, :, :size]
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 13, "dtype": "uint16", "crs": crs,
               "transform": transform, "nodata": 0, "tiled": True, "blockxsize": 512, "blockysize": 512, "BIGTIFF": "YES"}  # fmt: skip
    with rasterio.open(dst, "w", **profile) as out:
        for i, b in enumerate(EUROSAT_ORDER, 1):
            out.set_band_description(i, b)
        for y in range(0, size, 512):
            h = min(512, size - y)
            rows = np.arange(y, y + h) % base.shape[1]
            out.write(row_band[:, rows], window=Window(0, y, size, h))


def run_one(tile: str, stride: int, out: str) -> dict:
    """In a fresh process: one scene, no polygons (a full-tile polygonisation is a separate cost)."""
    from eodeploy.geo import predict_scene
    from eodeploy.package import ModelRepository

    t0 = time.perf_counter()
    stats = predict_scene(
        ModelRepository(ROOT / "models").get("eurosat-cnn"),
        tile,
        out,
        stride=stride,
        polygons=False,
        overwrite=True,
    )
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_rss_mb": peak_rss_mb(), **stats}


def peak_rss_mb() -> float:
    """This process's own peak (VmHWM). getrusage's ru_maxrss survives exec on Linux, so a child
    started by a process that once used more memory would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_memory(tile: Path, n: int = 4096) -> float:
    """The same model on the same kind of windows, already in memory: windows/s."""
    import rasterio
    from rasterio.windows import Window

    from eodeploy.package import ModelRepository
    from eodeploy.runtime.predictor import Predictor

    p = Predictor(ModelRepository(ROOT / "models").get("eurosat-cnn"))
    with rasterio.open(tile) as src:
        strip = src.read(window=Window(0, 0, src.width, 64)).astype(np.float32)
    xs = np.arange(0, strip.shape[2] - 63, 64)
    windows = np.stack([strip[:, :, x : x + 64] for x in xs])
    windows = np.concatenate([windows] * int(np.ceil(n / len(windows))))[:n]
    p.predict_proba(windows[:256], batch_size=256)
    best = 0.0
    for _ in range(3):  # best of three: the limit, not a noisy sample of it
        t0 = time.perf_counter()
        p.predict_proba(windows, batch_size=256)
        best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--scene",
        type=Path,
        default=ROOT.parent / "shared" / "data" / "sentinel2" / "lahinch_IE_s2l1c_2017-09-18.tif",
    )
    ap.add_argument("--size", type=int, default=10980)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the built tiles")
    ap.add_argument("--run", nargs=3, metavar=("TILE", "STRIDE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run:
        print(json.dumps(run_one(args.run[0], int(args.run[1]), args.run[2])))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-scene-", dir="/tmp"))
    full, quarter = work / "full.tif", work / "quarter.tif"
    with console.status(f"building a {args.size} px tile and a quarter tile from {args.scene.name}"):
        build_tile(args.scene, full, args.size)
        build_tile(args.scene, quarter, args.size // 2)
    limit = in_memory(full)
    console.print(f"in-memory: {limit:.0f} windows/s")
    rows = []
    for name, tile, stride in (
        ("full", full, 64),
        ("full", full, 32),
        ("quarter", quarter, 64),
        ("quarter", quarter, 32),
    ):
        res = subprocess.run([sys.executable, __file__, "--run", str(tile), str(stride), str(work / f"out-{name}-{stride}")],
                             capture_output=True, text=True, check=True)  # fmt: skip
        r = json.loads(res.stdout.strip().splitlines()[-1])
        km2 = r["total_ha"] / 100
        pipeline_s = r["seconds"]
        row = {"tile": name, "size_px": r["size_px"], "stride": stride, "windows": r["windows"], "km2": round(km2, 1),
               "wall_s": round(r["wall_s"], 1), "km2_per_s": round(km2 / r["wall_s"], 2),
               "windows_per_s": round(r["windows"] / r["wall_s"], 1), "inference_s": r["inference_seconds"],
               "efficiency": round(r["windows"] / r["wall_s"] / limit, 3), "peak_rss_mb": round(r["peak_rss_mb"], 1),
               "pipeline_s": pipeline_s}  # fmt: skip
        rows.append(row)
        console.print(row)
    table = Table(title=f"scene inference, eurosat-cnn (latest), in-memory limit {limit:.0f} windows/s")
    cols = [
        "tile",
        "px",
        "stride",
        "windows",
        "km²",
        "wall s",
        "km²/s",
        "windows/s",
        "efficiency",
        "peak RSS MB",
    ]
    for c in cols:
        table.add_column(c, justify="right")
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["tile"], f"{r['size_px'][0]}²", str(r["stride"]), f"{r['windows']:,}", f"{r['km2']:,.0f}", f"{r['wall_s']:.0f}",
                 f"{r['km2_per_s']:.2f}", f"{r['windows_per_s']:.0f}", f"{r['efficiency']:.0%}", f"{r['peak_rss_mb']:.0f}"]  # fmt: skip
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scene.json").write_text(
        json.dumps(
            {"date": time.strftime("%Y-%m-%d"), "in_memory_windows_per_s": limit, "rows": rows}, indent=2
        )
    )
    (args.out / "scene.md").write_text(f"In-memory limit: {limit:.0f} windows/s\n\n" + "\n".join(md) + "\n")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
