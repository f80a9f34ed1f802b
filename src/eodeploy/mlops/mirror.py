"""Mirrored inputs while a model has a canary: a sample of the requests one side answered is run
again on the other side, off the request path, and the top-1 classes compared.

The answer is never delayed or failed by it: ``offer`` only draws a number and schedules a task;
the mirrored run waits its turn (one at a time, a bounded number waiting) on the other version's
batcher, and is dropped, counted, when that batcher is busy or the version went away. Mirrored
runs are not requests: they appear in no request counter, only in ``eodeploy_canary_*``.

The registry's effective split (what routing really does now, versions loaded) is exported too,
as ``eodeploy_serving_split``, so a controller can tell when a server serves a split it wrote.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

if TYPE_CHECKING:
    from eodeploy.serve.registry import ModelRegistry, ServedModel

log = logging.getLogger("eodeploy.mlops.mirror")

#: Patches of one request that are mirrored at most (a large request is compared on its first ones).
MAX_PATCHES = 16


def effective_split(registry: ModelRegistry, name: str) -> tuple[int, int | None, float]:
    """(champion, canary or None, canary percent) as routing applies them now: the ``stable``
    label when that version is loaded, else the newest loaded; the canary only once it is loaded."""
    versions = registry.served_versions(name)
    cfg = registry.config(name)
    stable = cfg.labels.get("stable")
    base = stable if stable in versions else max(versions)
    canary = cfg.labels.get("canary")
    if canary is None or canary not in versions or canary == base:
        return base, None, 0.0
    return base, canary, float(cfg.canary_percent)


class _SplitCollector:
    """``eodeploy_serving_split{model,stable,canary}`` = the canary percent routing applies now."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "eodeploy_serving_split",
            "Share (percent) of unaddressed requests routed to the canary now, by the versions in effect",
            labels=["model", "stable", "canary"],
        )
        for name in self.registry.names():
            try:
                base, canary, percent = effective_split(self.registry, name)
            except ValueError:  # unloaded between names() and here
                continue
            family.add_metric([name, str(base), "" if canary is None else str(canary)], percent)
        yield family


class Mirror:
    def __init__(
        self, registry: ModelRegistry, metrics: CollectorRegistry, share: float, max_waiting: int = 32
    ) -> None:
        self.registry = registry
        self.share = share
        self.max_waiting = max_waiting
        labels = ["model", "champion", "candidate"]
        self.mirrored = Counter(
            "eodeploy_canary_mirrored",
            "Patches answered by one side of a canary split and run again on the other",
            labels,
            registry=metrics,
        )
        self.agreed = Counter(
            "eodeploy_canary_agreement",
            "Mirrored patches whose top-1 class was the same on both sides",
            labels,
            registry=metrics,
        )
        self.dropped = Counter(
            "eodeploy_canary_mirror_dropped",
            "Mirrored runs skipped: too many waiting, the other side busy or gone",
            ["model", "reason"],
            registry=metrics,
        )
        metrics.register(_SplitCollector(registry))  # type: ignore[arg-type]
        self._rng = random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._turn: asyncio.Semaphore | None = None

    def offer(
        self,
        served: ServedModel,
        raw: np.ndarray,
        band_names: Sequence[str] | None,
        units: str | None,
        proba: np.ndarray,
    ) -> None:
        """Called with every answer; schedules a mirrored run for a sample of them. Never raises."""
        if self.share <= 0:
            return
        try:
            champion, canary, _ = effective_split(self.registry, served.name)
            if canary is None or served.version not in (champion, canary):
                return
            if self._rng.random() >= self.share:
                return
            if len(self._tasks) >= self.max_waiting:
                self.dropped.labels(model=served.name, reason="queue_full").inc()
                return
            other = champion if served.version == canary else canary
            n = min(len(raw), MAX_PATCHES)
            top1 = np.asarray(proba[:n]).argmax(axis=1)
            task = asyncio.get_running_loop().create_task(
                self._run(served.name, other, champion, canary, raw[:n], band_names, units, top1)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        except Exception:  # noqa: BLE001 - the answer goes out whatever happens here
            log.exception("mirroring a request of %s failed", served.name)

    async def _run(
        self,
        name: str,
        other: int,
        champion: int,
        candidate: int,
        raw: np.ndarray,
        band_names: Sequence[str] | None,
        units: str | None,
        top1: np.ndarray,
    ) -> None:
        if self._turn is None:
            self._turn = asyncio.Semaphore(1)
        async with self._turn:
            try:
                target = self.registry.resolve(name, other)
                batcher = target.batcher
                if batcher.queued > batcher.config.max_queue_size // 2:  # real requests first
                    self.dropped.labels(model=name, reason="busy").inc()
                    return
                proba = await batcher.submit(raw, band_names, units)
            except Exception:  # noqa: BLE001 - unloaded, busy, timed out: a lost sample, nothing more
                self.dropped.labels(model=name, reason="unavailable").inc()
                return
        mine = np.asarray(proba).argmax(axis=1)
        labels = {"model": name, "champion": str(champion), "candidate": str(candidate)}
        self.mirrored.labels(**labels).inc(len(mine))
        self.agreed.labels(**labels).inc(int((mine == top1).sum()))
