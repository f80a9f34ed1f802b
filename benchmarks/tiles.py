"""Map tiles from a Sentinel-2-tile-sized class COG: ms per tile by zoom, a 63-tile viewport, a
repeat tile from the cache.

Builds a 10980 x 10980 px uint8 class map with MODE overviews through the project's own
``to_cog``: the real Lahinch class map (eurosat-cnn over lahinch_IE_s2l1c_2017-09-18, 214 x 158
px at 10 m, its NaN pixels nodata) repeated to the tile's size, pixel for pixel, so class edges
are those of a real map at its real resolution (``--structure blocks``: 64 px blocks of random
classes instead, the shape of the reference measurement). Then, with the tile cache off (each
thread's open file handles and GDAL's block cache stay warm, as in a running server):
``render_tile`` on up to ``--samples`` random tiles intersecting the map at each zoom z9-z14
(p50/p95), a 9 x 7 viewport (63 tiles, DevSeed's icesat2 benchmark shape) in the map's middle at
z11-z14 one after another and on 2 worker threads, and a repeat tile through the cache.
Prints a table, writes benchmarks/results/tiles.{json,md}.

    python benchmarks/tiles.py [--size 10980] [--structure lahinch|blocks] [--samples 150]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console()
LAHINCH = ROOT.parent / "shared" / "data" / "sentinel2" / "lahinch_IE_s2l1c_2017-09-18.tif"
ZOOMS = range(9, 15)
VIEWPORT_ZOOMS = range(11, 15)
#: Targets of the dashboard anchors (../shared/reference/dashboard-mlops-anchors.md).
TARGET_P95_MS, TARGET_VIEWPORT_S, TARGET_REPEAT_MS = 50.0, 1.0, 5.0


def lahinch_classes(work: Path) -> tuple[np.ndarray, object, object]:
    """The real class map: eurosat-cnn (latest) over the Lahinch scene, with its CRS and transform."""
    import rasterio

    from eodeploy.geo import predict_scene
    from eodeploy.package import ModelRepository

    predict_scene(
        ModelRepository(ROOT / "models").get("eurosat-cnn"), LAHINCH, work / "lahinch", polygons=False
    )
    with rasterio.open(work / "lahinch" / "classes.tif") as src:
        return src.read(1), src.crs, src.transform


def build_cog(work: Path, size: int, structure: str) -> tuple[Path, float]:
    """The full-size class COG, written 512 rows at a time then through ``to_cog`` (MODE)."""
    import rasterio
    from rasterio.windows import Window

    from eodeploy.geo.infer import NODATA
    from eodeploy.geo.outputs import to_cog
    from eodeploy.package import ModelRepository
    from eodeploy.web.tiles import colormap_for

    spec = ModelRepository(ROOT / "models").get("eurosat-cnn").spec
    base, crs, transform = lahinch_classes(work)
    if structure == "blocks":
        rng = np.random.default_rng(0)
        blocks = rng.integers(0, len(spec.classes), (size // 64 + 1, size // 64 + 1)).astype(np.uint8)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 1, "dtype": "uint8", "crs": crs,
               "transform": transform, "nodata": NODATA, "tiled": True, "blockxsize": 512, "blockysize": 512,
               "BIGTIFF": "IF_SAFER"}  # fmt: skip
    raw = work / "work-classes.tif"
    with rasterio.open(raw, "w", **profile) as out:
        out.write_colormap(1, colormap_for(spec))
        for y in range(0, size, 512):
            h = min(512, size - y)
            rows = np.arange(y, y + h)
            if structure == "blocks":
                strip = np.repeat(blocks[rows // 64], 64, axis=1)[:, :size]
            else:
                strip = base[rows % base.shape[0]][:, np.arange(size) % base.shape[1]]
            out.write(strip, 1, window=Window(0, y, size, h))
    cog = work / "classes.tif"
    t0 = time.perf_counter()
    to_cog(raw, cog, "MODE")
    seconds = time.perf_counter() - t0
    raw.unlink()
    return cog, seconds


def ms(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=10980)
    ap.add_argument("--structure", choices=["lahinch", "blocks"], default="lahinch")
    ap.add_argument("--samples", type=int, default=150, help="random tiles measured per zoom")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--keep", action="store_true", help="keep the built COG")
    args = ap.parse_args()

    import morecantile
    import rasterio

    from eodeploy.web.tiles import TileCache, cog_bounds_wgs84, render_tile, tile_etag

    work = Path(tempfile.mkdtemp(prefix="bench-tiles-", dir="/tmp"))
    with console.status(f"building a {args.size} px class COG ({args.structure})"):
        cog, cog_s = build_cog(work, args.size, args.structure)
    with rasterio.open(cog) as src:
        overviews = src.overviews(1)
    console.print(f"COG {cog.stat().st_size / 1e6:.1f} MB, overviews {overviews}, built in {cog_s:.1f} s")
    tms = morecantile.tms.get("WebMercatorQuad")
    bounds = cog_bounds_wgs84(cog)
    rng = random.Random(0)

    def render(t: morecantile.Tile) -> bytes | None:
        tile = render_tile(cog, "classes", t.z, t.x, t.y, cache=None)
        return tile.png if tile else None

    render(next(iter(tms.tiles(*bounds, zooms=[12]))))  # imports and GDAL's first open, not measured
    rows = []
    for z in ZOOMS:
        tiles = list(tms.tiles(*bounds, zooms=[z]))
        sample = rng.sample(tiles, min(args.samples, len(tiles)))
        times, sizes = [], []
        for t in sample:
            t0 = time.perf_counter()
            png = render(t)
            times.append((time.perf_counter() - t0) * 1000)
            sizes.append(len(png or b""))
        rows.append({"zoom": z, "tiles_at_zoom": len(tiles), "measured": len(sample),
                     "p50_ms": round(pct(times, 50), 1), "p95_ms": round(pct(times, 95), 1),
                     "max_ms": round(max(times), 1), "png_kb_median": round(statistics.median(sizes) / 1024, 1)})  # fmt: skip
        console.print(rows[-1])

    viewports = []
    w, s, e, n = bounds
    for z in VIEWPORT_ZOOMS:
        centre = tms.tile((w + e) / 2, (s + n) / 2, z)
        grid = [
            morecantile.Tile(centre.x + dx, centre.y + dy, z) for dy in range(-3, 4) for dx in range(-4, 5)
        ]
        t0 = time.perf_counter()
        drawn = sum(render(t) is not None for t in grid)
        seq = time.perf_counter() - t0
        with ThreadPoolExecutor(2) as pool:
            t0 = time.perf_counter()
            list(pool.map(render, grid))
            two = time.perf_counter() - t0
        viewports.append({"zoom": z, "tiles": len(grid), "drawn": drawn, "sequential_s": round(seq, 3),
                          "two_threads_s": round(two, 3)})  # fmt: skip
        console.print(viewports[-1])

    cache = TileCache()
    t = tms.tile((w + e) / 2, (s + n) / 2, 13)
    render_tile(cog, "classes", t.z, t.x, t.y, cache=cache)
    repeat = [ms(lambda: render_tile(cog, "classes", t.z, t.x, t.y, cache=cache)) for _ in range(1000)]
    etag = [ms(lambda: tile_etag(cog, "classes", t.z, t.x, t.y)) for _ in range(1000)]
    cached = {"p50_ms": round(pct(repeat, 50), 3), "p95_ms": round(pct(repeat, 95), 3),
              "etag_p50_ms": round(pct(etag, 50), 3), "hits": cache.hits}  # fmt: skip

    table = Table(
        title=f"class tiles, {args.size}² px uint8 COG ({args.structure}), MODE overviews, cache off"
    )
    for c in ("zoom", "tiles at zoom", "measured", "p50 ms", "p95 ms", "max ms", "PNG KB"):
        table.add_column(c, justify="right")
    md = [
        "| zoom | tiles at zoom | measured | p50 ms | p95 ms | max ms | PNG KB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [str(r["zoom"]), f"{r['tiles_at_zoom']:,}", str(r["measured"]), f"{r['p50_ms']:.1f}",
                 f"{r['p95_ms']:.1f}", f"{r['max_ms']:.1f}", f"{r['png_kb_median']:.1f}"]  # fmt: skip
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    vt = Table(title="9 x 7 viewport (63 tiles) in the map's middle, cache off")
    for c in ("zoom", "drawn", "sequential s", "2 threads s"):
        vt.add_column(c, justify="right")
    md += ["", "| viewport zoom | drawn | sequential s | 2 threads s |", "|---|---|---|---|"]
    for v in viewports:
        cells = [str(v["zoom"]), str(v["drawn"]), f"{v['sequential_s']:.2f}", f"{v['two_threads_s']:.2f}"]
        vt.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(vt)
    worst_p95 = max(r["p95_ms"] for r in rows)
    worst_view = max(v["two_threads_s"] for v in viewports)
    checks = {
        f"p95 per tile ≤ {TARGET_P95_MS:.0f} ms": (worst_p95, worst_p95 <= TARGET_P95_MS),
        f"63-tile viewport, 2 threads ≤ {TARGET_VIEWPORT_S:.0f} s": (
            worst_view,
            worst_view <= TARGET_VIEWPORT_S,
        ),
        f"repeat tile p95 ≤ {TARGET_REPEAT_MS:.0f} ms": (
            cached["p95_ms"],
            cached["p95_ms"] <= TARGET_REPEAT_MS,
        ),
    }
    for name, (value, ok) in checks.items():
        console.print(f"{'[green]met' if ok else '[red]missed'}[/] {name}: {value}")
    md += [
        "",
        f"repeat tile (cache): p50 {cached['p50_ms']} ms, p95 {cached['p95_ms']} ms; ETag alone p50 {cached['etag_p50_ms']} ms",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"date": time.strftime("%Y-%m-%d"), "size_px": args.size, "structure": args.structure,
              "cog_mb": round(cog.stat().st_size / 1e6, 1), "cog_build_s": round(cog_s, 2), "overviews": overviews,
              "zooms": rows, "viewports": viewports, "repeat_tile": cached,
              "targets": {k: {"value": v, "met": ok} for k, (v, ok) in checks.items()}}  # fmt: skip
    suffix = "" if args.structure == "lahinch" else f"-{args.structure}"
    (args.out / f"tiles{suffix}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"tiles{suffix}.md").write_text("\n".join(md) + "\n")
    if args.keep:
        console.print(f"kept {cog}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
