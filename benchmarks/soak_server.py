"""``eodeploy serve`` with a leak put in on purpose: the soak benchmark's control.

The soak's leak detector must catch a server that keeps a little of every request. This wrapper
runs the real ``eodeploy serve`` command, with its app wrapped in a pure ASGI middleware that keeps
the first ``SOAK_LEAK_BYTES`` (default 16 KiB) of every request body in a list that is never freed.
It lives here, in the benchmark, so production code carries no test hook.

    SOAK_LEAK_BYTES=16384 python benchmarks/soak_server.py [eodeploy serve options]
"""

from __future__ import annotations

import os
import sys
from typing import Any

KEPT: list[bytes] = []


class KeepBodies:
    """Pure ASGI middleware that keeps a slice of each request body forever."""

    def __init__(self, app: Any, nbytes: int) -> None:
        self.app, self.nbytes = app, nbytes

    def __getattr__(self, name: str) -> Any:  # state, routes ... of the wrapped app
        return getattr(self.app, name)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        kept = bytearray()

        async def keeping() -> Any:
            message = await receive()
            if message["type"] == "http.request" and len(kept) < self.nbytes:
                kept.extend(message.get("body", b"")[: self.nbytes - len(kept)])
                if not message.get("more_body") or len(kept) >= self.nbytes:
                    KEPT.append(bytes(kept))  # a copy: touched memory, never freed
            return message

        await self.app(scope, keeping, send)


def main() -> None:
    import eodeploy.web.app as web_app

    nbytes = int(os.environ.get("SOAK_LEAK_BYTES", "16384"))
    real_create_app = web_app.create_app

    def leaking_create_app(*args: Any, **kwargs: Any) -> Any:
        return KeepBodies(real_create_app(*args, **kwargs), nbytes)

    web_app.create_app = leaking_create_app  # the serve command imports it from here when it runs
    from eodeploy.cli.main import main as cli

    sys.argv = ["eodeploy", "serve", *sys.argv[1:]]
    cli()


if __name__ == "__main__":
    main()
