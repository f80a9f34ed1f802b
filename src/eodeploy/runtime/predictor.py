"""One predictor: loads a model package and turns raw band values into classes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.errors import EodeployError, PackageIntegrityError
from eodeploy.package.repository import ModelPackage
from eodeploy.runtime.preprocess import preprocess


@dataclass
class Prediction:
    class_ids: np.ndarray  # (N,) int64
    class_names: list[str]  # (N,)
    probabilities: np.ndarray  # (N, n_classes) float32

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def choose_providers(preferred: Sequence[str] | None = None) -> list[str]:
    """CUDA when ONNX Runtime has it, the CPU otherwise (CPU always last, as a fallback)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if preferred:
        missing = [p for p in preferred if p not in available]
        if missing:
            raise EodeployError(
                f"ONNX Runtime execution provider(s) {missing} are not available here "
                f"(available: {available}); install onnxruntime-gpu for CUDA"
            )
        return list(preferred)
    order = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in order if p in available]


class Predictor:
    """Apply a package's preprocessing and run its ONNX model with ONNX Runtime.

    Every caller (server, scene inference, monitoring, evaluation) sends raw reflectance values
    shaped (N, bands, H, W); ``band_names`` lets the bands come in any order or superset.
    """

    def __init__(
        self,
        package: ModelPackage | str | Path,
        providers: Sequence[str] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        verify: bool = True,
        session_config: dict[str, str] | None = None,
        backend: str = "onnxruntime",
    ) -> None:
        import onnxruntime as ort

        from eodeploy.runtime.backends import TFLITE_FILE, LiteRtRunner, OpenVinoRunner, check_backend

        self.package = package if isinstance(package, ModelPackage) else ModelPackage(package)
        self.backend = check_backend(backend)
        if verify:
            self.package.verify()
        self.spec = self.package.spec
        self._runner: Any = None
        if backend == "openvino":
            self._runner = OpenVinoRunner(self.package.model_path, intra_op_threads)
        elif backend == "litert":
            self._runner = LiteRtRunner(self.package.path / TFLITE_FILE, intra_op_threads)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if intra_op_threads:
            opts.intra_op_num_threads = intra_op_threads
        if inter_op_threads:
            opts.inter_op_num_threads = inter_op_threads
        # e.g. {"session.intra_op.allow_spinning": "0"}: a server should not spin idle threads.
        for key, value in (session_config or {}).items():
            opts.add_session_config_entry(key, value)
        self.providers = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(
                str(self.package.model_path), sess_options=opts, providers=self.providers
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
            raise PackageIntegrityError(f"ONNX Runtime cannot load {self.package.model_path}: {exc}") from exc
        inputs = self.session.get_inputs()
        self._input_name = inputs[0].name
        self._output_name = self.session.get_outputs()[0].name
        # A segmentation model outputs (N, classes, H, W): one class distribution per pixel.
        self.dense = len(self.session.get_outputs()[0].shape) == 4
        first = inputs[0].shape[0]
        # Models converted from TFLite often take a fixed batch (usually 1).
        self.fixed_batch: int | None = first if isinstance(first, int) and first > 0 else None
        if self._runner is not None:
            self.fixed_batch = self._runner.fixed_batch
            self.providers = self._runner.providers

    @property
    def thread_settings(self) -> dict[str, int]:
        opts = self.session.get_session_options()
        return {
            "intra_op_num_threads": opts.intra_op_num_threads,
            "inter_op_num_threads": opts.inter_op_num_threads,
        }

    def preprocess(
        self, x: np.ndarray, band_names: Sequence[str] | None = None, units: str | None = None
    ) -> np.ndarray:
        return preprocess(x, self.spec, band_names, units)

    def run(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on an already preprocessed tensor; returns probabilities."""
        n = len(tensor)
        if self.fixed_batch and n != self.fixed_batch:
            if n > self.fixed_batch:
                return np.concatenate(
                    [self.run(tensor[i : i + self.fixed_batch]) for i in range(0, n, self.fixed_batch)]
                )
            pad = np.zeros((self.fixed_batch - n, *tensor.shape[1:]), tensor.dtype)
            tensor = np.concatenate([tensor, pad])
        if self._runner is not None:
            out = self._runner.run(tensor)
        else:
            out = self.session.run([self._output_name], {self._input_name: tensor})[0]
        out = np.asarray(out, dtype=np.float32)
        if self.dense:
            out = out[:n]
            if self.spec.output_kind == "logits":
                out = np.exp(out - out.max(axis=1, keepdims=True))
                out /= out.sum(axis=1, keepdims=True)
            return out
        out = out.reshape(len(tensor), -1)[:n]
        return softmax(out) if self.spec.output_kind == "logits" else out

    def predict_proba(
        self,
        x: np.ndarray,
        band_names: Sequence[str] | None = None,
        batch_size: int = 64,
        units: str | None = None,
    ) -> np.ndarray:
        """``units``: what ``x`` holds (reflectance, dn, rgb8 or auto); None: the model's own units."""
        tensor = self.preprocess(x, band_names, units)
        parts = [self.run(tensor[i : i + batch_size]) for i in range(0, len(tensor), batch_size)]
        return np.concatenate(parts)

    def predict(
        self,
        x: np.ndarray,
        band_names: Sequence[str] | None = None,
        batch_size: int = 64,
        units: str | None = None,
    ) -> Prediction:
        proba = self.predict_proba(x, band_names, batch_size, units)
        ids = proba.argmax(axis=1).astype(np.int64)
        names = self.spec.class_names
        return Prediction(ids, [names[i] for i in ids], proba)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.package.name,
            "version": self.package.version,
            "backend": self.backend,
            "providers": self.providers if self._runner is not None else self.session.get_providers(),
            **self.thread_settings,
        }
