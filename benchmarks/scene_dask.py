"""Many scenes on Dask: scaling from 1 to 2 workers (one core each) against a single process.

Four 2048 x 2048 px 13-band scenes (tiled from the real Lahinch L1C scene) are classified by
``predict_scenes`` on a LocalCluster of 1 and of 2 single-threaded workers, and one after another
by ``predict_scene`` in this process (ONNX Runtime using both cores). Class maps must be
identical. Prints a table, writes benchmarks/results/scene_dask.{json,md}.

    python benchmarks/scene_dask.py [--scenes 4] [--size 2048]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rich.console import Console
from scene import build_tile  # type: ignore[import-not-found]

from eodeploy.geo import predict_scene
from eodeploy.geo.distributed import predict_scenes
from eodeploy.package import ModelRepository

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=4)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    src = ROOT.parent / "shared" / "data" / "sentinel2" / "lahinch_IE_s2l1c_2017-09-18.tif"
    work = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    scenes = []
    for i in range(args.scenes):
        scenes.append(work / f"scene{i}.tif")
        build_tile(src, scenes[-1], args.size)
    pkg = ModelRepository(ROOT / "models").get("eurosat-cnn")
    opts = {"stride": 32, "polygons": False}
    rows = []
    t0 = time.perf_counter()
    for s in scenes:
        predict_scene(pkg, s, work / "single" / s.stem, **opts)
    rows.append({"run": "single process (ORT 2 threads)", "seconds": time.perf_counter() - t0})
    for n in (1, 2):
        t0 = time.perf_counter()
        predict_scenes(pkg.path, scenes, work / f"dask{n}", n_workers=n, threads_per_worker=1, **opts)
        rows.append(
            {"run": f"Dask LocalCluster, {n} worker(s) x 1 thread", "seconds": time.perf_counter() - t0}
        )
    identical = all(
        np.array_equal(rasterio.open(work / "single" / s.stem / "classes.tif").read(1),
                       rasterio.open(work / "dask2" / s.stem / "classes.tif").read(1))
        for s in scenes
    )  # fmt: skip
    base = rows[1]["seconds"]
    md = ["| run | seconds | speed-up vs 1 worker |", "|---|---|---|"]
    for r in rows:
        r["speedup_vs_1_worker"] = round(base / r["seconds"], 2)
        md.append(f"| {r['run']} | {r['seconds']:.1f} | {r['speedup_vs_1_worker']:.2f}× |")
        console.print(f"{r['run']:45s} {r['seconds']:6.1f} s  {r['speedup_vs_1_worker']:.2f}x")
    console.print(f"class maps identical (single process vs 2 workers): {identical}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"scenes": args.scenes, "size_px": args.size, "stride": 32, "rows": rows, "identical": identical}
    (args.out / "scene_dask.json").write_text(json.dumps(result, indent=2))
    (args.out / "scene_dask.md").write_text("\n".join(md) + f"\n\nIdentical class maps: {identical}\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
