"""A canary window's figures from the servers' Prometheus metrics, and the verdict on them.

Counters and histograms are cumulative: a window is the difference of two snapshots, each the sum
over every watched server (replicas behind one balancer are one service). The verdict is a pure
function of the figures, so it is tested on real metric text without a server.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from eodeploy.errors import EodeployError
from eodeploy.web.live import SERVER_ERRORS, quantile

Key = tuple[str, str]  # (model, version)


class MetricsUnavailableError(EodeployError, ConnectionError):
    """A watched server's /metrics could not be read."""


@dataclass
class Snapshot:
    """Cumulative counts summed over servers, and each server's effective split."""

    t: float = field(default_factory=time.monotonic)
    requests: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    errors: dict[Key, float] = field(default_factory=lambda: defaultdict(float))
    buckets: dict[Key, dict[float, float]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(float))
    )
    mirrored: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    agreed: dict[tuple[str, str, str], float] = field(default_factory=lambda: defaultdict(float))
    #: model -> one (stable, canary, percent) per server that serves it
    splits: dict[str, list[tuple[str, str, float]]] = field(default_factory=lambda: defaultdict(list))

    def add_text(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = s.labels
                if s.name == "eodeploy_serving_split":
                    splits = self.splits[labels["model"]]
                    splits.append((labels["stable"], labels["canary"], float(s.value)))
                elif s.name in ("eodeploy_canary_mirrored_total", "eodeploy_canary_agreement_total"):
                    key3 = (labels["model"], labels["champion"], labels["candidate"])
                    target = self.mirrored if s.name == "eodeploy_canary_mirrored_total" else self.agreed
                    target[key3] += s.value
                elif s.name == "eodeploy_inference_requests_total":
                    key = (labels["model"], labels["version"])
                    self.requests[key] += s.value
                    if labels.get("outcome") in SERVER_ERRORS:
                        self.errors[key] += s.value
                elif s.name == "eodeploy_inference_request_duration_seconds_bucket":
                    self.buckets[(labels["model"], labels["version"])][float(labels["le"])] += s.value


def scrape(urls: Sequence[str], timeout_s: float = 5.0) -> Snapshot:
    """One snapshot summed over the servers' ``/metrics``."""
    snap = Snapshot()
    for url in urls:
        target = url.rstrip("/") + "/metrics"
        try:
            with urllib.request.urlopen(target, timeout=timeout_s) as resp:  # noqa: S310 - operator's URL
                snap.add_text(resp.read().decode())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MetricsUnavailableError(f"cannot read {target} ({exc}); is the server running?") from exc
    return snap


MetricsSource = Callable[[], Snapshot]


def http_source(urls: Sequence[str], timeout_s: float = 5.0) -> MetricsSource:
    if not urls:
        raise EodeployError("no server to watch: give at least one --server URL")
    return lambda: scrape(urls, timeout_s)


def text_source(read: Callable[[], str]) -> MetricsSource:
    """A source over a metrics text producer (the server's own registry, for the in-server controller)."""

    def snap() -> Snapshot:
        s = Snapshot()
        s.add_text(read())
        return s

    return snap


@dataclass
class VersionWindow:
    requests: int
    errors: int
    p99_s: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class Window:
    """What one window saw: the two sides, the mirrored comparisons, how long it lasted."""

    champion: VersionWindow
    candidate: VersionWindow
    mirrored: int
    agreed: int
    seconds: float
    reset: bool = False  # a counter went backwards: a server restarted inside the window

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.mirrored if self.mirrored else None


def window_between(a: Snapshot, b: Snapshot, model: str, champion: int, candidate: int) -> Window:
    reset = False

    def side(version: int) -> VersionWindow:
        nonlocal reset
        key = (model, str(version))
        n = b.requests.get(key, 0.0) - a.requests.get(key, 0.0)
        e = b.errors.get(key, 0.0) - a.errors.get(key, 0.0)
        before = a.buckets.get(key, {})
        buckets = {le: c - before.get(le, 0.0) for le, c in b.buckets.get(key, {}).items()}
        if n < 0 or e < 0 or any(c < 0 for c in buckets.values()):
            reset = True
        return VersionWindow(max(int(n), 0), max(int(e), 0), quantile(0.99, buckets) if n > 0 else None)

    k3 = (model, str(champion), str(candidate))
    mirrored = b.mirrored.get(k3, 0.0) - a.mirrored.get(k3, 0.0)
    agreed = b.agreed.get(k3, 0.0) - a.agreed.get(k3, 0.0)
    if mirrored < 0 or agreed < 0:
        reset = True
    return Window(
        side(champion), side(candidate), max(int(mirrored), 0), max(int(agreed), 0), b.t - a.t, reset
    )


@dataclass(frozen=True)
class Thresholds:
    """Flagger-style checks, relative to the champion. The defaults are the plan's: error rate at
    most 0.5 points above the champion's, p99 at most 1.5x the champion's (and never failed for
    less than ``p99_slack_s`` more: histogram buckets cannot resolve finer), top-1 agreement on
    mirrored inputs at least 90 % (p99 judged from 50 candidate requests, agreement from 20
    mirrored patches), and fewer than ``min_requests`` candidate requests decide nothing."""

    min_requests: int = 20
    max_error_increase: float = 0.005
    p99_ratio: float = 1.5
    p99_slack_s: float = 0.010
    min_agreement: float = 0.90
    min_mirrored: int = 20
    #: A p99 of fewer requests is their maximum: one slow request would fail the window.
    min_latency_requests: int = 50
    #: No accuracy-based verdict below this many feedback labels per version (Settings.feedback_min_labels).
    min_labels: int = 200
    #: A window whose agreement could not be judged (too few mirrored patches) holds the share
    #: instead of passing: error rate and latency alone would promote a fast, wrong candidate.
    require_agreement: bool = True


PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass
class Verdict:
    outcome: str  # pass | fail | inconclusive
    reasons: list[str]
    figures: dict[str, Any]

    @property
    def text(self) -> str:
        return "; ".join(self.reasons)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def evaluate(
    w: Window,
    th: Thresholds,
    reference: VersionWindow | None = None,
    feedback: tuple[Any, Any] | None = None,
) -> Verdict:
    """The verdict on one window. ``reference``: the champion's figures from the last window where
    it had enough requests, used when it had too few in this one (at 100 % it has none).
    ``feedback``: (candidate, champion) accuracies with ``decidable``, ``rate``, ``low``, ``n``."""
    c, ch = w.candidate, w.champion
    ref = ch if ch.requests >= th.min_requests else reference
    figures: dict[str, Any] = {
        "seconds": round(w.seconds, 2),
        "candidate": {"requests": c.requests, "errors": c.errors, "p99_ms": _ms(c.p99_s)},
        "champion": {"requests": ch.requests, "errors": ch.errors, "p99_ms": _ms(ch.p99_s)},
        "mirrored": w.mirrored,
        "agreed": w.agreed,
        "agreement": None if w.agreement is None else round(w.agreement, 4),
        "reference": "this window" if ref is ch else "an earlier window" if ref is not None else None,
    }
    if w.reset:
        return Verdict(INCONCLUSIVE, ["a server restarted during the window (a counter went back)"], figures)
    if c.requests < th.min_requests:
        return Verdict(
            INCONCLUSIVE,
            [f"only {c.requests} candidate requests (< {th.min_requests}): holding the share"],
            figures,
        )
    failed: list[str] = []
    passed: list[str] = []
    base_rate = ref.error_rate if ref is not None else 0.0
    line = f"error rate {_pct(c.error_rate)} ({c.errors}/{c.requests}) vs champion {_pct(base_rate)}"
    if c.error_rate > base_rate + th.max_error_increase:
        failed.append(f"{line} + {100 * th.max_error_increase:.1f} pt")
    else:
        passed.append(line)
    if c.requests < th.min_latency_requests:
        passed.append(f"p99 not judged ({c.requests} candidate requests < {th.min_latency_requests})")
    elif c.p99_s is not None and ref is not None and ref.p99_s is not None:
        limit = max(th.p99_ratio * ref.p99_s, ref.p99_s + th.p99_slack_s)
        line = f"p99 {_ms(c.p99_s)} ms vs limit {_ms(limit)} ms (champion {_ms(ref.p99_s)} ms)"
        (failed if c.p99_s > limit else passed).append(line)
    if w.mirrored >= th.min_mirrored and w.agreement is not None:
        line = f"agreement {_pct(w.agreement)} on {w.mirrored} mirrored patches"
        if w.agreement < th.min_agreement:
            failed.append(f"{line} (< {_pct(th.min_agreement)})")
        else:
            passed.append(line)
    else:
        passed.append(f"agreement not judged ({w.mirrored} mirrored patches < {th.min_mirrored})")
    if feedback is not None:
        cand, champ = feedback
        if cand.decidable and champ.decidable:
            figures["feedback"] = {"candidate": _acc(cand), "champion": _acc(champ)}
            line = (
                f"feedback accuracy {_pct(cand.rate)} (n={cand.n}) vs champion {_pct(champ.rate)} "
                f"(95 % lower bound {_pct(champ.low)}, n={champ.n})"
            )
            (failed if cand.rate < champ.low else passed).append(line)
    if failed:
        return Verdict(FAIL, failed + passed, figures)
    if th.require_agreement and (w.mirrored < th.min_mirrored or w.agreement is None):
        return Verdict(
            INCONCLUSIVE,
            [f"only {w.mirrored} mirrored patches (< {th.min_mirrored}) to compare with the champion: "
             "holding the share", *passed],
            figures,
        )  # fmt: skip
    return Verdict(PASS, passed, figures)


def _ms(s: float | None) -> float | None:
    return None if s is None else round(s * 1000, 2)


def _acc(a: Any) -> dict[str, Any]:
    return {"rate": round(float(a.rate), 4), "low": round(float(a.low), 4), "n": int(a.n)}
