"""Open Inference Protocol pieces shared by the REST and gRPC front ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from eodeploy.errors import InvalidInputError
from eodeploy.package.spec import UNITS
from eodeploy.serve.inference import InferenceResult
from eodeploy.serve.registry import ServedModel

SERVER_NAME = "eodeploy"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "schedule_policy"]
PLATFORM = "onnxruntime_onnx"
CLASS_OUTPUT = "class_id"


def model_metadata(model: ServedModel, versions: list[int]) -> dict[str, Any]:
    spec = model.spec
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": [
            {
                "name": spec.input_name,
                "datatype": "FP32",
                "shape": [-1, len(spec.bands), spec.height, spec.width],
            }
        ],
        "outputs": [
            {"name": spec.output_name, "datatype": "FP32", "shape": [-1, len(spec.classes)]},
            {"name": CLASS_OUTPUT, "datatype": "INT64", "shape": [-1]},
        ],
    }


def model_config(
    model: ServedModel, max_batch_size: int, queue_delay_ms: float, policy: str
) -> dict[str, Any]:
    """A Triton-shaped model configuration (what ``tritonclient ... get_model_config`` reads)."""
    meta = model_metadata(model, [model.version])
    return {
        "name": model.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "version_policy": policy,
        "max_batch_size": max_batch_size,
        "input": [
            {"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"][1:]}
            for t in meta["inputs"]
        ],
        "output": [
            {"name": t["name"], "data_type": "TYPE_" + t["datatype"], "dims": t["shape"][1:] or [1]}
            for t in meta["outputs"]
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": int(queue_delay_ms * 1000)},
        "parameters": {
            "bands": {"string_value": ",".join(model.spec.bands)},
            "classes": {"string_value": ",".join(model.spec.class_names)},
        },
    }


@dataclass
class OutputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None = None  # numeric outputs
    strings: list[bytes] | None = None  # BYTES outputs (classification extension)

    def json_data(self) -> list[Any]:
        if self.strings is not None:
            return [s.decode() for s in self.strings]
        assert self.array is not None
        return self.array.ravel().tolist()  # type: ignore[no-any-return]

    def raw(self) -> bytes:
        if self.strings is not None:
            return b"".join(len(s).to_bytes(4, "little") + s for s in self.strings)
        assert self.array is not None
        return np.ascontiguousarray(self.array).tobytes()


def build_outputs(
    result: InferenceResult, requested: list[tuple[str, dict[str, Any]]] | None
) -> list[OutputTensor]:
    """Outputs in the order asked for (all when none are named), with Triton's classification extension."""
    spec = result.model.spec
    proba = result.probabilities
    available = {spec.output_name: proba, CLASS_OUTPUT: result.class_ids}
    wanted = requested or [(spec.output_name, {}), (CLASS_OUTPUT, {})]
    out: list[OutputTensor] = []
    for name, params in wanted:
        if name not in available:
            raise InvalidInputError(
                f"unknown output {name!r}; model {result.model.name!r} has {', '.join(available)}"
            )
        k = params.get("classification")
        if k:
            if name != spec.output_name:
                raise InvalidInputError(f"classification applies to {spec.output_name!r}, not {name!r}")
            k = max(1, min(_count(k, "classification"), proba.shape[1]))
            top = np.argsort(-proba, axis=1)[:, :k]
            labels = spec.class_names
            strings = [
                f"{proba[i, j]:.6f}:{j}:{labels[j]}".encode() for i in range(len(proba)) for j in top[i]
            ]
            out.append(OutputTensor(name, "BYTES", [len(proba), k], strings=strings))
            continue
        arr = available[name]
        out.append(OutputTensor(name, "FP32" if arr.dtype == np.float32 else "INT64", list(arr.shape), arr))
    return out


def _count(value: Any, what: str) -> int:
    """A whole-number parameter (JSON number or string of digits), or a clear 400."""
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise InvalidInputError(f"parameter {what} must be a whole number such as 3, got {value!r}")
    try:
        n = int(value)
    except (ValueError, OverflowError):
        raise InvalidInputError(f"parameter {what} must be a whole number such as 3, got {value!r}") from None
    if n != value and str(n) != str(value).strip():
        raise InvalidInputError(f"parameter {what} must be a whole number such as 3, got {value!r}")
    return n


def units_param(parameters: dict[str, Any] | None) -> str:
    """Our extension: ``"units": "reflectance" | "dn" | "rgb8" | "auto"`` (default auto: guessed
    from the tensor's type and range, see ``runtime.preprocess.guess_units``)."""
    value = (parameters or {}).get("units", "auto")
    if not isinstance(value, str) or (value != "auto" and value not in UNITS):
        raise InvalidInputError(
            f"parameter units must be one of auto, {', '.join(sorted(UNITS))}; got {value!r}"
        )
    return str(value)


def band_names_param(parameters: dict[str, Any] | None) -> list[str] | None:
    """Our extension: ``"band_names": "B02,B03,..."`` when the bands are not in the model's order."""
    value = (parameters or {}).get("band_names")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError("parameter band_names must be a comma-separated string such as 'B02,B03,B04'")
    return [b.strip() for b in value.split(",")]
