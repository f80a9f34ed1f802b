"""Pure ASGI middleware: request ids, JSON access logs, and the request-body size limit."""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eodeploy.errors import PayloadTooLargeError
from eodeploy.serve.errors import INTERNAL_MESSAGE

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("eodeploy.access")
log = logging.getLogger("eodeploy.serve")


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-ID`` in, or a new one), logs one line per request.

    It also turns an unexpected exception into the generic 500 itself, while the request id is
    still known: the traceback is logged with it and the response carries it."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id.set(rid)
        t0 = time.perf_counter()
        status = 500
        limit = self.max_body_bytes

        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send, rid, int(length), limit)
            access_log.info("request", extra={"http": _fields(scope, 413, t0, rid)})
            request_id.reset(token)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLargeError(_too_large_message(received, limit))
            return message

        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except Exception as exc:
            log.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            status = 500
            if started:  # too late for an error response: let the server drop the connection
                raise
            await _send_json(send, 500, {"error": INTERNAL_MESSAGE}, rid)
        finally:
            access_log.info("request", extra={"http": _fields(scope, status, t0, rid)})
            request_id.reset(token)


def _too_large_message(size: int, limit: int) -> str:
    return (
        f"request body of {size} bytes exceeds the limit of {limit} bytes "
        "(EODEPLOY_MAX_BODY_MIB); send fewer patches per request or use binary tensors"
    )


async def _too_large(send: Send, rid: str, size: int, limit: int) -> None:
    await _send_json(send, 413, {"error": _too_large_message(size, limit)}, rid)


async def _send_json(send: Send, status: int, doc: dict[str, Any], rid: str) -> None:
    body = json.dumps(doc).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", rid.encode("latin-1")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _fields(scope: Scope, status: int, t0: float, rid: str) -> dict[str, Any]:
    return {
        "request_id": rid,
        "method": scope.get("method"),
        "path": scope.get("path"),
        "status": status,
        "duration_ms": round((time.perf_counter() - t0) * 1000, 2),
        "client": (scope.get("client") or ("-",))[0],
    }


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, with the request id of the request being served."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
            "pid": record.process,  # which worker process (serve --workers)
        }
        extra = getattr(record, "http", None)
        if extra:
            out.update(extra)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(json_logs: bool, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLogFormatter()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger("eodeploy")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
