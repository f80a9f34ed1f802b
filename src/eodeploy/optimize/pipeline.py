"""Optimised models as first-class package versions: derived_from the source, with the recipe
and the measured accuracy and agreement recorded in item.json."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.errors import PackageIntegrityError
from eodeploy.evaluate.metrics import classification_report, stored_metrics
from eodeploy.optimize.calibration import calibration_set, evaluation_set
from eodeploy.optimize.methods import OptimizationError, convert_fp16, quantize_int8
from eodeploy.package.repository import ModelPackage, ModelRepository
from eodeploy.runtime.predictor import Predictor

#: Properties of the source that describe its training, not the derived model's measurements.
_CARRIED = ("eodeploy:training", "eodeploy:reference_stats", "eodeploy:output_kind", "mlm:pretrained")


def optimize_package(
    package: ModelPackage,
    method: str,
    data_dir: str | Path | None,
    *,
    prune_rate: float = 0.5,
    calibration_size: int = 128,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> ModelPackage:
    """Write ``method`` (int8, fp16, prune) of ``package`` as the model's next version."""
    source = Predictor(package)
    t0 = time.perf_counter()
    files: dict[str, bytes] = {}
    extra: dict[str, Any] = {}
    if method == "int8":
        if data_dir is None:
            raise OptimizationError("INT8 quantisation needs calibration data: pass --calibration DATA")
        calib = calibration_set(source, data_dir, calibration_size)
        data, recipe = quantize_int8(source, calib.images)
        recipe["calibration_files_hash"] = calib.files_hash()
    elif method == "fp16":
        data, recipe = convert_fp16(source)
    elif method == "prune":
        if data_dir is None:
            raise OptimizationError("pruning fine-tunes on the training split: pass --calibration DATA")
        from eodeploy.optimize.prune import prune_and_finetune

        data, recipe, weights = prune_and_finetune(package, data_dir, prune_rate, on_epoch)
        files["weights.pt"] = weights
        extra["eodeploy:weights"] = {
            **package.properties["eodeploy:weights"],
            "pruned": recipe["kept_channels"],
        }
    else:
        raise OptimizationError(f"unknown optimisation {method!r}; use int8, fp16 or prune")
    recipe["seconds"] = round(time.perf_counter() - t0, 1)

    split = package.path / "split.json"
    if split.is_file():
        files["split.json"] = split.read_bytes()
    props = {k: package.properties[k] for k in _CARRIED if k in package.properties}
    props.update(extra)
    props["eodeploy:optimization"] = recipe
    check_set = None if data_dir is None else evaluation_set(source, data_dir)

    def check(folder: Path) -> None:
        """Runs on the unpublished folder: a version that ONNX Runtime cannot run, or that disagrees
        wildly, is never published; its measured accuracy is recorded before it is (published
        versions are never modified)."""
        candidate = ModelPackage(folder)
        derived = Predictor(candidate)
        if check_set is None:
            x = _probe(source)
            agree = float(np.mean(derived.predict(x).class_ids == source.predict(x).class_ids))
        else:
            names = check_set.band_names
            pred = derived.predict(check_set.images, band_names=names).class_ids
            agree = float(np.mean(pred == source.predict(check_set.images, band_names=names).class_ids))
        if agree < 0.5:
            raise PackageIntegrityError(
                f"the {method} model agrees with its source on only {agree:.0%} of patches; nothing was written"
            )
        if check_set is not None:
            report = classification_report(check_set.labels, pred, package.spec.class_names)
            recipe["agreement_with_source"] = round(agree, 4)
            candidate.update_properties(
                {"eodeploy:metrics": stored_metrics(report), "eodeploy:optimization": recipe}
            )

    repo = ModelRepository(package.path.parent.parent)
    pkg = repo.add(
        package.name, data, package.spec, props, files=files,
        derived_from=(package.name, package.version), check=check,
    )  # fmt: skip
    return pkg


def _probe(predictor: Predictor) -> np.ndarray:
    spec = predictor.spec
    rng = np.random.default_rng(0)
    return rng.integers(100, 4000, (16, len(spec.bands), spec.height, spec.width)).astype(np.float32)
