"""Serving drift: a sample of requests in bounded memory per model version, judged per window.

One request in ``every`` is sampled: a few pixels of a few of its patches go into a reservoir
(a uniform sample of at most ``capacity`` pixels whatever the traffic; no request is kept whole)
and its predicted classes are counted. When a time window closes, the sample's per-band robust
shift against the package's reference statistics and the predicted-class shares against its
reference class frequencies (``mlops.drift``) become Prometheus gauges on the server's registry
and, when the server has the monitoring database, a ``drift_windows`` row.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily

from eodeploy.mlops.drift import (
    prediction_shift,
    reference_check,
    reference_shares,
    signed_shifts,
    store_window,
)
from eodeploy.package.stats import SHIFT_SCENE_LIMIT, robust_shift
from eodeploy.runtime.preprocess import convert_units, guess_units, select_bands

log = logging.getLogger("eodeploy.drift")


class Uniform:
    """Uniform [0, 1) numbers drawn in blocks: one ``Generator`` call costs 15-35 µs here whatever
    its size, a slice of a block well under one."""

    def __init__(self, rng: np.random.Generator, block: int = 1 << 16) -> None:
        self._rng, self._block = rng, block
        self._pool = rng.random(block)
        self._pos = 0

    def take(self, m: int) -> np.ndarray:
        if self._pos + m > len(self._pool):
            self._pool = self._rng.random(max(self._block, m))
            self._pos = 0
        out = self._pool[self._pos : self._pos + m]
        self._pos += m
        return out


class Reservoir:
    """A uniform sample of at most ``capacity`` pixel vectors (Vitter's algorithm R): memory is
    capacity x bands x 4 bytes whatever the traffic, and the median of the sample estimates the
    window's median (standard error about 1.25 σ / √capacity)."""

    def __init__(self, n_bands: int, capacity: int, uniform: Uniform) -> None:
        self.values = np.empty((capacity, n_bands), np.float32)
        self.seen = 0
        self._uniform = uniform

    def add(self, x: np.ndarray) -> None:
        """``x``: (pixels, bands)."""
        cap = len(self.values)
        take = min(max(cap - self.seen, 0), len(x))
        if take:
            self.values[self.seen : self.seen + take] = x[:take]
        rest = x[take:]
        if len(rest):  # item i (0-based overall) replaces a random slot with probability cap / (i + 1)
            j = (self._uniform.take(len(rest)) * (self.seen + take + np.arange(1, len(rest) + 1))).astype(
                np.intp
            )
            keep = j < cap
            self.values[j[keep]] = rest[keep]
        self.seen += len(x)

    def sample(self) -> np.ndarray:
        """(bands, n) of the pixels kept."""
        return self.values[: min(self.seen, len(self.values))].T


@dataclass
class _Window:
    start: float  # epoch seconds, a multiple of the window length
    sketch: Reservoir
    counts: np.ndarray
    requests: int = 0
    sampled: int = 0
    patches: int = 0


@dataclass
class _Model:
    """What a window of one model version is judged against, read once from its package."""

    name: str
    version: int
    bands: list[str]
    units: str | None
    classes: list[str]
    reference: dict[str, Any] | None
    shares: dict[str, float] | None
    spec: Any = field(repr=False)


class ServingDrift:
    """Request sampling, windows and gauges of every served model version (one per app)."""

    def __init__(
        self, *, every: int = 10, patches: int = 4, pixels: int = 16, capacity: int = 4096,
        window_s: float = 300.0, min_pixels: int = 500, registry: Any = None, seed: int | None = None,
    ) -> None:  # fmt: skip
        self.every, self.patches, self.pixels = max(1, every), max(1, patches), max(1, pixels)
        self.capacity, self.window_s, self.min_pixels = capacity, window_s, min_pixels
        self.instance = f"{socket.gethostname()}:{os.getpid()}"
        #: Where closed windows are kept: a callable giving a ``monitor.db.Database`` (None: not kept).
        self.database: Callable[[], Any] | None = None
        self._uniform = Uniform(np.random.default_rng(seed))
        self._lock = threading.Lock()
        self._models: dict[tuple[str, int], _Model] = {}
        self._windows: dict[tuple[str, int], _Window] = {}
        self._last: dict[tuple[str, int], dict[str, Any]] = {}
        self._ended: dict[tuple[str, int], float] = {}
        self._outbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self._writer: threading.Thread | None = None
        if registry is not None:
            registry.register(_Collector(self))

    @classmethod
    def from_settings(cls, settings: Any, registry: Any = None) -> ServingDrift | None:
        if settings.drift_sample_every <= 0:
            return None
        return cls(
            every=settings.drift_sample_every, patches=settings.drift_patches_per_request,
            pixels=settings.drift_pixels_per_patch, capacity=settings.drift_sketch_pixels,
            window_s=settings.drift_window_s, min_pixels=settings.drift_min_pixels, registry=registry,
        )  # fmt: skip

    # --- the request path ---------------------------------------------------------------------

    def observe(
        self, served: Any, raw: np.ndarray, band_names: Sequence[str] | None, units: str | None,
        proba: np.ndarray,
    ) -> None:  # fmt: skip
        """After a successful inference (``raw``: the checked (N, C, H, W) request). Cheap when the
        request is not sampled; never raises into the request."""
        key = (served.name, served.version)
        w = self._windows.get(key)
        if w is not None:
            w.requests += 1
            if (w.requests - 1) % self.every:
                return
        try:
            self._sample(key, served, raw, band_names, units, proba)
        except Exception:  # noqa: BLE001 - drift must never fail a request
            log.warning("drift sampling failed for %s v%s", *key, exc_info=True)

    def _sample(
        self, key: tuple[str, int], served: Any, raw: np.ndarray, band_names: Sequence[str] | None,
        units: str | None, proba: np.ndarray,
    ) -> None:  # fmt: skip
        model = self._models.get(key) or self._model(key, served)
        n, c, h, w_ = raw.shape
        k = min(self.patches, n)
        u = self._uniform.take(k * (self.pixels + 1))
        idx = (u[:k, None] * n).astype(np.intp) if n > k else np.arange(n)[:, None]
        where = (u[k:] * (h * w_)).astype(np.intp).reshape(k, self.pixels)
        px = raw[idx, :, where // w_, where % w_].reshape(k * self.pixels, c)  # (pixels, C); no copy of raw
        px = select_bands(px, model.spec, band_names)
        if units is not None and model.units is not None:
            px = convert_units(px, guess_units(raw, model.units) if units == "auto" else units, model.units)
        counts = None
        if proba.ndim == 2 and proba.shape[1] == len(model.classes):
            counts = np.bincount(proba.argmax(axis=1), minlength=len(model.classes))
        closed = None
        with self._lock:
            win = self._windows.get(key)
            now = time.time()
            if win is None or now >= win.start + self.window_s:
                if win is not None:
                    closed = self._close(key, win, now)
                win = self._windows[key] = self._new_window(model, now)
                win.requests = 1
            win.sampled += 1
            win.sketch.add(px)
            if counts is not None:
                win.counts += counts
                win.patches += int(counts.sum())
        if closed is not None:
            self._keep(closed)

    def _model(self, key: tuple[str, int], served: Any) -> _Model:
        spec, props = served.spec, served.package.properties
        classes = list(spec.class_names)
        m = _Model(key[0], key[1], list(spec.bands), spec.units, classes,
                   props.get("eodeploy:reference_stats"), reference_shares(props, classes), spec)  # fmt: skip
        self._models[key] = m
        return m

    def _new_window(self, model: _Model, now: float) -> _Window:
        # Windows on a grid, so replicas' windows line up; after an early close (close_due with
        # force) the rest of that grid step is a window of its own.
        start = max(now - now % self.window_s, self._ended.get((model.name, model.version), 0.0))
        return _Window(start, Reservoir(len(model.bands), self.capacity, self._uniform),
                       np.zeros(len(model.classes), np.int64))  # fmt: skip

    # --- closing windows ----------------------------------------------------------------------

    def close_due(self, now: float | None = None, *, force: bool = False) -> list[dict[str, Any]]:
        """Close the windows whose time is up (every open one with ``force``): gauges updated,
        rows queued for the database. Called on sampled requests and at every scrape."""
        now = time.time() if now is None else now
        closed = []
        with self._lock:
            for key, win in list(self._windows.items()):
                if force or now >= win.start + self.window_s:
                    del self._windows[key]
                    closed.append(self._close(key, win, now))
        for c in closed:
            self._keep(c)
        return closed

    def _close(self, key: tuple[str, int], win: _Window, now: float) -> dict[str, Any]:
        """The window's figures (under the lock; a few medians of ``capacity`` values)."""
        model = self._models[key]
        end = self._ended[key] = min(now, win.start + self.window_s)
        values = win.sketch.sample()
        shift = None
        if model.reference and model.reference.get("bands") and values.shape[1] >= self.min_pixels:
            shift = robust_shift(values, model.reference, model.bands)
        total = int(win.counts.sum())
        shares = {c: round(float(n) / total, 4) for c, n in zip(model.classes, win.counts)} if total else {}
        signed = signed_shifts(shift) if shift else {}
        out = {
            "model_name": model.name, "model_version": model.version, "instance": self.instance,
            "started_at": _utc(win.start), "ended_at": _utc(end),
            "requests": win.requests, "sampled_requests": win.sampled, "patches": win.patches,
            "pixels": win.sketch.seen,
            "median_shift": shift["median_shift"] if shift else None,
            "bands": {b: {"median": r["median"], "shift": round(signed[b], 3)} for b, r in shift["bands"].items()}
            if shift else {},
            "class_shares": shares, "reference_shares": model.shares,
            "prediction_shift": prediction_shift(shares, model.shares),
            "flagged": bool(shift and reference_check(shift)["flagged"]),
            "note": None if shift else (
                "the package has no reference statistics" if not model.reference
                else f"too few sampled pixels ({values.shape[1]} < {self.min_pixels}) to judge the bands"),
        }  # fmt: skip
        self._last[key] = out
        return out

    def _keep(self, window: dict[str, Any]) -> None:
        if self.database is None:
            return
        self._outbox.put(window)
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write, name="drift-writer", daemon=True)
            self._writer.start()

    def _write(self) -> None:
        """Off the request path: a database that is down delays nothing but this thread."""
        while True:
            window = self._outbox.get()
            try:
                if self.database is not None:
                    store_window(self.database(), window)
            except Exception as exc:  # noqa: BLE001 - a lost window is logged, serving goes on
                log.warning("drift window of %s v%s not stored: %s", window["model_name"],
                            window["model_version"], exc)  # fmt: skip
            finally:
                self._outbox.task_done()

    def flush(self) -> None:
        """Wait until every closed window queued for the database has been written (or failed)."""
        self._outbox.join()

    def last(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The last closed window of each model version."""
        return dict(self._last)


def _utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC).replace(tzinfo=None)


class _Collector:
    """Gauges of the last closed window per model version; a scrape first closes due windows."""

    def __init__(self, drift: ServingDrift) -> None:
        self.drift = drift

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.drift.close_due()
        mv = ["model", "version"]
        score = GaugeMetricFamily(
            "eodeploy_drift_score",
            "Median over bands of |median - reference median| / reference IQR, sampled requests of the last window",
            labels=mv,
        )
        band = GaugeMetricFamily(
            "eodeploy_drift_band_shift",
            "Per band |median - reference median| / reference IQR, last window",
            labels=[*mv, "band"],
        )
        flagged = GaugeMetricFamily(
            "eodeploy_drift_flagged",
            f"1 when the last window's drift score exceeded {SHIFT_SCENE_LIMIT}",
            labels=mv,
        )
        share = GaugeMetricFamily(
            "eodeploy_prediction_share",
            "Share of each predicted class in the last window",
            labels=[*mv, "class"],
        )
        pshift = GaugeMetricFamily(
            "eodeploy_prediction_shift",
            "Total variation distance between predicted and reference class shares, last window",
            labels=mv,
        )
        for (name, version), w in sorted(self.drift.last().items()):
            lv = [name, str(version)]
            if w["median_shift"] is not None:
                score.add_metric(lv, w["median_shift"])
                flagged.add_metric(lv, float(w["flagged"]))
                for b, r in w["bands"].items():
                    band.add_metric([*lv, b], abs(r["shift"]))
            for c, v in w["class_shares"].items():
                share.add_metric([*lv, c], v)
            if w["prediction_shift"] is not None:
                pshift.add_metric(lv, w["prediction_shift"])
        yield from (score, band, flagged, share, pshift)
