"""Prometheus metrics, named after Triton's ``nv_inference_*`` family, on a registry per app.

With several worker processes (``serve --workers``, ``PROMETHEUS_MULTIPROC_DIR`` set) every
counter and histogram lives in a file per process and ``exposition`` sums them all, so a scrape
of any worker reports the whole server. Computed gauges (drift, monitoring, canary split) are
collected from the worker that answers the scrape.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Registry(CollectorRegistry):
    """A registry that remembers which of its collectors compute their values at scrape time."""

    def __init__(self) -> None:
        super().__init__()
        self.computed: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        if not isinstance(collector, MetricWrapperBase):
            self.computed.append(collector)


class _Computed(Collector):
    def __init__(self, registry: _Registry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        for collector in list(self.registry.computed):
            yield from collector.collect()


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = _Registry()
        r = self.registry
        mv = ["model", "version"]
        self.requests = Counter(
            "eodeploy_inference_requests",
            "Inference requests by model, version, protocol and outcome (success, client_error, busy, timeout, error)",
            [*mv, "protocol", "outcome"],
            registry=r,
        )
        self.inference_count = Counter(
            "eodeploy_inference_count", "Patches inferred (one request may carry many)", mv, registry=r
        )
        self.exec_count = Counter(
            "eodeploy_inference_exec_count", "Model executions (batches run)", mv, registry=r
        )
        self.request_duration = Histogram(
            "eodeploy_inference_request_duration_seconds",
            "End-to-end request time inside the server (decode, queue, compute, encode)",
            [*mv, "protocol"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "eodeploy_inference_queue_duration_seconds",
            "Time a request waited in the dynamic batcher's queue",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "eodeploy_inference_compute_duration_seconds",
            "Time to preprocess and run one batch",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "eodeploy_inference_batch_size",
            "Patches per executed batch",
            mv,
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "eodeploy_inference_pending_request_count",
            "Patches waiting in the batcher's queue",
            mv,
            registry=r,
            multiprocess_mode="livesum",
        )
        self.cache_hits = Counter("eodeploy_cache_hits", "Response-cache hits", ["model"], registry=r)
        self.cache_misses = Counter("eodeploy_cache_misses", "Response-cache misses", ["model"], registry=r)
        self.model_ready = Gauge(
            "eodeploy_model_ready", "1 when a model version is loaded, warmed up and routable", mv, registry=r,
            multiprocess_mode="livemin",
        )  # fmt: skip
        #: What /metrics exposes: this registry, or the sum over every worker process.
        self.exposition: CollectorRegistry = r
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition)
            self.exposition.register(_Computed(r))
