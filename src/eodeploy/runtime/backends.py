"""Inference backends behind the one Predictor: ONNX Runtime (default), OpenVINO, LiteRT.

Each optional backend is an extra; a missing one fails with the pip command that installs it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy._lazy import lazy_import
from eodeploy.errors import EodeployError, PackageIntegrityError

BACKENDS = ("onnxruntime", "openvino", "litert")
TFLITE_FILE = "model.tflite"


class UnknownBackendError(EodeployError, ValueError):
    """A backend name eodeploy does not know."""


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UnknownBackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name


class OpenVinoRunner:
    """OpenVINO reads the package's ONNX file directly (Intel's CPU runtime; also runs on AMD)."""

    def __init__(self, model_path: Path, threads: int | None = None) -> None:
        ov = lazy_import("openvino", "openvino")
        # f32: on CPUs with AVX512-BF16 OpenVINO would otherwise compute in bfloat16 (1e-2 errors).
        config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self.compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        except Exception as exc:
            raise PackageIntegrityError(f"OpenVINO cannot compile {model_path}: {exc}") from exc
        self._output = self.compiled.output(0)
        self._lock = threading.Lock()
        shape = self.compiled.input(0).get_partial_shape()
        self.fixed_batch: int | None = shape[0].get_length() if shape[0].is_static else None

    def run(self, tensor: np.ndarray) -> np.ndarray:
        with self._lock:  # one infer request at a time on the compiled model's default request
            return np.asarray(self.compiled(tensor)[self._output])

    @property
    def providers(self) -> list[str]:
        return ["OpenVINO:CPU"]


class LiteRtRunner:
    """LiteRT (TensorFlow Lite) interpreter on the package's ``model.tflite``."""

    def __init__(self, tflite_path: Path, threads: int | None = None) -> None:
        interp = lazy_import("ai_edge_litert.interpreter", "litert")
        if not tflite_path.is_file():
            raise PackageIntegrityError(
                f"{tflite_path} does not exist; create it with: eodeploy export PACKAGE --format tflite"
            )
        self.interpreter = interp.Interpreter(model_path=str(tflite_path), num_threads=threads or None)
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._output = self.interpreter.get_output_details()[0]["index"]
        self._batch = -1
        self._lock = threading.Lock()
        self.fixed_batch: int | None = None

    def run(self, tensor: np.ndarray) -> np.ndarray:
        with self._lock:  # the interpreter is not thread-safe
            if len(tensor) != self._batch:
                self.interpreter.resize_tensor_input(self._input, list(tensor.shape))
                self.interpreter.allocate_tensors()
                self._batch = len(tensor)
            self.interpreter.set_tensor(self._input, np.ascontiguousarray(tensor, np.float32))
            self.interpreter.invoke()
            return np.array(self.interpreter.get_tensor(self._output))

    @property
    def providers(self) -> list[str]:
        return ["LiteRT:CPU"]
