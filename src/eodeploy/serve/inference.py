"""Protocol-independent inference: route to a version, consult the cache, queue on the batcher."""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from eodeploy.errors import InvalidInputError, PayloadTooLargeError
from eodeploy.mlops.mirror import Mirror
from eodeploy.runtime.preprocess import as_channels_first
from eodeploy.serve.cache import ResponseCache, cache_key_async
from eodeploy.serve.errors import outcome_of
from eodeploy.serve.metrics import ServerMetrics
from eodeploy.serve.registry import ModelRegistry, ServedModel

if TYPE_CHECKING:
    from eodeploy.mlops.sketch import ServingDrift


@dataclass
class InferenceResult:
    model: ServedModel
    probabilities: np.ndarray  # (N, n_classes) float32
    cached: bool = False

    @property
    def class_ids(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1).astype(np.int64)

    @property
    def class_names(self) -> list[str]:
        names = self.model.spec.class_names
        return [names[i] for i in self.class_ids]


@dataclass
class RequestTrack:
    """One inference request as the metrics see it, from the first byte decoded to the answer."""

    name: str
    protocol: str
    served: ServedModel | None = None
    t0: float = field(default_factory=time.perf_counter)


_current: contextvars.ContextVar[RequestTrack | None] = contextvars.ContextVar(
    "inference_track", default=None
)


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        metrics: ServerMetrics,
        cache: ResponseCache | None,
        max_request_patches: int,
    ) -> None:
        self.registry = registry
        self.metrics = metrics
        self.cache = cache
        self.max_request_patches = max_request_patches
        self.mirror = Mirror(registry, metrics.registry, registry.settings.canary_mirror_share)
        #: ``eodeploy.mlops.feedback.RecentPredictions`` (set by ``web.feedback_api``): remembers
        #: each answered request by its id, so feedback can name it.
        self.recent: Any = None
        self.drift: ServingDrift | None = None  # request sampling for drift (serve.app sets it)

    @asynccontextmanager
    async def track(self, name: str, protocol: str) -> AsyncIterator[RequestTrack]:
        """Count one request, whatever fails inside: decoding the body (malformed JSON, a wrong
        shape, an unreadable upload) as much as inference. Every protocol's handler wraps its work
        in this, so each 4xx is counted the same way, by the one error table."""
        current = _current.get()
        if current is not None:  # nested (infer inside a handler's track): counted once, outside
            yield current
            return
        tracked = RequestTrack(name, protocol)
        token = _current.set(tracked)
        error: BaseException | None = None
        try:
            yield tracked
        except BaseException as exc:
            error = exc
            raise
        finally:
            _current.reset(token)
            served = tracked.served
            # An unknown name is not a label value: clients could grow the series without bound.
            known = served.name if served else tracked.name if tracked.name in self.registry.names() else ""
            labels = {
                "model": known,
                "version": str(served.version) if served else "",
                "protocol": tracked.protocol,
            }
            self.metrics.requests.labels(**labels, outcome=outcome_of(error)).inc()
            if error is None:
                self.metrics.request_duration.labels(**labels).observe(time.perf_counter() - tracked.t0)

    async def infer(
        self,
        name: str,
        raw: np.ndarray,
        *,
        protocol: str,
        version: int | str | None = None,
        label: str | None = None,
        band_names: Sequence[str] | None = None,
        units: str | None = "auto",
        routing_key: str | None = None,
        input_name: str | None = None,
    ) -> InferenceResult:
        """``input_name``: the tensor name the request used (OIP), checked against the very
        version chosen here, so a canary split cannot check one version and run another."""
        async with self.track(name, protocol) as tracked:
            tracked.protocol = protocol
            served = self.registry.resolve(name, version, label, routing_key)
            tracked.served = served
            if input_name is not None and input_name != served.spec.input_name:
                raise InvalidInputError(
                    f"unknown input {input_name!r}; model {name!r} takes {served.spec.input_name!r}"
                )
            raw = self._check(served, raw)
            key = None
            if self.cache is not None:
                key = await cache_key_async(served.identity, raw, band_names, units)
                hit = await self.cache.get(key)
                if hit is not None and len(hit) == len(raw):
                    self.metrics.cache_hits.labels(model=served.name).inc()
                    self.mirror.offer(served, raw, band_names, units, hit)
                    if self.recent is not None:
                        self.recent.remember(served, raw, hit, band_names, units)
                    return InferenceResult(served, hit, cached=True)
                self.metrics.cache_misses.labels(model=served.name).inc()
            proba = await served.batcher.submit(raw, band_names, units)
            if self.drift is not None:
                self.drift.observe(served, raw, band_names, units, proba)
            if key is not None and self.cache is not None:
                await self.cache.put(key, proba)
            self.mirror.offer(served, raw, band_names, units, proba)
            if self.recent is not None:
                self.recent.remember(served, raw, proba, band_names, units)
            return InferenceResult(served, proba)

    def _check(self, served: ServedModel, raw: np.ndarray) -> np.ndarray:
        """Cheap checks before queueing, so a malformed request never occupies the batcher."""
        spec = served.spec
        raw = np.asarray(raw)
        if raw.ndim == 3:
            raw = raw[None]
        raw = as_channels_first(raw, spec)
        if raw.ndim != 4:
            raise InvalidInputError(
                f"expected patches shaped [batch, {len(spec.bands)}, {spec.height}, {spec.width}] "
                f"(or channels last), got shape {list(raw.shape)}"
            )
        if len(raw) > self.max_request_patches:
            raise PayloadTooLargeError(
                f"{len(raw)} patches in one request exceed the limit of {self.max_request_patches}; "
                "split the request"
            )
        if len(raw) == 0:
            raise InvalidInputError("empty batch: send at least one patch")
        return raw
