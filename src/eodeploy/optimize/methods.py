"""The optimisations themselves: ONNX in, ONNX out (bytes), nothing written to the repository."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy._lazy import lazy_import
from eodeploy.errors import EodeployError
from eodeploy.runtime.predictor import Predictor


class OptimizationError(EodeployError, ValueError):
    """A model that cannot be optimised the way asked."""


def quantize_int8(
    predictor: Predictor, calibration: np.ndarray, per_channel: bool = True, method: str = "Percentile"
) -> tuple[bytes, dict[str, Any]]:
    """Static post-training quantisation (QDQ, INT8 weights and activations) with ONNX Runtime.

    Pre-processing (symbolic shape inference, graph optimisation) first, as ORT recommends;
    activation ranges come from ``calibration``: raw patches through the package's preprocessing.
    Percentile calibration (99.999 %) with per-channel weights kept the bundled model's test
    predictions identical; MinMax changed one of 75 (see docs/benchmarks.md).
    """
    onnx = lazy_import("onnx", "convert")  # what onnxruntime.quantization is built on
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tensors = predictor.preprocess(calibration)
    input_name = predictor.session.get_inputs()[0].name
    fixed = predictor.fixed_batch

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            step = fixed or 16
            self._batches = iter([{input_name: tensors[i : i + step]} for i in range(0, len(tensors), step)
                                  if not fixed or len(tensors[i : i + step]) == fixed])  # fmt: skip

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(predictor.package.model_path), str(pre), skip_symbolic_shape=False)
            quantize_static(
                str(pre), str(out), Reader(),
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method),
            )  # fmt: skip
        except Exception as exc:  # ORT raises plain exceptions for graphs it cannot quantise
            raise OptimizationError(
                f"ONNX Runtime could not quantise {predictor.package.model_path}: {exc}"
            ) from exc
        quantized = onnx.load(str(out))
    # Shape annotations left by pre-processing are redundant at run time; dropping them is ~1 % of the file.
    del quantized.graph.value_info[:]
    data = quantized.SerializeToString()
    settings = {
        "method": "int8-static-qdq",
        "tool": "onnxruntime.quantization.quantize_static",
        "per_channel": per_channel,
        "activations": "int8",
        "weights": "int8",
        "calibration_method": method,
        "calibration_patches": int(len(calibration)),
    }
    return data, settings


def convert_fp16(predictor: Predictor) -> tuple[bytes, dict[str, Any]]:
    """Weights and activations in float16, inputs and outputs kept float32 (for GPUs; CPUs
    mostly run float16 graphs slower)."""
    onnx = lazy_import("onnx", "convert")
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(predictor.package.model_path))
    try:
        half = convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:
        raise OptimizationError(f"cannot convert {predictor.package.model_path} to float16: {exc}") from exc
    return half.SerializeToString(), {
        "method": "fp16",
        "tool": "onnxruntime.transformers.float16",
        "keep_io_types": True,
    }
