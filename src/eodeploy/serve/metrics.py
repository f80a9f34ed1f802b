"""Prometheus metrics, named after Triton's ``nv_inference_*`` family, on a registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        )
        self.cache_hits = Counter("eodeploy_cache_hits", "Response-cache hits", ["model"], registry=r)
        self.cache_misses = Counter("eodeploy_cache_misses", "Response-cache misses", ["model"], registry=r)
        self.model_ready = Gauge(
            "eodeploy_model_ready", "1 when a model version is loaded, warmed up and routable", mv, registry=r
        )
