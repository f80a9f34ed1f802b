"""Live serving figures for the dashboard, read from the server's own Prometheus registry: requests
per second, p50/p99 latency, error rate and batch sizes per model version, over the last window.

Counters and histograms are cumulative; a rate needs two samples. Samples are kept for a few
minutes and each snapshot compares the newest with the newest one at least ``window_s`` older (so
several open dashboards polling at once do not shrink the window), or with the server's start
when none is that old yet. Quantiles come from the histogram buckets' differences, interpolated
within a bucket as Prometheus' ``histogram_quantile`` does."""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from typing import Any

from prometheus_client import CollectorRegistry

#: Outcomes that are the server's fault (a client's 4xx is not an error of the server).
SERVER_ERRORS = ("error", "timeout", "busy")

Key = tuple[str, str]


class _Sample:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.t = time.monotonic()
        self.requests: dict[Key, float] = defaultdict(float)
        self.errors: dict[Key, float] = defaultdict(float)
        self.client_errors: dict[Key, float] = defaultdict(float)
        self.buckets: dict[Key, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        self.batches: dict[Key, float] = defaultdict(float)
        self.patches: dict[Key, float] = defaultdict(float)
        for family in registry.collect():
            for s in family.samples:
                labels = s.labels
                if "model" not in labels or "version" not in labels:
                    continue
                key = (labels["model"], labels["version"])
                if s.name == "eodeploy_inference_requests_total":
                    self.requests[key] += s.value
                    if labels.get("outcome") in SERVER_ERRORS:
                        self.errors[key] += s.value
                    elif labels.get("outcome") == "client_error":
                        self.client_errors[key] += s.value
                elif s.name == "eodeploy_inference_request_duration_seconds_bucket":
                    self.buckets[key][float(labels["le"])] += s.value
                elif s.name == "eodeploy_inference_batch_size_count":
                    self.batches[key] += s.value
                elif s.name == "eodeploy_inference_batch_size_sum":
                    self.patches[key] += s.value


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """``histogram_quantile`` over cumulative bucket counts {upper bound: count}."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    total = buckets[bounds[-1]]
    rank = q * total
    lower, below = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if b == float("inf"):
                return lower  # beyond the last finite bound: the bound is all that is known
            inside = count - below
            return lower + (b - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = b, count
    return lower


class LiveStats:
    def __init__(self, registry: CollectorRegistry, window_s: float = 10.0, keep_s: float = 300.0) -> None:
        self.registry = registry
        self.window_s = window_s
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._start = _Sample(registry)
        self._samples: deque[_Sample] = deque()

    def snapshot(self) -> list[dict[str, Any]]:
        now = _Sample(self.registry)
        with self._lock:
            while self._samples and now.t - self._samples[0].t > self.keep_s:
                self._samples.popleft()
            older = [s for s in self._samples if now.t - s.t >= self.window_s]
            base = older[-1] if older else self._start
            self._samples.append(now)
        dt = max(now.t - base.t, 1e-9)
        rows = []
        for key in sorted(set(now.requests) | set(now.buckets)):
            n = now.requests[key] - base.requests[key]
            buckets = {b: c - base.buckets[key].get(b, 0.0) for b, c in now.buckets[key].items()}
            batches = now.batches[key] - base.batches[key]
            p50, p99 = quantile(0.5, buckets), quantile(0.99, buckets)
            rows.append({
                "model": key[0], "version": key[1], "window_s": round(dt, 1),
                "requests": int(n), "rps": round(n / dt, 2),
                "p50_ms": None if p50 is None else round(p50 * 1000, 2),
                "p99_ms": None if p99 is None else round(p99 * 1000, 2),
                "error_rate": round((now.errors[key] - base.errors[key]) / n, 4) if n else None,
                "client_errors": int(now.client_errors[key] - base.client_errors[key]),
                "mean_batch": round((now.patches[key] - base.patches[key]) / batches, 2) if batches else None,
                "total_requests": int(now.requests[key]),
            })  # fmt: skip
        return rows
