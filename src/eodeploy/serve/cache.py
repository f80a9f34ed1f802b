"""Response cache keyed by model, version and input bytes: an in-process LRU, or Redis for replicas."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

log = logging.getLogger("eodeploy.serve.cache")


def cache_key(
    name: str, version: int, raw: np.ndarray, band_names: Sequence[str] | None, units: str | None = None
) -> str:
    h = hashlib.blake2b(digest_size=20)
    h.update(
        f"{name}\0{version}\0{raw.dtype.str}\0{raw.shape}\0{','.join(band_names or [])}\0{units}\0".encode()
    )
    h.update(np.ascontiguousarray(raw).data)
    return h.hexdigest()


def _pack(arr: np.ndarray) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    return np.array(arr.shape, np.int32).tobytes() + arr.tobytes()


def _unpack(data: bytes) -> np.ndarray:
    n, k = np.frombuffer(data[:8], np.int32)
    return np.frombuffer(data[8:], np.float32).reshape(int(n), int(k))


class ResponseCache(Protocol):
    kind: str

    def get(self, key: str) -> np.ndarray | None: ...

    def put(self, key: str, value: np.ndarray) -> None: ...


class LRUCache:
    """Bounded by bytes held, not entries, so big batches cannot blow the memory budget."""

    kind = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            data = self._data.get(key)
            if data is None:
                return None
            self._data.move_to_end(key)
        return _unpack(data)

    def put(self, key: str, value: np.ndarray) -> None:
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

    def __len__(self) -> int:
        return len(self._data)


class RedisCache:
    """Shared by every replica. Redis being down degrades to cache misses, never to failed requests."""

    kind = "redis"

    def __init__(self, url: str, ttl_s: int = 3600, prefix: str = "eodeploy:resp:") -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._warned = False

    def get(self, key: str) -> np.ndarray | None:
        try:
            data = self._redis.get(self.prefix + key)
        except Exception as exc:  # redis.ConnectionError, TimeoutError, ...
            self._warn(exc)
            return None
        return None if data is None else _unpack(data)  # type: ignore[arg-type]

    def put(self, key: str, value: np.ndarray) -> None:
        try:
            self._redis.set(self.prefix + key, _pack(value), ex=self.ttl_s)
        except Exception as exc:
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            log.warning("response cache: Redis unavailable, serving without cache (%s)", exc)
            self._warned = True
