"""One table from domain errors to HTTP status codes and gRPC codes, and one JSON error shape,
``{"error": msg}``.

It is the shape TF Serving and the Open Inference Protocol both use, so every endpoint answers
errors the same way, and REST and gRPC agree on what each error means. A 500 is logged with its
traceback and answers a generic message.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from eodeploy.errors import (
    ConflictError,
    DatabaseUnavailableError,
    DataError,
    EodeployError,
    InferenceTimeoutError,
    InvalidInputError,
    MissingExtraError,
    ModelNotFoundError,
    ModelNotReadyError,
    NotAuthenticatedError,
    NotFoundError,
    PackageIntegrityError,
    PackageSpecError,
    PayloadTooLargeError,
    ServerBusyError,
)

log = logging.getLogger("eodeploy.serve")

#: Domain error -> (HTTP status, gRPC status code name). First match wins; REST and gRPC both read it.
TABLE: list[tuple[type[EodeployError], int, str]] = [
    (NotAuthenticatedError, 401, "UNAUTHENTICATED"),
    (ModelNotFoundError, 404, "NOT_FOUND"),
    (NotFoundError, 404, "NOT_FOUND"),
    (ConflictError, 409, "ALREADY_EXISTS"),
    (DatabaseUnavailableError, 503, "UNAVAILABLE"),
    (ModelNotReadyError, 503, "UNAVAILABLE"),
    (ServerBusyError, 503, "UNAVAILABLE"),
    (InferenceTimeoutError, 504, "DEADLINE_EXCEEDED"),
    (PayloadTooLargeError, 413, "RESOURCE_EXHAUSTED"),
    (InvalidInputError, 400, "INVALID_ARGUMENT"),
    (DataError, 400, "INVALID_ARGUMENT"),
    (PackageSpecError, 400, "INVALID_ARGUMENT"),
    (PackageIntegrityError, 503, "UNAVAILABLE"),
    (MissingExtraError, 501, "UNIMPLEMENTED"),  # this server was installed without what it takes
]
INTERNAL_MESSAGE = "internal server error; the server log has the details"


def _entry(exc: BaseException) -> tuple[int, str] | None:
    for cls, status, code in TABLE:
        if isinstance(exc, cls):
            return status, code
    if isinstance(exc, EodeployError):
        return 400, "INVALID_ARGUMENT"
    return None


def status_of(exc: BaseException) -> int:
    """HTTP status of any exception: the table's for domain errors, 500 for anything else."""
    if isinstance(exc, HTTPException):
        return exc.status_code
    entry = _entry(exc)
    return entry[0] if entry else 500


def grpc_code_of(exc: BaseException) -> str:
    """gRPC status code name (``grpc.StatusCode[name]``) of any exception: INTERNAL when unexpected."""
    if isinstance(exc, HTTPException) and exc.status_code == 401:
        return "UNAUTHENTICATED"
    entry = _entry(exc)
    return entry[1] if entry else "INTERNAL"


def outcome_of(exc: BaseException | None) -> str:
    """The metrics outcome of a request, from the same table: every 4xx is a client error."""
    if exc is None:
        return "success"
    if isinstance(exc, ServerBusyError):
        return "busy"
    if isinstance(exc, InferenceTimeoutError):
        return "timeout"
    status = status_of(exc)
    return "client_error" if 400 <= status < 500 else "error"


def json_response(data: Any, status: int = 200) -> Response:
    """orjson-encoded JSON: several times faster than the stdlib for probability lists."""
    import orjson

    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def domain_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EodeployError)
    headers = None
    if isinstance(exc, ServerBusyError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after_s)))}
    return error_response(status_of(exc), str(exc), headers)


async def http_error_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)


async def validation_error_handler(_request: Request, exc: Exception) -> Response:
    errors: list[dict[str, Any]] = getattr(exc, "errors", lambda: [])()
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {e.get('msg', 'invalid')}")
    return error_response(400, "invalid request: " + ("; ".join(parts) or "malformed body"))
