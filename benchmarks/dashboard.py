"""The dashboard in Debian's Chromium (Playwright) against a real ``eodeploy serve`` on 127.0.0.1,
over a database filled by a real monitoring run (tests/dashboard_demo.py):

1. first paint and first contentful paint of each page, and the JavaScript each page loads
   (targets: first paint <= 2 s; <= 300 KB of JavaScript on pages other than "Try it");
2. in-browser inference with onnxruntime-web (WASM, one thread) on each package's fused graph:
   session creation, batch 1 (median of 30) and batch 32 per patch (target <= 10 ms per patch);
3. browser vs server parity on the packages' whole recorded test splits: the browser runs the
   fused graph on the patches in the model's units, the server's path (``Predictor``) on the same
   raw patches (targets: max |dp| <= 1e-5, 100 % same class);
4. with ``--screenshots DIR``, a screenshot of each page (docs/img for docs/dashboard.md).

Prints a table and writes benchmarks/results/dashboard.json.

    python benchmarks/dashboard.py [--screenshots docs/img] [--limit N]
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the demo database and the live-server helper the tests use

from dashboard_demo import build_demo  # noqa: E402
from servers import live_server  # noqa: E402

console = Console()
PAGES = ("areas", "series", "alerts", "models", "try")
PACKAGES = (("eurosat-rgb", 1), ("eurosat-rgb", 2), ("eurosat-cnn", 3))
JS_BUDGET = 300_000
DATA = {
    "eurosat-rgb": ROOT.parent / "shared/data/eurosat_rgb_more",
    "eurosat-cnn": ROOT.parent / "shared/data/eurosat",
}

RUN_JS = """async ([model, b64, shape, repeats]) => {
  const s = await window.eodeployOrt.session(model);
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const input = new ort.Tensor("float32", new Float32Array(bytes.buffer), shape);
  const times = [];
  let out;
  for (let i = 0; i < repeats; i++) {
    const t0 = performance.now();
    out = await s.run({ [s.inputNames[0]]: input });
    times.push(performance.now() - t0);
  }
  return { times, probs: Array.from(out[s.outputNames[0]].data) };
}"""


def page_loads(page: Any, base: str, shots: Path | None) -> list[dict[str, Any]]:
    rows = []
    for slug in PAGES:
        query = {"series": "?area=lahinch", "areas": "?area=tawi-tawi"}.get(slug, "")
        page.goto(f"{base}/dashboard/{slug}{query}")
        page.wait_for_load_state("load")
        if slug == "areas":
            page.wait_for_selector(".tiles-classes img.leaflet-tile-loaded")
        if slug == "series":
            page.wait_for_function("window.eodeployChart !== undefined")
        page.wait_for_function("performance.getEntriesByType('paint').length >= 2")  # after 'load'
        paints = page.evaluate(
            "() => Object.fromEntries(performance.getEntriesByType('paint').map((e) => [e.name, e.startTime]))"
        )
        js = page.evaluate(
            "() => performance.getEntriesByType('resource')"
            ".filter((e) => e.name.endsWith('.js') || e.name.endsWith('.mjs'))"
            ".reduce((n, e) => n + e.decodedBodySize, 0)"
        )
        rows.append({
            "page": slug, "first_paint_ms": round(paints.get("first-paint", float("nan")), 1),
            "first_contentful_paint_ms": round(paints.get("first-contentful-paint", float("nan")), 1),
            "javascript_bytes": int(js),
        })  # fmt: skip
        if shots is not None:
            page.wait_for_timeout(400)
            page.screenshot(path=str(shots / f"dashboard-{slug}.png"), full_page=False)
    return rows


def b64(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, np.float32).tobytes()).decode()


def browser_runs(
    page: Any, base: str, limit: int | None, shots: Path | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from eodeploy.evaluate.report import load_for_package
    from eodeploy.package import ModelRepository
    from eodeploy.runtime.predictor import Predictor
    from eodeploy.runtime.preprocess import to_model_units

    page.goto(f"{base}/dashboard/try")
    page.wait_for_function("window.eodeployOrt !== undefined")
    speed, parity = [], []
    repo = ModelRepository(ROOT / "models")
    for name, version in PACKAGES:
        model = f"{name}/{version}"
        predictor = Predictor(repo.get(name, version), intra_op_threads=1)
        data = load_for_package(predictor, DATA[name], "test")
        x = data.images[:limit] if limit else data.images
        units = to_model_units(x, predictor.spec, data.band_names, "auto")
        t0 = time.perf_counter()
        page.evaluate("(m) => window.eodeployOrt.session(m)", model)
        created_s = time.perf_counter() - t0
        one = page.evaluate(RUN_JS, [model, b64(units[:1]), list(units[:1].shape), 30])
        b32 = units[:32]
        many = page.evaluate(RUN_JS, [model, b64(b32), list(b32.shape), 10])
        speed.append({
            "model": model, "session_s": round(created_s, 2),
            "batch1_ms": round(float(np.median(one["times"][1:])), 2),
            "batch32_ms_per_patch": round(float(np.median(many["times"][1:])) / len(b32), 2),
        })  # fmt: skip
        server = predictor.predict_proba(x, band_names=data.band_names, units="auto")
        worst, same = 0.0, 0
        with console.status(f"{model}: browser vs server on {len(x)} test patches"):
            for i in range(0, len(units), 64):
                part = units[i : i + 64]
                got = np.array(page.evaluate(RUN_JS, [model, b64(part), list(part.shape), 1])["probs"])
                got = got.reshape(len(part), -1)
                want = server[i : i + 64]
                worst = max(worst, float(np.abs(got - want).max()))
                same += int((got.argmax(1) == want.argmax(1)).sum())
        parity.append({"model": model, "patches": len(x), "max_abs_dp": worst, "same_class": same / len(x)})
        console.print(speed[-1], parity[-1])
    if shots is not None:  # the page after classifying a real patch
        page.select_option("#model", "eurosat-rgb/1")
        page.set_input_files("#file", str(sorted(DATA["eurosat-rgb"].rglob("*.jpg"))[123]))
        page.wait_for_function("window.eodeployTry !== undefined")
        page.screenshot(path=str(shots / "dashboard-try.png"), full_page=True)
    return speed, parity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--screenshots", type=Path, help="write a PNG of each page here")
    ap.add_argument("--limit", type=int, help="at most this many test patches per package (parity)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="bench-dashboard-", dir="/tmp"))
    with console.status("filling a database with a real monitoring run"):
        demo = build_demo(work)
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    env = {"EODEPLOY_DATABASE_URL": demo["database_url"], "EODEPLOY_MONITOR_DIR": str(demo["monitor_dir"]),
           "EODEPLOY_VERSION_POLICY": "all"}  # fmt: skip
    with live_server(ROOT / "models", work / "server.log", **env) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        loads = page_loads(page, server.http, args.screenshots)
        speed, parity = browser_runs(page, server.http, args.limit, args.screenshots)
        browser.close()

    table = Table(title="Dashboard pages (Chromium, localhost)")
    for col in ("page", "first paint (ms)", "first contentful (ms)", "JavaScript (KB)", "within 300 KB"):
        table.add_column(col)
    for r in loads:
        table.add_row(r["page"], f"{r['first_paint_ms']:.0f}", f"{r['first_contentful_paint_ms']:.0f}",
                      f"{r['javascript_bytes'] / 1000:.0f}",
                      "—" if r["page"] == "try" else ("yes" if r["javascript_bytes"] <= JS_BUDGET else "NO"))  # fmt: skip
    console.print(table)
    t2 = Table(title="In-browser inference (onnxruntime-web 1.30 WASM, 1 thread) and parity with the server")
    for col in (
        "model",
        "session (s)",
        "batch 1 (ms)",
        "batch 32 (ms/patch)",
        "test patches",
        "max |Δp|",
        "same class",
    ):
        t2.add_column(col)
    for s, p in zip(speed, parity):
        t2.add_row(s["model"], f"{s['session_s']:.2f}", f"{s['batch1_ms']:.2f}", f"{s['batch32_ms_per_patch']:.2f}",
                   str(p["patches"]), f"{p['max_abs_dp']:.1e}", f"{100 * p['same_class']:.2f} %")  # fmt: skip
    console.print(t2)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"pages": loads, "browser_inference": speed, "parity": parity,
              "targets": {"first_paint_ms": 2000, "javascript_bytes": JS_BUDGET, "ms_per_patch": 10,
                          "max_abs_dp": 1e-5, "same_class": 1.0}}  # fmt: skip
    (args.out / "dashboard.json").write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.out / 'dashboard.json'}")


if __name__ == "__main__":
    main()
