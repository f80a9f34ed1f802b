"""The server's life outside requests: ports checked before anything claims to serve, and a drain
on SIGTERM/SIGINT that load balancers can follow.

On the first signal the server reports not ready (``/v2/health/ready`` 503 with
``X-Server-State: draining``; gRPC ``ServerReady`` false) but keeps answering for
``drain_delay_s``, so nginx or Kubernetes endpoints stop sending; then it stops accepting, gives
in-flight HTTP requests and gRPC calls up to ``drain_timeout_s`` together, and exits 0. A second
signal while draining stops at once (uvicorn's force exit).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
from types import FrameType
from typing import Any

import uvicorn

from eodeploy.errors import PortInUseError

log = logging.getLogger("eodeploy.serve")


def check_port_free(host: str, port: int, what: str, option: str) -> None:
    """A clear error now, instead of "serving on …" followed by uvicorn's raw Errno 98."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PortInUseError(
            f"cannot listen on {host!r}: {exc.strerror}; pass --host with a local address"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn and gRPC bind
        try:
            s.bind(address)
        except OSError as exc:
            raise PortInUseError(
                f"the {what} port {port} on {host} is not free ({exc.strerror}): another server (an "
                f"earlier eodeploy serve?) holds it; stop it, or pass {option} with another port"
            ) from None


class DrainingServer(uvicorn.Server):
    """uvicorn's server with the drain above. The app's state carries the model registry (whose
    ``draining`` flag readiness reads) and the gRPC server started by the lifespan."""

    def __init__(
        self, config: uvicorn.Config, state: Any, drain_delay_s: float, drain_timeout_s: float
    ) -> None:
        super().__init__(config)
        self.state, self.drain_delay_s, self.drain_timeout_s = state, drain_delay_s, drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not uvicorn's: it re-raises the signal after shutting down, so the process would die of
        # SIGTERM (exit 143) instead of exiting 0 after a clean drain.
        if self._draining:  # a second signal: stop now
            self.should_exit = self.force_exit = True
            return
        self._draining = True
        self.state.registry.draining = True
        log.warning(
            "%s: draining — readiness reports not ready; accepting for %g s more, then up to %g s for "
            "requests in flight (a second signal stops at once)",
            signal.Signals(sig).name, self.drain_delay_s, self.drain_timeout_s,
        )  # fmt: skip
        if self.drain_delay_s > 0:
            threading.Timer(self.drain_delay_s, self._stop_accepting).start()
        else:
            self._stop_accepting()

    def _stop_accepting(self) -> None:
        grpc_server = getattr(self.state, "grpc_server", None)
        if grpc_server is not None and self._loop is not None:
            # gRPC stops accepting now too, and its calls share the same timeout as HTTP's.
            def start() -> None:
                self.state.grpc_stop = asyncio.ensure_future(grpc_server.stop(grace=self.drain_timeout_s))

            self._loop.call_soon_threadsafe(start)
        self.should_exit = True
