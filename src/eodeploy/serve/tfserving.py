"""TensorFlow Serving's REST API: status, metadata and ``:predict`` in row and columnar form."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from eodeploy.errors import InvalidInputError
from eodeploy.serve._offload import decode_off_loop
from eodeploy.serve.auth import require_inference
from eodeploy.serve.errors import json_response
from eodeploy.serve.oip import band_names_param, units_param
from eodeploy.serve.registry import ServedModel
from eodeploy.serve.schemas import PredictRequest, json_body
from eodeploy.serve.tensors import json_numbers

router = APIRouter(tags=["TensorFlow Serving REST"])
SIGNATURE = "serving_default"


def _status_entry(version: int, state: str, reason: str = "") -> dict[str, Any]:
    return {
        "version": str(version),
        "state": {"LOADING": "LOADING", "AVAILABLE": "AVAILABLE", "UNLOADING": "UNLOADING"}.get(state, "END"),
        "status": {"error_code": "OK" if not reason else "UNKNOWN", "error_message": reason},
    }


@router.get("/v1/models/{name}", summary="Model status (all versions)")
@router.get("/v1/models/{name}/versions/{version}", summary="Model version status")
@router.get("/v1/models/{name}/labels/{label}", summary="Status of the version a label points to")
async def model_status(
    request: Request, name: str, version: str | None = None, label: str | None = None
) -> Response:
    registry = request.app.state.registry
    states = registry.status(name)
    if label is not None or version is not None:
        v = registry.resolve(name, version, label).version
        states = [(sv, st) for sv, st in states if sv == v]
    return json_response(
        {"model_version_status": [_status_entry(v, st.state, st.reason) for v, st in states]}
    )


def _tensor_info(name: str, dims: list[int], dtype: str = "DT_FLOAT") -> dict[str, Any]:
    return {
        "dtype": dtype,
        "tensor_shape": {"dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False},
        "name": name,
    }


@router.get("/v1/models/{name}/metadata", summary="Model metadata (signature_def)")
@router.get("/v1/models/{name}/versions/{version}/metadata", summary="Model version metadata")
@router.get("/v1/models/{name}/labels/{label}/metadata", summary="Metadata of a labelled version")
async def model_metadata(
    request: Request, name: str, version: str | None = None, label: str | None = None
) -> Response:
    model: ServedModel = request.app.state.registry.resolve(name, version, label)
    spec = model.spec
    signature = {
        "inputs": {
            spec.input_name: _tensor_info(spec.input_name, [-1, len(spec.bands), spec.height, spec.width])
        },
        "outputs": {spec.output_name: _tensor_info(spec.output_name, [-1, len(spec.classes)])},
        "method_name": "tensorflow/serving/predict",
    }
    return json_response(
        {
            "model_spec": {"name": name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
            # Not in TF Serving: what a client needs to send raw values the right way round.
            "eodeploy": {"bands": spec.bands, "classes": spec.class_names, "input": "raw band values"},
        }
    )


_PREDICT_BODY = json_body(PredictRequest)


@router.post(
    "/v1/models/{name}:predict",
    summary="Predict (latest version, or the canary split)",
    openapi_extra=_PREDICT_BODY,
)
@router.post(
    "/v1/models/{name}/versions/{version}:predict",
    summary="Predict with one version",
    openapi_extra=_PREDICT_BODY,
)
@router.post(
    "/v1/models/{name}/labels/{label}:predict",
    summary="Predict with a labelled version (stable, canary)",
    openapi_extra=_PREDICT_BODY,
)
async def predict(
    request: Request, name: str, version: str | None = None, label: str | None = None
) -> Response:
    async with request.app.state.inference.track(name, "tfserving"):
        require_inference(request)  # inside: a refused key is counted like every 4xx
        return await _predict(request, name, version, label)


async def _predict(request: Request, name: str, version: str | None, label: str | None) -> Response:
    input_name = request.app.state.registry.resolve(name, version, label).spec.input_name
    raw = await request.body()
    row, arr, params = await decode_off_loop(len(raw), _decode, raw, input_name)
    result = await request.app.state.inference.infer(
        name,
        arr,
        protocol="tfserving",
        version=version,
        label=label,
        band_names=band_names_param(params),
        units=units_param(params),
        routing_key=request.headers.get("x-routing-key"),
    )
    proba = result.probabilities.tolist()
    return json_response({"predictions": proba} if row else {"outputs": proba})


def _decode(raw: bytes, input_name: str) -> tuple[bool, np.ndarray, dict[str, Any] | None]:
    """The request body as (row format?, patches, parameters): blocking, run off the loop when large."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON ({exc})") from None
    if not isinstance(body, dict):
        raise InvalidInputError('request body must be a JSON object with "instances" or "inputs"')
    signature = body.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise InvalidInputError(f"serving signature {signature!r} not found; this model has {SIGNATURE!r}")
    if ("instances" in body) == ("inputs" in body):
        raise InvalidInputError('send exactly one of "instances" (row format) or "inputs" (columnar format)')
    row = "instances" in body
    data = body["instances"] if row else body["inputs"]
    if row and isinstance(data, list) and data and isinstance(data[0], dict):
        data = [_named(inst, input_name) for inst in data]
    elif not row and isinstance(data, dict):
        data = _named(data, input_name)
    if row and not isinstance(data, list):
        raise InvalidInputError('"instances" must be a list of patches')
    arr = _to_array(data)
    # Our extension, as in OIP: "parameters": {"band_names": "B04,B03,B02", "units": "reflectance"}.
    params = body.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise InvalidInputError('"parameters" must be an object such as {"band_names": "B04,B03,B02"}')
    return row, arr, params


def _named(obj: Any, input_name: str) -> Any:
    if not isinstance(obj, dict) or input_name not in obj:
        raise InvalidInputError(f"named inputs must include {input_name!r}, the model's only input")
    extra = set(obj) - {input_name}
    if extra:
        raise InvalidInputError(f"unknown input(s) {sorted(extra)}; the model takes only {input_name!r}")
    return obj[input_name]


def _to_array(data: Any) -> np.ndarray:
    arr = json_numbers(data, "FP32")
    if arr.ndim not in (3, 4):
        raise InvalidInputError(f"expected a batch of patches (4 dimensions), got {arr.ndim} dimension(s)")
    return arr
