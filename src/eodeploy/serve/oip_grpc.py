"""Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``).

The message and service definitions are Triton's (a superset of KServe's), taken from the
``tritonclient`` package so that clients and server share one compiled protocol.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import numpy as np

from eodeploy import __version__
from eodeploy.errors import EodeployError, InvalidInputError, NotAuthenticatedError
from eodeploy.serve.auth import key_is_valid
from eodeploy.serve.errors import INTERNAL_MESSAGE, grpc_code_of
from eodeploy.serve.oip import (
    EXTENSIONS,
    PLATFORM,
    SERVER_NAME,
    band_names_param,
    build_outputs,
    model_metadata,
    units_param,
)
from eodeploy.serve.tensors import from_bytes, from_json

log = logging.getLogger("eodeploy.serve.grpc")

_CONTENTS = {  # datatype -> InferTensorContents field
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """The REST error table's gRPC column; anything unexpected is logged and answered INTERNAL."""
    code = grpc_code_of(exc)
    if code == "INTERNAL":
        log.error("unhandled error in a gRPC call", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
    await context.abort(grpc.StatusCode[code], str(exc))


def _key_ok(settings: Any, context: grpc.aio.ServicerContext, admin: bool) -> bool:
    """The REST rule: admin calls need a key once keys are set, inference only with AUTH_INFERENCE."""
    if not settings.api_keys or not (admin or settings.auth_inference):
        return True
    md = dict(context.invocation_metadata() or ())
    key = md.get("x-api-key")
    if not key and str(md.get("authorization", "")).lower().startswith("bearer "):
        key = str(md["authorization"])[7:].strip()
    return key_is_valid(settings, key)


def _stubs() -> tuple[Any, Any]:
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    return service_pb2, service_pb2_grpc


def make_servicer(state: Any) -> Any:
    pb, pb_grpc = _stubs()

    class Servicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc,name-defined]
        async def _guard(self, context: grpc.aio.ServicerContext, admin: bool = False) -> None:
            if not _key_ok(state.settings, context, admin):
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key (x-api-key)")

        async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerLiveResponse(live=True)

        async def ServerReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerReadyResponse(ready=state.registry.ready)

        async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                state.registry.resolve(request.name, request.version or None)
            except EodeployError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=True)

        async def ServerMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

        async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                model = state.registry.resolve(request.name, request.version or None)
            except Exception as exc:
                await _abort(context, exc)
            meta = model_metadata(model, state.registry.served_versions(request.name))
            tm = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=PLATFORM,
                inputs=[tm(**t) for t in meta["inputs"]],
                outputs=[tm(**t) for t in meta["outputs"]],
            )

        async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
            try:
                async with state.inference.track(request.model_name, "oip_grpc"):
                    if not _key_ok(state.settings, context, admin=False):
                        raise NotAuthenticatedError("missing or invalid API key (x-api-key)")
                    return await _infer(pb, state, request, dict(context.invocation_metadata() or ()))
            except Exception as exc:
                await _abort(context, exc)

        async def RepositoryIndex(self, request: Any, context: Any) -> Any:  # noqa: N802
            await self._guard(context, admin=True)
            rows = state.registry.index()
            if request.ready:
                rows = [r for r in rows if r["state"] == "AVAILABLE"]
            return pb.RepositoryIndexResponse(
                models=[pb.RepositoryIndexResponse.ModelIndex(**r) for r in rows]
            )

        async def _repository(self, action: Any, request: Any, context: Any, response: Any) -> Any:
            await self._guard(context, admin=True)
            try:
                await action(request.model_name)
            except Exception as exc:
                await _abort(context, exc)
            return response()

        async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await self._repository(
                state.registry.load, request, context, pb.RepositoryModelLoadResponse
            )

        async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:  # noqa: N802
            return await self._repository(
                state.registry.unload, request, context, pb.RepositoryModelUnloadResponse
            )

    return Servicer()


def _param(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


async def _infer(pb: Any, state: Any, request: Any, metadata: dict[str, Any]) -> Any:
    if len(request.inputs) != 1:
        raise InvalidInputError(f"the model takes one input tensor, got {len(request.inputs)}")
    t = request.inputs[0]
    shape = [int(d) for d in t.shape]
    if any(d < 0 for d in shape):
        raise InvalidInputError(f"shape must be non-negative, got {shape}")
    if request.raw_input_contents:
        arr = from_bytes(request.raw_input_contents[0], shape, t.datatype)
    else:
        field = _CONTENTS.get(t.datatype)
        if field is None:
            raise InvalidInputError(
                f"datatype {t.datatype!r} is not supported for band values; use FP32 or UINT16"
            )
        arr = from_json(np.asarray(getattr(t.contents, field)), shape, t.datatype)
    params = {k: _param(v) for k, v in request.parameters.items()}
    result = await state.inference.infer(
        request.model_name,
        arr,
        protocol="oip_grpc",
        version=request.model_version or None,
        band_names=band_names_param(params),
        units=units_param(params),
        routing_key=metadata.get("x-routing-key"),
        input_name=t.name,
    )
    requested = [(o.name, {k: _param(v) for k, v in o.parameters.items()}) for o in request.outputs] or None
    response = pb.ModelInferResponse(
        model_name=result.model.name, model_version=str(result.model.version), id=request.id
    )
    for out in build_outputs(result, requested):
        response.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        response.raw_output_contents.append(out.raw())
    return response


async def start_grpc_server(
    state: Any, host: str, port: int, max_message_bytes: int, reuseport: bool = False
) -> grpc.aio.Server:
    """``reuseport``: several worker processes share the port (``serve --workers``); off otherwise,
    so a second server on a taken port fails instead of silently sharing it."""
    _, pb_grpc = _stubs()
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", int(reuseport)),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(make_servicer(state), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot bind the gRPC port {host}:{port}; is another server using it?")
    await server.start()
    log.info("gRPC (Open Inference Protocol) listening on %s:%s", host, bound)
    return server
