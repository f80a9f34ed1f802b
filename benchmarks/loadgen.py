"""A small closed-loop HTTP/1.1 (and OIP gRPC) load generator, run as its own process.

Each of N connections sends the same pre-built request again and again (keep-alive), like
``wrk -c N``. Request bytes are built once, responses are read by Content-Length, so the client
costs little CPU beside the server on a 2-core machine. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, lines[0].startswith("HTTP/1.0")
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v)
        elif k == "connection":
            close = v.strip().lower() == "close"
        elif k == "transfer-encoding" and "chunked" in v:
            raise RuntimeError("chunked responses are not supported by this load generator")
    if length:
        await reader.readexactly(length)
    return status, close


async def http_worker(
    host: str, port: int, request: bytes, stop_at: float, warm_until: float, out: dict
) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        if writer is None:
            reader, writer = await asyncio.open_connection(host, port)
        t0 = time.perf_counter()
        try:
            writer.write(request)
            await writer.drain()
            status, close = await _read_response(reader)  # type: ignore[arg-type]
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            writer = None
            out["errors"] += 1
            continue
        if t0 >= warm_until:
            out["lat"].append(time.perf_counter() - t0)
            out["status"][status] = out["status"].get(status, 0) + 1
        if close:
            writer.close()
            writer = None
    if writer is not None:
        writer.close()


async def grpc_worker(stub, request, stop_at: float, warm_until: float, out: dict) -> None:  # type: ignore[no-untyped-def]
    import grpc

    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        try:
            await stub.ModelInfer(request)
            code = 200
        except grpc.aio.AioRpcError as exc:
            code = 503 if exc.code() == grpc.StatusCode.UNAVAILABLE else 500
        if t0 >= warm_until:
            out["lat"].append(time.perf_counter() - t0)
            out["status"][code] = out["status"].get(code, 0) + 1


def build_http(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def main(args: argparse.Namespace) -> dict:
    out: dict = {"lat": [], "status": {}, "errors": 0}
    start = time.perf_counter()
    warm_until = start + args.warmup
    stop_at = warm_until + args.duration
    if args.grpc:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        spec = json.loads(Path(args.body).read_text())
        x = np.load(spec["npy"])
        request = service_pb2.ModelInferRequest(model_name=spec["model"])
        request.inputs.add(name=spec["input"], datatype=spec["datatype"], shape=list(x.shape))
        request.raw_input_contents.append(x.tobytes())
        # One connection per client, as independent clients have (a local subchannel pool: channels
        # to the same target would otherwise share one TCP connection, i.e. one server worker).
        options = [("grpc.max_send_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(args.connections)]
        await asyncio.gather(
            *(grpc_worker(service_pb2_grpc.GRPCInferenceServiceStub(ch), request, stop_at, warm_until, out)
              for ch in channels)
        )  # fmt: skip
        for ch in channels:
            await ch.close()
    else:
        host, port = args.target.split(":")
        request = build_http(
            host, int(port), args.path, Path(args.body).read_bytes(), json.loads(args.headers)
        )
        await asyncio.gather(
            *(
                http_worker(host, int(port), request, stop_at, warm_until, out)
                for _ in range(args.connections)
            )
        )
    lat = np.array(out["lat"]) * 1000
    ok = out["status"].get(200, 0)
    return {
        "connections": args.connections,
        "seconds": args.duration,
        "requests": len(lat),
        "ok": ok,
        "status": {str(k): v for k, v in out["status"].items()},
        "errors": out["errors"],
        "throughput": ok / args.duration,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="HOST:PORT")
    ap.add_argument("--path", default="/")
    ap.add_argument("--body", required=True, help="file with the request body (gRPC: a JSON spec)")
    ap.add_argument("--headers", default="{}")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--grpc", action="store_true")
    a = ap.parse_args()
    json.dump(asyncio.run(main(a)), sys.stdout)
