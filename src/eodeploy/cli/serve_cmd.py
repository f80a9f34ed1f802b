"""``eodeploy serve``: the inference server over a model repository."""

from __future__ import annotations

import math
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from eodeploy.cli._common import err_console, handle_errors, settings
from eodeploy.errors import InsecureConfigError

if TYPE_CHECKING:
    from eodeploy.settings import Settings


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost; any other name or address may be reachable."""
    import ipaddress

    if host.strip().lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface


def check_exposure(host: str, has_keys: bool, insecure: bool) -> None:
    """Refuse to open unauthenticated admin routes (model load/unload, monitoring writes) to a network."""
    if has_keys or insecure or is_loopback(host):
        return
    raise InsecureConfigError(
        f"refusing to serve on {host} without API keys: every admin route (model load/unload, "
        "monitoring writes that take server paths and webhooks) would be open to anyone who can "
        "reach it. Set EODEPLOY_API_KEYS='[\"<a long random key>\"]', or bind to 127.0.0.1, or pass "
        "--insecure (EODEPLOY_INSECURE=1) if this network is trusted."
    )


@handle_errors
def serve(
    model_repo: Annotated[
        Path | None, typer.Argument(help="Model repository (default: EODEPLOY_MODEL_REPO or ./models).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8000).")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port; 0 turns gRPC off (default 8001).")] = None,
    version_policy: Annotated[
        str | None, typer.Option(help="'latest:N', 'all' or 'specific:1,3' for models without serving.json.")
    ] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Dynamic batcher: largest batch.")] = None,
    max_queue_delay_ms: Annotated[float | None, typer.Option(help="Dynamic batcher: longest wait.")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Share the response cache through Redis.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Server processes sharing the ports, each with cores/N ONNX Runtime threads (default 1).",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve on a non-loopback address without API keys (every admin route open to the network).",
        ),
    ] = False,
) -> None:
    """Serve every model in the repository: TF Serving REST, OIP v2 REST + gRPC, and /predict uploads.

    Settings not given here come from EODEPLOY_* environment variables (see docs/serving.md).
    """
    from eodeploy.serve.lifecycle import check_port_free
    from eodeploy.serve.middleware import configure_logging
    from eodeploy.serve.policy import VersionPolicy

    overrides = {
        "model_repo": model_repo,
        "host": host,
        "port": port,
        "grpc_port": grpc_port,
        "version_policy": version_policy,
        "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms,
        "redis_url": redis_url,
        "workers": workers,
        "insecure": insecure or None,
    }
    cfg = settings().model_copy(update={k: v for k, v in overrides.items() if v is not None})
    check_exposure(cfg.host, bool(cfg.api_keys), cfg.insecure)
    VersionPolicy.parse(cfg.version_policy)  # a bad policy is a clear error before anything starts
    if not cfg.model_repo.is_dir():
        from eodeploy.errors import ModelNotFoundError

        raise ModelNotFoundError(f"model repository {cfg.model_repo} does not exist; pass a folder of models")
    check_port_free(cfg.host, cfg.port, "HTTP", "--port")
    if cfg.grpc_port:
        check_port_free(cfg.host, cfg.grpc_port, "gRPC", "--grpc-port (0 turns gRPC off)")
    configure_logging(cfg.log_json)
    where = (
        f"eodeploy serving {cfg.model_repo} on http://{cfg.host}:{cfg.port} "
        f"(docs at /docs, metrics at /metrics)"
        + (f", gRPC on {cfg.host}:{cfg.grpc_port}" if cfg.grpc_port else "")
    )
    if cfg.workers > 1:
        from eodeploy.serve.workers import Supervisor

        supervisor = Supervisor(cfg)
        err_console.print(
            f"{where}, {cfg.workers} worker processes with {supervisor.cfg.intra_op_threads} "
            "ONNX Runtime thread(s) each"
        )
        raise typer.Exit(supervisor.run())
    err_console.print(where)
    if not run_server(cfg):  # uvicorn could not bind after all (taken since the check): it logged why
        raise typer.Exit(1)


def run_server(cfg: Settings, sockets: list[socket.socket] | None = None, worker: int | None = None) -> bool:
    """One server process (the only one, or a worker on ``sockets``) until it has drained; False
    when it never started."""
    import uvicorn

    from eodeploy.serve.lifecycle import DrainingServer
    from eodeploy.serve.middleware import configure_logging
    from eodeploy.web.app import create_app

    if worker is not None:  # a spawned worker: a fresh interpreter
        configure_logging(cfg.log_json)
    app = create_app(cfg)
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, log_config=None, access_log=False,
        timeout_graceful_shutdown=math.ceil(cfg.drain_timeout_s),
    )  # fmt: skip
    server = DrainingServer(config, app.state, cfg.drain_delay_s, cfg.drain_timeout_s)
    server.run(sockets=sockets)
    return bool(server.started)
