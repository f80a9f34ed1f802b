"""Open Inference Protocol v2 over REST (KServe/Triton), with Triton's binary tensor and
model-repository extensions."""

from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from eodeploy import __version__
from eodeploy.errors import InvalidInputError
from eodeploy.serve._offload import decode_off_loop
from eodeploy.serve.auth import require_admin, require_inference
from eodeploy.serve.errors import json_response
from eodeploy.serve.oip import (
    EXTENSIONS,
    SERVER_NAME,
    band_names_param,
    build_outputs,
    model_config,
    model_metadata,
    units_param,
)
from eodeploy.serve.schemas import InferenceRequest, RepositoryIndexRequest, RepositoryModelRequest, json_body
from eodeploy.serve.tensors import check_shape, from_bytes, from_json

router = APIRouter(tags=["Open Inference Protocol v2"])
HEADER_LENGTH = "inference-header-content-length"


@router.get("/v2", summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS})


_NO_BODY: dict[int | str, dict[str, Any]] = {200: {"description": "Yes (empty body)", "content": {}}}


@router.get("/v2/health/live", summary="Server live", response_class=Response, responses=_NO_BODY)
async def live() -> Response:
    return Response(status_code=200)


@router.get(
    "/v2/health/ready",
    summary="Server ready: 200 once every model is loaded and warmed up, 503 while loading or draining",
    response_class=Response,
    responses={
        **_NO_BODY,
        503: {
            "description": "Not ready (empty body; X-Server-State: loading, unavailable or draining)",
            "content": {},
        },
    },
)
async def ready(request: Request) -> Response:
    registry = request.app.state.registry
    state = registry.state
    return Response(status_code=200 if state == "ready" else 503, headers={"X-Server-State": state})


@router.get("/v2/models/{name}", summary="Model metadata")
@router.get("/v2/models/{name}/versions/{version}", summary="Model version metadata")
async def metadata(request: Request, name: str, version: str | None = None) -> Response:
    registry = request.app.state.registry
    model = registry.resolve(name, version)
    return json_response(model_metadata(model, registry.served_versions(name)))


@router.get("/v2/models/{name}/config", summary="Model configuration (Triton shape)")
@router.get("/v2/models/{name}/versions/{version}/config", summary="Model version configuration")
async def config(request: Request, name: str, version: str | None = None) -> Response:
    registry = request.app.state.registry
    s = request.app.state.settings
    model = registry.resolve(name, version)
    return json_response(
        model_config(model, s.max_batch_size, s.max_queue_delay_ms, str(registry.config(name).policy))
    )


@router.get("/v2/models/{name}/ready", summary="Model ready", response_class=Response, responses=_NO_BODY)
@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    summary="Model version ready",
    response_class=Response,
    responses=_NO_BODY,
)
async def model_ready(request: Request, name: str, version: str | None = None) -> Response:
    request.app.state.registry.resolve(name, version)  # raises 404 / 503 when not ready
    return Response(status_code=200)


_INFER_BODY = json_body(
    InferenceRequest,
    other_content={
        "application/octet-stream": {
            "schema": {"type": "string", "format": "binary"},
            "description": "JSON header followed by raw tensors; header length in Inference-Header-Content-Length",
        }
    },
)


@router.post(
    "/v2/models/{name}/infer",
    summary="Inference (JSON tensors or the binary tensor extension)",
    openapi_extra=_INFER_BODY,
)
@router.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Inference on one version",
    openapi_extra=_INFER_BODY,
)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    binary = request.headers.get(HEADER_LENGTH) is not None
    async with request.app.state.inference.track(name, "oip_http_binary" if binary else "oip_http_json"):
        require_inference(request)  # inside: a refused key is counted like every 4xx
        return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    registry = request.app.state.registry
    registry.resolve(name, version)  # an unknown model or version is a 404 before the body is parsed
    body = await request.body()
    header_len = request.headers.get(HEADER_LENGTH)
    if header_len is not None:
        if not header_len.isdigit() or int(header_len) > len(body):
            raise InvalidInputError(
                f"Inference-Header-Content-Length {header_len!r} is not a length within the {len(body)}-byte body"
            )
        n = int(header_len)
        if n == 0:  # Triton's raw binary request: the whole body is one batch-1 FP32 input
            model = registry.resolve(name, version)
            spec = model.spec
            shape = [1, len(spec.bands), spec.height, spec.width]
            raw = from_bytes(body, shape, "FP32")
            req: dict[str, Any] = {"inputs": [{"name": spec.input_name, "shape": shape, "datatype": "FP32"}]}
            return await _run(request, name, version, req, raw, binary=False)
        req, raw = await decode_off_loop(n, _decode, body[:n], memoryview(body)[n:])
    else:
        req, raw = await decode_off_loop(len(body), _decode, body, memoryview(b""))
    return await _run(request, name, version, req, raw, binary=header_len is not None)


def _decode(header: bytes, binary: memoryview) -> tuple[dict[str, Any], Any]:
    """JSON header and input tensor: blocking, run off the event loop when the JSON is large."""
    req = _parse_header(header)
    return req, _input_array(req, binary)


def _parse_header(data: bytes) -> dict[str, Any]:
    try:
        req = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON ({exc})") from None
    if not isinstance(req, dict) or not isinstance(req.get("inputs"), list) or not req["inputs"]:
        raise InvalidInputError('request must be a JSON object with a non-empty "inputs" list')
    return req


def _input_array(req: dict[str, Any], binary: memoryview) -> Any:
    inputs = req["inputs"]
    if len(inputs) != 1:
        raise InvalidInputError(f"the model takes one input tensor, got {len(inputs)}")
    tensor = inputs[0]
    if not isinstance(tensor, dict):
        raise InvalidInputError("each input must be an object with name, shape, datatype and data")
    for key in ("name", "shape", "datatype"):
        if key not in tensor:
            raise InvalidInputError(f"input is missing {key!r}")
    shape = check_shape(tensor["shape"])
    datatype = str(tensor["datatype"])
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if not isinstance(size, int) or size < 0 or size > len(binary):
            raise InvalidInputError(
                f"binary_data_size {size!r} does not fit the {len(binary)} bytes after the JSON header; "
                "the payload is truncated"
            )
        return from_bytes(binary[:size], shape, datatype)
    if "data" not in tensor:
        raise InvalidInputError("input has neither 'data' nor a binary_data_size parameter")
    return from_json(tensor["data"], shape, datatype)


async def _run(
    request: Request, name: str, version: str | None, req: dict[str, Any], raw: Any, binary: bool
) -> Response:
    params: dict[str, Any] = req["parameters"] if isinstance(req.get("parameters"), dict) else {}
    result = await request.app.state.inference.infer(
        name,
        raw,
        protocol="oip_http_binary" if binary else "oip_http_json",
        version=version,
        band_names=band_names_param(params),
        units=units_param(params),
        routing_key=request.headers.get("x-routing-key"),
        input_name=req["inputs"][0]["name"],
    )
    requested: list[tuple[str, dict[str, Any]]] = []
    want_binary_all = bool(params.get("binary_data_output"))
    binary_of: dict[str, bool] = {}
    outputs_asked = req.get("outputs") or []
    if not isinstance(outputs_asked, list):
        raise InvalidInputError('"outputs" must be a list of objects such as {"name": "class_id"}')
    for o in outputs_asked:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise InvalidInputError('each requested output must be an object with a "name"')
        p: dict[str, Any] = o["parameters"] if isinstance(o.get("parameters"), dict) else {}
        requested.append((o["name"], p))
        binary_of[o["name"]] = bool(p.get("binary_data", want_binary_all))
    outputs = build_outputs(result, requested or None)
    doc: dict[str, Any] = {"model_name": result.model.name, "model_version": str(result.model.version)}
    if "id" in req:
        doc["id"] = str(req["id"])
    tail: list[bytes] = []
    doc["outputs"] = []
    for t in outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if binary_of.get(t.name, want_binary_all):
            raw_out = t.raw()
            entry["parameters"] = {"binary_data_size": len(raw_out)}
            tail.append(raw_out)
        else:
            entry["data"] = t.json_data()
        doc["outputs"].append(entry)
    header = orjson.dumps(doc)
    if not tail:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(tail),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


# --- model repository extension (admin) --------------------------------------------------------
def _link_name(method: str, path: str) -> str:
    """``getAreasName`` for GET /areas/{name}: link names allow letters, digits, '.', '-', '_'."""
    words = re.findall(r"[A-Za-z0-9]+", path)
    return method + "".join(w[:1].upper() + w[1:] for w in words)


def _ref(path: str, method: str) -> str:
    """An OpenAPI ``operationRef`` to one of this server's operations (for response ``links``)."""
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _model_links(*targets: tuple[str, str]) -> dict[int | str, dict[str, Any]]:
    """Links from a repository call on ``{name}`` to what a client checks next (stateful tests)."""
    links = {
        _link_name(method, path): {
            "operationRef": _ref(path, method),
            "parameters": {"name": "$request.path.name"},
        }
        for path, method in targets
    }
    return {200: {"description": "Done", "links": links}}


_AFTER_LOAD_OR_UNLOAD = _model_links(
    ("/v2/models/{name}/ready", "get"),
    ("/v2/models/{name}", "get"),
    ("/v1/models/{name}", "get"),
    ("/v2/models/{name}/infer", "post"),
)


@router.post(
    "/v2/repository/index",
    summary="Repository index",
    dependencies=[Depends(require_admin)],
    openapi_extra=json_body(RepositoryIndexRequest, required=False),
)
async def repository_index(request: Request) -> Response:
    body = await request.body()
    only_ready = False
    if body.strip():
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"request body is not valid JSON ({exc})") from None
        only_ready = bool(data.get("ready")) if isinstance(data, dict) else False
    rows = request.app.state.registry.index()
    if only_ready:
        rows = [r for r in rows if r["state"] == "AVAILABLE"]
    return json_response(rows)


@router.post(
    "/v2/repository/models/{name}/load",
    summary="Load or reload a model",
    dependencies=[Depends(require_admin)],
    openapi_extra=json_body(RepositoryModelRequest, required=False),
    responses=_AFTER_LOAD_OR_UNLOAD,
)
async def repository_load(request: Request, name: str) -> Response:
    await request.app.state.registry.load(name)
    return json_response({})


@router.post(
    "/v2/repository/models/{name}/unload",
    summary="Unload a model",
    dependencies=[Depends(require_admin)],
    openapi_extra=json_body(RepositoryModelRequest, required=False),
    responses=_AFTER_LOAD_OR_UNLOAD,
)
async def repository_unload(request: Request, name: str) -> Response:
    await request.app.state.registry.unload(name)
    return json_response({})
