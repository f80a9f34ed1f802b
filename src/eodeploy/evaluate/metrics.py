"""Classification metrics from labels and predictions (no scikit-learn needed)."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro averages and the confusion matrix."""
    n = len(class_names)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(np.float64)
    pred_n, true_n = cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(pred_n > 0, tp / pred_n, 0.0)
        recall = np.where(true_n > 0, tp / true_n, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = true_n > 0
    per_class = {
        c: {
            "precision": round(float(precision[i]), 4),
            "recall": round(float(recall[i]), 4),
            "f1": round(float(f1[i]), 4),
            "support": int(true_n[i]),
        }
        for i, c in enumerate(class_names)
    }
    return {
        "n": int(len(y_true)),
        "accuracy": round(float(tp.sum() / max(1, len(y_true))), 4),
        "macro_precision": round(float(precision[present].mean()) if present.any() else 0.0, 4),
        "macro_recall": round(float(recall[present].mean()) if present.any() else 0.0, 4),
        "macro_f1": round(float(f1[present].mean()) if present.any() else 0.0, 4),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


#: What a package records of a classification report as its ``eodeploy:metrics``.
STORED_METRICS = (
    "n",
    "accuracy",
    "macro_f1",
    "macro_precision",
    "macro_recall",
    "per_class",
    "confusion_matrix",
)


def stored_metrics(report: dict[str, Any], split: str = "test") -> dict[str, Any]:
    """The ``eodeploy:metrics`` entry of a package for ``report`` on ``split``."""
    return {"split": split, **{k: report[k] for k in STORED_METRICS}}
