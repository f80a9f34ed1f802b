"""Repeated-split evaluation of `eodeploy train`: test accuracy mean and spread over seeds.

    # the 13-band compact CNN, seeded 60/20/20 splits
    python benchmarks/training.py --data ../shared/data/eurosat --seeds 0 1 2 --refit
    # the RGB network, a second seed of the bundled recipe
    python benchmarks/training.py --data ../shared/data/eurosat_rgb_more --arch resnet10 --seeds 1 \
        --epochs 30 --batch-size 128 --no-tta --out benchmarks/results/training-rgb.json
    # the 13-band network started from the RGB one, 5-fold over the patches whose RGB twin the
    # RGB network never trained on (its test split), so no fold tests on a patch seen in pretraining
    python benchmarks/training.py --data ../shared/data/eurosat --init-from models/eurosat-rgb/1 \
        --folds-from models/eurosat-rgb/1 --seeds 0 1 2 3 4 --epochs 60 --lr 1e-3 --no-tta

Prints a table and writes benchmarks/results/training.json (or --out).
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
from eodeploy.data.eurosat import PatchDataset, Split, patch_group
from eodeploy.train.pipeline import fit_split
from eodeploy.train.trainer import TrainConfig


def heldout_folds(data: PatchDataset, source: Path, k: int, fold: int) -> Split:
    """Fold ``fold`` of ``k``: test = a k-th of the patches whose twin is in ``source``'s test
    split; validation = a seeded 20 % of the rest; train = the remainder."""
    unseen = {patch_group(f) for f in json.loads((source / "split.json").read_text())["test"]}
    pool = sorted(f for f in data.files if patch_group(f) in unseen)
    order = np.random.default_rng(1234).permutation(len(pool))
    test = sorted(pool[i] for i in order[fold::k])
    rest = [f for f in data.files if f not in set(test)]
    inner = stratified_split(data.subset(rest), seed=fold, val=0.2, test=0.0)
    return Split(fold, sorted(inner.train), sorted(inner.val), test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data/eurosat"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arch", default="compact-cnn")
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--patience", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--no-tta", dest="tta", action="store_false")
    ap.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: all cores)")
    ap.add_argument("--init-from", type=Path, help="package folder to start the network from")
    ap.add_argument("--folds-from", type=Path, help="k-fold over the patches in this package's test split")
    ap.add_argument(
        "--refit", action="store_true", help="retrain on train+val for the early-stopped epoch count"
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/training.json"))
    args = ap.parse_args()

    data = load_patch_folder(args.data)
    rows = []
    console = Console()
    base = TrainConfig(
        arch=args.arch, epochs=args.epochs, patience=args.patience, refit=args.refit, tta=args.tta,
        batch_size=args.batch_size, lr=args.lr, init_from=str(args.init_from) if args.init_from else None,
        threads=args.threads,
    )  # fmt: skip
    if base.init_from:
        from dataclasses import replace

        from eodeploy.package import ModelPackage
        from eodeploy.train.transfer import source_arch

        base = replace(base, arch=source_arch(ModelPackage(base.init_from)))
    for seed in args.seeds:
        cfg = TrainConfig(**{**asdict(base), "seed": seed})
        split = (
            heldout_folds(data, args.folds_from, len(args.seeds), seed)
            if args.folds_from
            else stratified_split(data, seed=seed)
        )
        t0 = time.perf_counter()
        _, result, report = fit_split(data, split, cfg)
        rows.append({
            "seed": seed, "test_accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "n_test": report["n"], "best_epoch": result.best_epoch,
            "val_accuracy": round(result.best_val_accuracy, 4), "seconds": round(time.perf_counter() - t0, 1),
            "confusion_matrix": report["confusion_matrix"],
        })  # fmt: skip
        console.print({k: v for k, v in rows[-1].items() if k != "confusion_matrix"})
    acc = np.array([r["test_accuracy"] for r in rows])
    n_right = sum(r["test_accuracy"] * r["n_test"] for r in rows)
    n_test = sum(r["n_test"] for r in rows)
    summary = {
        "arch": base.arch,
        "config": asdict(base),
        "data": str(args.data),
        "n_images": len(data),
        "splits": f"5-fold over {args.folds_from}'s test twins"
        if args.folds_from
        else "seeded 60/20/20 by patch",
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "runs": rows,
        "test_accuracy_mean": round(float(acc.mean()), 4),
        "test_accuracy_std": round(float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, 4),
        "test_accuracy_pooled": round(n_right / max(n_test, 1), 4),
    }
    table = Table(title=f"{base.arch} on {args.data} ({len(data)} patches), {summary['splits']}")
    cols = ("seed", "test_accuracy", "macro_f1", "n_test", "best_epoch", "val_accuracy", "seconds")
    for col in ("seed", "test acc", "macro-F1", "n test", "best epoch", "val acc", "seconds"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(str(r[k]) for k in cols))
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
