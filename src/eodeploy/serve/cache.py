"""Response cache keyed by the model's identity (its file's sha256 and its package) and the input
bytes: an in-process LRU, or Redis shared by replicas.

Keys never use version numbers: ``models remove`` frees a number for the next version, and a key
on the number would serve the removed model's answers. Everything here is async so that a slow
Redis cannot stall the event loop, and a Redis that fails is left alone for a while (a circuit
breaker) instead of costing each request a timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("eodeploy.serve.cache")

#: Inputs larger than this are hashed in a worker thread, not on the event loop.
HASH_OFF_LOOP_BYTES = 1 << 20


def cache_key(
    identity: str, raw: np.ndarray, band_names: Sequence[str] | None, units: str | None = None
) -> str:
    """``identity:digest``: the identity prefix lets one model's entries be dropped together."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{raw.dtype.str}\0{raw.shape}\0{','.join(band_names or [])}\0{units}\0".encode())
    h.update(np.ascontiguousarray(raw).data)
    return f"{identity}:{h.hexdigest()}"


async def cache_key_async(
    identity: str, raw: np.ndarray, band_names: Sequence[str] | None, units: str | None = None
) -> str:
    if raw.nbytes > HASH_OFF_LOOP_BYTES:
        return await asyncio.to_thread(cache_key, identity, raw, band_names, units)
    return cache_key(identity, raw, band_names, units)


def _pack(arr: np.ndarray) -> bytes:
    """Rank, shape, float32 values: any rank round-trips (a segmentation model's 4-D maps too)."""
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return np.array([arr.ndim, *arr.shape], np.int64).tobytes() + arr.tobytes()


def _unpack(data: bytes) -> np.ndarray | None:
    try:
        ndim = int(np.frombuffer(data[:8], np.int64)[0])
        shape = tuple(int(d) for d in np.frombuffer(data[8 : 8 * (ndim + 1)], np.int64))
        return np.frombuffer(data[8 * (ndim + 1) :], np.float32).reshape(shape)
    except (ValueError, IndexError):  # an entry in an older layout, or damaged: a miss
        return None


class ResponseCache(Protocol):
    kind: str

    async def get(self, key: str) -> np.ndarray | None: ...

    async def put(self, key: str, value: np.ndarray) -> None: ...

    async def invalidate(self, identity: str) -> None: ...

    async def close(self) -> None: ...


class LRUCache:
    """Bounded by bytes held, not entries, so big batches cannot blow the memory budget."""

    kind = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    async def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            data = self._data.get(key)
            if data is None:
                return None
            self._data.move_to_end(key)
        return _unpack(data)

    async def put(self, key: str, value: np.ndarray) -> None:
        data = _pack(value)
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._data[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._data.popitem(last=False)
                self._bytes -= len(dropped)

    async def invalidate(self, identity: str) -> None:
        with self._lock:
            for key in [k for k in self._data if k.startswith(identity + ":")]:
                self._bytes -= len(self._data.pop(key))

    async def close(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._data)


class RedisCache:
    """Shared by every replica. Redis being down or slow degrades to cache misses, never to failed
    or stalled requests: each call is bounded by ``timeout_s``, and after a failure Redis is skipped
    for ``cooldown_s`` (then one request tries again)."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        ttl_s: int = 3600,
        prefix: str = "eodeploy:resp:",
        timeout_s: float = 0.5,
        cooldown_s: float = 30.0,
    ) -> None:
        import redis.asyncio as aioredis

        self._redis: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.ttl_s = ttl_s
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.cooldown_s = cooldown_s
        self._open_until = 0.0  # circuit breaker: skip Redis until this monotonic time
        self._warned = False

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self.available:
            return None
        try:
            result = await asyncio.wait_for(getattr(self._redis, method)(*args, **kwargs), self.timeout_s * 2)
        except Exception as exc:  # ConnectionError, TimeoutError, ...: open the breaker
            self._open_until = time.monotonic() + self.cooldown_s
            if not self._warned:
                log.warning(
                    "response cache: Redis unavailable, serving without cache for %.0f s (%s)",
                    self.cooldown_s,
                    exc or type(exc).__name__,
                )
                self._warned = True
            return None
        if self._warned:
            log.info("response cache: Redis is back")
            self._warned = False
        return result

    async def get(self, key: str) -> np.ndarray | None:
        data = await self._call("get", self.prefix + key)
        return None if data is None else _unpack(data)

    async def put(self, key: str, value: np.ndarray) -> None:
        await self._call("set", self.prefix + key, _pack(value), ex=self.ttl_s)

    async def invalidate(self, identity: str) -> None:
        cursor = 0
        while True:  # SCAN, not KEYS: never block a shared Redis
            page = await self._call("scan", cursor, match=f"{self.prefix}{identity}:*", count=1000)
            if page is None:
                return
            cursor, keys = page
            if keys:
                await self._call("delete", *keys)
            if not cursor:
                return

    async def close(self) -> None:
        try:
            await self._redis.aclose()
        except Exception:  # already gone
            pass
