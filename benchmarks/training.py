"""Repeated-split evaluation of `eodeploy train`: test accuracy mean and spread over seeds.

    python benchmarks/training.py --data ../shared/data/eurosat --seeds 0 1 2 --arch compact-cnn

Prints a table and writes benchmarks/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from eodeploy.data import load_patch_folder, stratified_split
from eodeploy.train.pipeline import fit_split
from eodeploy.train.trainer import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/eurosat"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arch", default="compact-cnn")
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--patience", type=int, default=40)
    ap.add_argument(
        "--refit", action="store_true", help="retrain on train+val for the early-stopped epoch count"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"))
    args = ap.parse_args()

    data = load_patch_folder(args.data)
    rows = []
    console = Console()
    for seed in args.seeds:
        cfg = TrainConfig(
            arch=args.arch, epochs=args.epochs, patience=args.patience, seed=seed, refit=args.refit
        )
        t0 = time.perf_counter()
        _, result, report = fit_split(data, stratified_split(data, seed=seed), cfg)
        rows.append({
            "seed": seed, "test_accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "n_test": report["n"], "best_epoch": result.best_epoch,
            "val_accuracy": round(result.best_val_accuracy, 4), "seconds": round(time.perf_counter() - t0, 1),
        })  # fmt: skip
        console.print(rows[-1])
    acc = np.array([r["test_accuracy"] for r in rows])
    summary = {
        "arch": args.arch,
        "config": asdict(TrainConfig(arch=args.arch, epochs=args.epochs, patience=args.patience)),
        "data": str(args.data),
        "n_images": len(data),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "runs": rows,
        "test_accuracy_mean": round(float(acc.mean()), 4),
        "test_accuracy_std": round(float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, 4),
    }
    table = Table(title=f"{args.arch} on {args.data} ({len(data)} patches), stratified 60/20/20 splits")
    for col in ("seed", "test acc", "macro-F1", "n test", "best epoch", "val acc", "seconds"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            *(
                str(r[k])
                for k in (
                    "seed",
                    "test_accuracy",
                    "macro_f1",
                    "n_test",
                    "best_epoch",
                    "val_accuracy",
                    "seconds",
                )
            )
        )
    table.add_row(
        "mean ± sd",
        f"{summary['test_accuracy_mean']:.3f} ± {summary['test_accuracy_std']:.3f}",
        "",
        "",
        "",
        "",
        "",
    )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
