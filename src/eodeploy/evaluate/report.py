"""Evaluate a package on labelled patches: metrics, a Rich table and a confusion-matrix PNG."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.data.eurosat import PatchDataset, Split, load_patch_folder
from eodeploy.errors import DataError
from eodeploy.evaluate.metrics import classification_report
from eodeploy.runtime.predictor import Predictor


def load_for_package(predictor: Predictor, data_dir: str | Path, split: str | None) -> PatchDataset:
    """Labelled patches for ``predictor``'s classes; ``split`` picks the recorded split's part."""
    spec = predictor.spec
    data = load_patch_folder(data_dir, class_names=spec.class_names)
    if not set(spec.bands) <= set(data.band_names) and data.images.shape[1] == len(spec.bands):
        data.band_names = list(spec.bands)  # bands the files do not name: assume the model's order
    if split in (None, "all"):
        return data
    split_file = predictor.package.path / "split.json"
    if not split_file.is_file():
        raise DataError(
            f"package {predictor.package.name} v{predictor.package.version} records no split; "
            "evaluate with --split all"
        )
    recorded = Split.from_json(split_file.read_text())
    return data.subset(getattr(recorded, split))


def evaluate(predictor: Predictor, data: PatchDataset, batch_size: int = 64) -> dict[str, Any]:
    # Files say what they hold (8-bit JPEG, uint16 DN): an RGB model evaluates on 13-band files too.
    pred = predictor.predict(data.images, band_names=data.band_names, batch_size=batch_size, units="auto")
    report = classification_report(data.labels, pred.class_ids, predictor.spec.class_names)
    report["mean_confidence"] = round(float(pred.confidence.mean()), 4)
    report["data_hash"] = data.files_hash()
    report["model"] = {"name": predictor.package.name, "version": predictor.package.version}
    report["evaluated"] = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    report["errors"] = [
        {"file": f, "true": predictor.spec.class_names[t], "predicted": n}
        for f, t, p, n in zip(data.files, data.labels, pred.class_ids, pred.class_names)
        if t != p
    ]
    return report


def plot_confusion(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    from eodeploy._lazy import lazy_import

    lazy_import("matplotlib", "plot")  # not in the server image: a clear error naming the extra
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(report["confusion_matrix"])
    names = report["class_names"]
    with np.errstate(invalid="ignore"):
        norm = np.nan_to_num(cm / cm.sum(axis=1, keepdims=True))
    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                        color="white" if norm[i, j] > 0.5 else "black", fontsize=9)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(
        title or f"accuracy {report['accuracy']:.1%}, macro-F1 {report['macro_f1']:.3f} (n={report['n']})"
    )
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def report_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    t = Table(
        title=f"accuracy {report['accuracy']:.2%} · macro-F1 {report['macro_f1']:.3f} · n={report['n']}"
    )
    for col in ("class", "precision", "recall", "F1", "support"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c, m in report["per_class"].items():
        t.add_row(c, f"{m['precision']:.3f}", f"{m['recall']:.3f}", f"{m['f1']:.3f}", str(m["support"]))
    return t


def confusion_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    names = report["class_names"]
    t = Table(title="confusion matrix (rows: true, columns: predicted class number)")
    t.add_column("true class")
    for i in range(len(names)):
        t.add_column(str(i), justify="right")
    for i, (n, row) in enumerate(zip(names, report["confusion_matrix"])):
        t.add_row(f"{i} {n}", *[str(v) if v else "·" for v in row])
    return t
