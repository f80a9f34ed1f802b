"""FP32 vs INT8 vs FP16 vs pruned, on ONNX Runtime, OpenVINO and LiteRT, on the real test split.

Builds every variant of the default model in a temporary copy of the repository (the committed
one is not touched), then measures size, batch-1 latency, throughput at batch 1/8/32/128,
accuracy, macro-F1 and agreement with FP32. Prints a table, writes
benchmarks/results/optimize.{json,md}.

    python benchmarks/optimize.py [--data ../shared/data/eurosat] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from eodeploy.optimize import optimize_package
from eodeploy.optimize.calibration import evaluation_set
from eodeploy.optimize.measure import BATCHES, measure
from eodeploy.package import ModelRepository
from eodeploy.package.tflite import export_tflite
from eodeploy.runtime.predictor import Predictor

ROOT = Path(__file__).resolve().parents[1]
console = Console()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, default=ROOT / "models")
    ap.add_argument("--model", default="eurosat-cnn")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-optimize-"))
    shutil.copytree(args.repo / args.model, tmp / args.model)
    repo = ModelRepository(tmp)
    fp32 = repo.get(args.model)
    variants = {"FP32": fp32}
    with console.status("building INT8, FP16, pruned and TFLite variants"):
        variants["INT8"] = optimize_package(fp32, "int8", args.data)
        variants["FP16"] = optimize_package(fp32, "fp16", args.data)
        variants[f"pruned {args.prune:.0%}"] = optimize_package(
            fp32, "prune", args.data, prune_rate=args.prune
        )
        tflite = export_tflite(fp32, args.data)
    runs = [("FP32", "onnxruntime"), ("FP32", "openvino"), ("FP32", "litert"), ("INT8", "onnxruntime"),
            ("INT8", "openvino"), ("FP16", "onnxruntime"), (f"pruned {args.prune:.0%}", "onnxruntime")]  # fmt: skip
    source = Predictor(fp32)
    test = evaluation_set(source, args.data)
    reference = source.predict(test.images).class_ids
    rows = []
    for variant, backend in runs:
        p = Predictor(variants[variant], backend=backend)
        row = measure(p, test, reference, seconds=args.seconds)
        row["variant"] = variant
        row.pop("class_ids", None)
        recipe = variants[variant].properties.get("eodeploy:optimization")
        if recipe:
            row["recipe"] = recipe
        rows.append(row)
        console.print(f"{variant:12s} {backend:12s} {row['size_kib']:7.0f} KiB  b1 {row['throughput_b1']:6.0f}  "
                      f"b32 {row['throughput_b32']:6.0f} img/s  acc {row['accuracy']:.4f}  agree {row['agreement']:.4f}")  # fmt: skip
    report(rows, tflite, args.out)


def report(rows: list[dict], tflite: dict, out: Path) -> None:
    base = rows[0]
    best_fp32 = max(base[f"throughput_b{b}"] for b in BATCHES)
    cols = ["variant", "backend", "size KiB", "× smaller", "p50 ms", "p99 ms", *[f"b{b} img/s" for b in BATCHES],
            "× FP32 (best)", "accuracy", "macro-F1", "agreement"]  # fmt: skip
    table = Table(title="optimisation of the default model (2-core CPU)")
    for c in cols:
        table.add_column(c, justify="right")
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        best = max(r[f"throughput_b{b}"] for b in BATCHES)
        cells = [r["variant"], r["backend"], f"{r['size_kib']:.0f}", f"{base['size_kib'] / r['size_kib']:.2f}×",
                 f"{r['latency_ms_p50']:.2f}", f"{r['latency_ms_p99']:.2f}",
                 *[f"{r[f'throughput_b{b}']:.0f}" for b in BATCHES], f"{best / best_fp32:.2f}×",
                 f"{r['accuracy']:.2%}", f"{r['macro_f1']:.3f}", f"{r['agreement']:.1%}"]  # fmt: skip
        table.add_row(*cells)
        md.append("| " + " | ".join(cells) + " |")
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimize.json").write_text(
        json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows, "tflite": tflite}, indent=2)
    )
    (out / "optimize.md").write_text("\n".join(md) + "\n")
    console.print(f"wrote {out / 'optimize.json'} and {out / 'optimize.md'}")


if __name__ == "__main__":
    main()
