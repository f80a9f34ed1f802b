"""Run CPU-heavy request decoding off the event loop when the request is large.

Parsing 64 MiB of JSON or turning millions of numbers into an array takes seconds; on the event
loop it would stall every other request (health checks included). Small bodies stay on the loop,
where a thread hop would cost more than the work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool

T = TypeVar("T")

#: Bodies above this many bytes are decoded in a worker thread.
OFF_LOOP_BYTES = 256 * 1024


async def decode_off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    if size > OFF_LOOP_BYTES:
        return await run_in_threadpool(fn, *args)
    return fn(*args)
