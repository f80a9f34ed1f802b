"""What request sampling for drift costs the server, and the drift scores of the real cases.

1. Serving throughput with sampling off, at the default rate (1 request in 10) and on every
   request, on three ``eodeploy serve`` processes started together and loaded in turn (off, 1/10,
   1/1, repeated in rotated order), one real EuroSAT patch per OIP binary request, through
   benchmarks/loadgen.py in its own process. Target: ≤ 3 % throughput lost at the default rate.
2. The cost of ``ServingDrift.observe`` itself, in process: a request that is not sampled and one
   that is (the CPU time the hook adds on the event loop).
3. Drift scores of the real cases (eurosat-cnn v3): the Lahinch dates, the same +1000 DN, the
   storm date unmasked, the Thailand L2A cell.

Prints tables, writes benchmarks/results/drift.json.

    python benchmarks/drift_overhead.py [--duration 8] [--repeats 3] [--connections 1,32]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import serving  # noqa: E402  (the serving benchmark's server, payload and load-generator machinery)

ROOT = HERE.parent
S2 = ROOT.parent / "shared" / "data" / "sentinel2"
console = Console()
RATES = {"off": 0, "1 in 10 (default)": 10, "every request": 1}


def throughput(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    x = serving.sample_patch(args.data)
    payload = serving.bodies(x, tmp)["oip_binary"]
    servers, ports = [], {}
    for label, every in RATES.items():
        port = serving.free_port()
        env = {"EODEPLOY_CACHE_MIB": "0", "EODEPLOY_LOG_JSON": "false", "EODEPLOY_POLL_INTERVAL_S": "0",
               "EODEPLOY_DRIFT_SAMPLE_EVERY": str(every), "EODEPLOY_DASHBOARD": "false",
               "EODEPLOY_DATABASE_URL": f"sqlite:///{tmp / f'db-{every}.db'}"}  # fmt: skip
        cmd = [sys.executable, "-c", "from eodeploy.cli.main import main; main()", "serve", str(args.repo),
               "--port", str(port), "--grpc-port", "0"]  # fmt: skip
        servers.append(serving.Server(f"drift-{every}", cmd, f"http://127.0.0.1:{port}/v2/health/ready", env))
        ports[label] = port
    rows: list[dict[str, Any]] = []
    for s in servers:
        s.__enter__()
    try:
        for label, port in ports.items():
            serving.check_answer(label, f"http://127.0.0.1:{port}", payload)
        for c in args.connections:
            for rep in range(args.repeats):
                order = list(ports.items())
                order = order[rep % len(order) :] + order[: rep % len(order)]  # rotated: no rate always first
                for label, port in order:  # interleaved: drift of the machine hits all alike
                    r = serving.load(f"127.0.0.1:{port}", payload, c, args.duration)
                    r.update(rate=label, repeat=rep)
                    rows.append(r)
                    console.print(f"  c={c:<3d} {label:18s} #{rep}  {r['throughput']:7.1f} req/s  "
                                  f"p50 {r['p50_ms'] or 0:6.2f} ms  p99 {r['p99_ms'] or 0:6.2f} ms  {r['status']}")  # fmt: skip
    finally:
        for s in servers:
            s.__exit__(None, None, None)
    return rows


def hook_cost(repo: Path, data: Path) -> dict[str, float]:
    """µs per ``observe`` call: not sampled, sampled (1-patch and 32-patch requests)."""
    from eodeploy.mlops.sketch import ServingDrift
    from eodeploy.package import ModelRepository

    pkg = ModelRepository(repo).get("eurosat-cnn")
    served = SimpleNamespace(name=pkg.name, version=pkg.version, spec=pkg.spec, package=pkg)
    x1 = serving.sample_patch(data)
    out = {}
    for label, x in (("1 patch", x1), ("32 patches", np.repeat(x1, 32, axis=0))):
        proba = np.full((len(x), len(pkg.spec.class_names)), 0.1, np.float32)
        for every, name in ((10**9, "not sampled"), (1, "sampled")):
            d = ServingDrift(every=every, window_s=1e9)
            d.observe(served, x, None, "auto", proba)  # the first request of a window is sampled
            n = 20000 if every > 1 else 3000
            t0 = time.perf_counter()
            for _ in range(n):
                d.observe(served, x, None, "auto", proba)
            out[f"{label}, {name}"] = round((time.perf_counter() - t0) / n * 1e6, 2)
    return out


def real_cases(repo: Path, tmp: Path) -> list[dict[str, Any]]:
    import rasterio

    from eodeploy.geo.drift import scene_shift
    from eodeploy.geo.sources import open_scene
    from eodeploy.mlops.drift import observation_drift, signed_shifts
    from eodeploy.package import ModelRepository

    pkg = ModelRepository(repo).get("eurosat-cnn", 3)
    ref = pkg.properties["eodeploy:reference_stats"]

    def shift(path: Path, bands: list[str] | None = None) -> dict[str, Any]:
        spec = pkg.spec
        if bands:
            scaling = [v for b, v in zip(spec.bands, spec.value_scaling) if b in bands]
            spec = dataclasses.replace(spec, bands=bands, value_scaling=scaling)
        scene = open_scene(path, spec.bands)
        try:
            return scene_shift(scene, spec, ref)  # type: ignore[return-value]
        finally:
            scene.close()

    def variant(src: Path, add: float, keep: int) -> Path:
        dst = tmp / f"{src.stem}-{add:+.0f}-{keep}.tif"
        with rasterio.open(src) as s:
            arr, profile, names = s.read(list(range(1, keep + 1))), s.profile, s.descriptions[:keep]
        arr[:13] += add
        profile.update(count=keep)
        with rasterio.open(dst, "w", **profile) as d:
            d.write(arr)
            d.descriptions = names
        return dst

    lahinch = {
        d: S2 / f"lahinch_IE_s2l1c_{d}.tif" for d in ("2017-09-18", "2017-09-21", "2017-09-26", "2017-10-18")
    }
    cases = [(f"Lahinch {d}, clear", p, None) for d, p in list(lahinch.items())[:3]]
    cases += [(f"Lahinch {d} +1000 DN", variant(p, 1000, 15), None) for d, p in list(lahinch.items())[:3]]
    cases += [("Lahinch 2017-10-18 (storm), masked", lahinch["2017-10-18"], None),
              ("Lahinch 2017-10-18 (storm), unmasked", variant(lahinch["2017-10-18"], 0, 13), None),
              ("Thailand L2A 2020-02-23 (12 bands)", S2 / "majortom_199U_1099R_TH_s2l2a_2020-02-23",
               [b for b in pkg.spec.bands if b != "B10"])]  # fmt: skip
    baseline = [signed_shifts(shift(p)) for p in list(lahinch.values())[:3]]
    rows = []
    for name, path, bands in cases:
        s = shift(path, bands)
        # Against the baseline of the three clear dates (the clear dates are that baseline: not judged).
        o = observation_drift(s, [] if name.endswith(", clear") else baseline)
        rows.append({
            "case": name, "clear_pixels": s.get("clear_pixels"), "median_shift": s.get("median_shift"),
            "reference_flagged": o["reference"]["flagged"] if o else None,
            "bands_over_1_iqr": len(s.get("bands_flagged", [])),
            "baseline_median_z": o["baseline"].get("median_z") if o else None,
            "baseline_flagged": o["baseline"]["flagged"] if o else None,
            "cause": (o["reference"].get("causes") or [""])[0][:70] if o else "",
        })  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT / "models")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat")
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--connections", type=lambda s: [int(c) for c in s.split(",")], default=[1, 32])
    ap.add_argument("--skip-load", action="store_true", help="only the hook cost and the real cases")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    result: dict[str, Any] = {"machine": serving.machine(), "date": time.strftime("%Y-%m-%d")}

    result["real_cases"] = cases = real_cases(args.repo, tmp)
    t = Table(title="drift of the real cases (eurosat-cnn v3; baseline: the 3 clear Lahinch dates)")
    for c in ("case", "clear px", "median shift", "bands > 1 IQR", "reference", "baseline z", "baseline"):
        t.add_column(c, justify="left" if c == "case" else "right")
    for r in cases:
        t.add_row(r["case"], str(r["clear_pixels"]), "-" if r["median_shift"] is None else f"{r['median_shift']:.2f}",
                  str(r["bands_over_1_iqr"]), "flagged" if r["reference_flagged"] else "-",
                  "-" if r["baseline_median_z"] is None else f"{r['baseline_median_z']:.1f}",
                  "flagged" if r["baseline_flagged"] else "-")  # fmt: skip
    console.print(t)

    result["hook_us"] = hook = hook_cost(args.repo, args.data)
    console.print({"observe() µs per request": hook})

    if not args.skip_load:
        rows = throughput(args, tmp)
        result["load"] = rows
        summary = []
        t = Table(title="serving throughput with drift sampling (OIP REST binary, 1 patch per request)")
        for c in ("clients", "sampling", "req/s (median)", "runs", "vs off", "p50 ms", "p99 ms", "non-200"):
            t.add_column(c, justify="left" if c == "sampling" else "right")
        for c in args.connections:
            off = statistics.median(
                r["throughput"] for r in rows if r["connections"] == c and r["rate"] == "off"
            )
            for label in RATES:
                mine = [r for r in rows if r["connections"] == c and r["rate"] == label]
                med = statistics.median(r["throughput"] for r in mine)
                bad = sum(sum(v for k, v in r["status"].items() if k != "200") + r["errors"] for r in mine)
                row = {"connections": c, "rate": label, "throughput": med, "overhead_pct": 100 * (1 - med / off),
                       "runs": [round(r["throughput"], 1) for r in mine],
                       "p50_ms": statistics.median(r["p50_ms"] for r in mine),
                       "p99_ms": statistics.median(r["p99_ms"] for r in mine), "non_200": bad}  # fmt: skip
                summary.append(row)
                t.add_row(str(c), label, f"{med:.0f}", " ".join(f"{v:.0f}" for v in row["runs"]),
                          "-" if label == "off" else f"{-row['overhead_pct']:+.1f} %",
                          f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}", str(bad))  # fmt: skip
        result["summary"] = summary
        console.print(t)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "drift.json").write_text(json.dumps(result, indent=2, default=str))
    console.print(f"wrote {args.out / 'drift.json'}")


if __name__ == "__main__":
    main()
