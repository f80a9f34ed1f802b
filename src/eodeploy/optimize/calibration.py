"""Calibration and evaluation data for optimised versions, drawn from the package's own split."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eodeploy.data.eurosat import PatchDataset
from eodeploy.errors import DataError
from eodeploy.evaluate.report import load_for_package
from eodeploy.runtime.predictor import Predictor


def _part(predictor: Predictor, data_dir: str | Path, part: str) -> PatchDataset:
    has_split = (predictor.package.path / "split.json").is_file()
    return load_for_package(predictor, data_dir, part if has_split else "all")


def calibration_set(
    predictor: Predictor, data_dir: str | Path, limit: int = 128, seed: int = 0
) -> PatchDataset:
    """Patches for INT8 calibration: the package's training files (representative, never the test
    set), or every readable patch in ``data_dir`` when the package records no split."""
    data = _part(predictor, data_dir, "train")
    if len(data) == 0:
        raise DataError(f"calibration folder {data_dir} holds no usable images; give a EuroSAT-layout folder")
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(data), size=min(limit, len(data)), replace=False))
    return data.subset([data.files[i] for i in idx])


def evaluation_set(predictor: Predictor, data_dir: str | Path) -> PatchDataset:
    """The package's recorded test split (everything in ``data_dir`` when it records none)."""
    return _part(predictor, data_dir, "test")
