"""Optimisation: INT8 quantisation, FP16, structured pruning — each a new package version."""

from eodeploy.optimize.methods import OptimizationError
from eodeploy.optimize.pipeline import optimize_package

__all__ = ["OptimizationError", "optimize_package"]
