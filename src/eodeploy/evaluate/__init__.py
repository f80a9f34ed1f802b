"""Evaluating packages: metrics, tables and plots."""

from eodeploy.evaluate.metrics import classification_report, confusion_matrix
from eodeploy.evaluate.report import evaluate, plot_confusion

__all__ = ["classification_report", "confusion_matrix", "evaluate", "plot_confusion"]
