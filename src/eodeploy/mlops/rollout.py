"""The canary controller: steps a candidate's share of traffic (10 → 25 → 50 → 100 % by default)
through ``serving.json``, judges each window from the servers' metrics, and promotes or rolls back.

It runs as a CLI process beside one or several servers (it reads their ``/metrics``) or inside the
server, started by the API. Each window closes after ``window_s`` (or earlier, after
``window_requests`` candidate requests); its verdict (``analysis.evaluate``) is pass, fail or
inconclusive. A pass moves to the next share, an inconclusive window holds it and never counts as
a pass, and the rollout rolls back after ``max_failures`` failed windows — also while it waits at
the manual gate before 100 % — or after ``max_inconclusive`` inconclusive windows in a row outside
the gate (too little traffic to judge: Flagger's progress deadline). A candidate changed by hand (the ``canary`` label) restarts the
analysis from the first step. Every decision is written to ``model_decisions`` with its figures,
and a split counts as applied only once every watched server reports serving it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from eodeploy.errors import ConflictError, InvalidInputError, ModelNotFoundError
from eodeploy.mlops import history
from eodeploy.mlops.analysis import (
    FAIL,
    PASS,
    MetricsSource,
    MetricsUnavailableError,
    Snapshot,
    Thresholds,
    Verdict,
    VersionWindow,
    evaluate,
    window_between,
)
from eodeploy.monitor.db import Database, utcnow
from eodeploy.package.repository import ModelRepository
from eodeploy.serve.policy import ServingConfig, VersionPolicy

log = logging.getLogger("eodeploy.mlops.rollout")

DEFAULT_STEPS = (10.0, 25.0, 50.0, 100.0)
#: Decisions that write serving.json: recorded at the moment of the write.
_WRITES = ("step", "restart", "rollback", "promote")


def parse_steps(value: str | Sequence[float]) -> tuple[float, ...]:
    """``"10,25,50,100"``: increasing shares in (0, 100], ending at 100 (the promotion)."""
    try:
        steps = tuple(
            float(s) for s in (value.split(",") if isinstance(value, str) else value) if str(s).strip()
        )
    except ValueError:
        raise InvalidInputError(f"steps {value!r}: give percentages such as 10,25,50,100") from None
    if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise InvalidInputError(
            f"steps {value!r}: give increasing percentages in (0, 100], e.g. 10,25,50,100"
        )
    if steps[-1] != 100:
        raise InvalidInputError(f"steps {value!r}: the last step must be 100 (the candidate then takes over)")
    return steps


@dataclass(frozen=True)
class RolloutOptions:
    candidate: int
    steps: tuple[float, ...] = DEFAULT_STEPS
    window_s: float = 30.0
    #: Close a window early once the candidate has answered this many requests (0: by time only).
    window_requests: int = 0
    max_failures: int = 3
    gate: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: Pre-rollout quality gate: no rollout of a candidate whose recorded test accuracy is more than
    #: this much (a fraction) below the champion's on the same split (None: no gate).
    max_accuracy_drop: float | None = 0.02
    #: How long to wait for every server to serve a split just written (hot reload, model load).
    apply_timeout_s: float = 60.0
    poll_s: float = 0.25
    #: Inconclusive windows in a row (outside the manual gate) before rolling back: a canary nobody
    #: sends traffic to is not left routed for ever (0: hold for ever).
    max_inconclusive: int = 20

    def __post_init__(self) -> None:
        parse_steps(self.steps)
        if (
            self.window_s <= 0
            or self.max_failures < 1
            or self.window_requests < 0
            or self.max_inconclusive < 0
        ):
            raise InvalidInputError(
                "window_s must be > 0, max_failures >= 1, window_requests >= 0 and max_inconclusive >= 0"
            )


def not_the_same_test_set(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two packages' recorded test accuracies cannot be compared (None: they can). Trained
    packages record their test file list's hash; others must at least name the same split and size."""
    ma, mb = a.get("eodeploy:metrics") or {}, b.get("eodeploy:metrics") or {}
    ha, hb = ((p.get("eodeploy:training") or {}).get("test_files_hash") for p in (a, b))
    if ha and hb:
        return (
            None
            if ha == hb
            else f"the two versions were tested on different test splits (n={ma.get('n')} and {mb.get('n')})"
        )
    if (ma.get("split"), ma.get("n")) != (mb.get("split"), mb.get("n")):
        return "the two versions record accuracies on different splits"
    return None


class Controller:
    def __init__(
        self,
        repo_root: Path,
        model: str,
        options: RolloutOptions,
        source: MetricsSource,
        db: Database,
        default_policy: VersionPolicy,
        actor: str = "controller",
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self.repo = ModelRepository(repo_root)
        self.model = model
        self.opts = options
        self.source = source
        self.db = db
        self.policy = default_policy
        self.actor = actor
        self.on_event = on_event or (lambda _kind, _data: None)
        self.candidate = options.candidate
        self.champion: int | None = None
        self.step = 0
        self.failures = 0
        self.inconclusive = 0  # in a row
        self.state = "starting"
        self.rollout_id: int | None = None
        self.approved = False
        self.last: dict[str, Any] | None = None
        self._reference: VersionWindow | None = None
        self._seen = 0  # last decision row read back (approvals and aborts from elsewhere)
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._lease: Any = None
        self._written_at: datetime | None = None
        self._wait_applied = True

    # --- state ----------------------------------------------------------------------------------
    @property
    def share(self) -> float:
        return self.opts.steps[self.step]

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "model": self.model, "rollout_id": self.rollout_id, "state": self.state,
                "champion": self.champion, "candidate": self.candidate,
                "share": self.share if self.state in ("running", "waiting_gate") else None,
                "steps": list(self.opts.steps), "step": self.step, "failures": self.failures,
                "max_failures": self.opts.max_failures, "gate": self.opts.gate, "approved": self.approved,
                "window_s": self.opts.window_s, "min_requests": self.opts.thresholds.min_requests,
                "last_window": self.last,
            }  # fmt: skip

    @property
    def finished(self) -> bool:
        return self.state in ("promoted", "rolled_back", "aborted")

    # --- the loop -------------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> str:
        """Run to the end: ``promoted``, ``rolled_back`` or ``aborted``."""
        self.start()
        return self.loop(stop)

    def start(self) -> None:
        """Take the model's rollout lease (one controller per model at a time, across processes),
        write the first split and wait until it is served. Refusals (unknown version, a rollout
        already running) raise here, before anything is written."""
        from eodeploy.monitor.lease import Held, acquire

        lease = acquire(self.db, f"rollout:{self.model}", ttl_s=max(30.0, 3 * self.opts.window_s))
        if not isinstance(lease, Held):
            holder, until = lease
            raise ConflictError(
                f"a rollout of {self.model!r} is already running (controller {holder}, lease until "
                f"{until:%H:%M:%S} UTC); approve or abort it with 'eodeploy models rollout "
                f"{self.model} --approve/--abort', or change its candidate with 'eodeploy models route'"
            )
        self._lease = lease
        try:
            self._begin()
        except BaseException:
            if self.rollout_id is not None and not self.finished:
                self._end("rollback", "the controller failed while starting; back to the champion")
            lease.release()
            raise

    def loop(self, stop: threading.Event | None = None) -> str:
        """Windows and decisions until promoted, rolled back or aborted. Stopped early (``stop``
        set, Ctrl-C, an error), it rolls back: no canary is left without a controller watching."""
        stop = stop or threading.Event()
        try:
            while not self.finished:
                if stop.is_set():
                    self._wait_applied = False  # the servers may be stopping too
                    self._end("rollback", "the controller was stopped before the end; back to the champion")
                    break
                self._cycle(stop)
        except BaseException as exc:
            if not self.finished:
                self._wait_applied = False
                self._end(
                    "rollback", f"the controller stopped ({type(exc).__name__}: {exc}); back to the champion"
                )
            raise
        finally:
            if self._lease is not None:
                self._lease.release()
        return self.state

    def _quality_gate(self, champion: int) -> None:
        """Live checks judge errors, latency and agreement on the traffic: a candidate that agrees
        with the champion on familiar inputs but scores far lower on the held-out test split would
        pass them (the worked example promoted one). Refused here, and recorded, before any traffic."""
        drop = self.opts.max_accuracy_drop
        if drop is None:
            return
        props = [self.repo.get(self.model, v).properties for v in (self.candidate, champion)]
        cand, champ = (p.get("eodeploy:metrics") or {} for p in props)
        if cand.get("accuracy") is None or champ.get("accuracy") is None:
            return  # nothing recorded: the live checks alone decide
        why = not_the_same_test_set(*props)
        if why:
            self.on_event(
                "warning", {"message": f"quality gate not applied: {why}; the live checks alone decide"}
            )
            return
        if cand["accuracy"] >= champ["accuracy"] - drop:
            return
        reason = (
            f"v{self.candidate} scores {100 * cand['accuracy']:.2f} % on its {cand.get('split')} split "
            f"(n={cand.get('n')}) against the champion v{champion}'s {100 * champ['accuracy']:.2f} %: more "
            f"than {100 * drop:.1f} points lower, so it is not rolled out"
        )
        with self.db.session() as s:
            history.record(s, self.model, "refused", self.actor, reason, champion=champion,
                           candidate=self.candidate, figures={"candidate": cand.get("accuracy"),
                                                              "champion": champ.get("accuracy")})  # fmt: skip
        raise InvalidInputError(
            f"{reason}; evaluate or retrain it, or allow a larger drop (--max-accuracy-drop, in points)"
        )

    def retarget(self, candidate: int) -> None:
        """Another candidate for the running rollout: the canary label changes, and the loop,
        seeing it as it would a change by hand, restarts the analysis."""
        if candidate not in self.repo.versions(self.model):
            raise ModelNotFoundError(f"{self.model!r} has no version {candidate}")
        if candidate == self.champion:
            raise InvalidInputError(f"version {candidate} is the champion; roll out another version")
        assert self.champion is not None
        self._write(self.champion, candidate, self.share)

    def _begin(self) -> None:
        versions = self.repo.versions(self.model)
        if not versions:
            raise ModelNotFoundError(f"no model named {self.model!r} in {self.repo.root}")
        if self.candidate not in versions:
            raise ModelNotFoundError(f"{self.model!r} has no version {self.candidate} (versions: {versions})")
        cfg = self._read()
        stable = cfg.labels.get("stable")
        others = [v for v in versions if v != self.candidate]
        champion = stable if stable in versions else (max(others) if others else None)
        if champion is None or champion == self.candidate:
            raise InvalidInputError(
                f"version {self.candidate} of {self.model!r} is already the stable version; "
                "roll out another version"
            )
        self.champion = champion
        self._quality_gate(champion)
        before = cfg.canary_percent
        labels = self._write(champion, self.candidate, self.share)
        with self.db.session() as s:
            row = history.record(
                s, self.model, "start", self.actor,
                f"rollout of v{self.candidate} against v{champion}: steps "
                f"{', '.join(f'{x:g}' for x in self.opts.steps)} %, windows of {self.opts.window_s:g} s"
                f"{f' or {self.opts.window_requests} requests' if self.opts.window_requests else ''}, "
                f"rollback after {self.opts.max_failures} failed windows"
                f"{', manual gate before 100 %' if self.opts.gate else ''}",
                champion=champion, candidate=self.candidate, from_share=before, to_share=self.share,
                labels=labels, figures={"options": _options(self.opts)}, at=self._written_at,
            )  # fmt: skip
            self.rollout_id = row.id
            self._seen = row.id
            row_id = row.id
        self.state = "running"
        self._emit_row(row_id)
        self._applied(row_id, champion, self.candidate, self.share)

    def _cycle(self, stop: threading.Event) -> None:
        """One window and the decision on it."""
        if self._external_change():
            return
        start = self._snapshot()
        if start is None:
            stop.wait(1.0)
            return
        end: Snapshot | None = None
        problem = ""
        last_check = time.monotonic()
        while True:
            if stop.wait(self.opts.poll_s):
                return
            if time.monotonic() - last_check >= 0.5:
                last_check = time.monotonic()
                if self._external_change():
                    return
            try:
                end = self.source()
                problem = ""
            except MetricsUnavailableError as exc:
                problem = str(exc)
                continue
            key = (self.model, str(self.candidate))
            seen = end.requests.get(key, 0) - start.requests.get(key, 0)
            elapsed = end.t - start.t
            self.on_event("tick", {"share": self.share, "elapsed": elapsed, "window_s": self.opts.window_s,
                                   "candidate_requests": int(seen), "failures": self.failures})  # fmt: skip
            if elapsed >= self.opts.window_s or (
                self.opts.window_requests and seen >= self.opts.window_requests
            ):
                break
        closed_at = utcnow()
        if self._external_change():  # what the window measured is not this rollout's any more
            return
        assert self.champion is not None
        w = window_between(start, end, self.model, self.champion, self.candidate)
        verdict = (
            Verdict("inconclusive", [f"metrics unreachable at the window's end: {problem}"], {})
            if problem
            else evaluate(w, self.opts.thresholds, self._reference, self._feedback())
        )
        if w.champion.requests >= self.opts.thresholds.min_requests:
            self._reference = w.champion
        verdict.figures["closed_at"] = closed_at.isoformat() + "Z"
        if verdict.outcome == FAIL:
            self.failures += 1
        held = verdict.outcome not in (PASS, FAIL) and self.state != "waiting_gate"
        self.inconclusive = self.inconclusive + 1 if held else 0
        verdict.figures["failures"] = self.failures
        verdict.figures["inconclusive_in_a_row"] = self.inconclusive
        with self._lock:
            self.last = {"verdict": verdict.outcome, "reason": verdict.text, "figures": verdict.figures}
        self._record("window", verdict.text, verdict=verdict.outcome, figures=verdict.figures)
        if verdict.outcome == FAIL and self.failures >= self.opts.max_failures:
            self._end(
                "rollback",
                f"{self.failures} failed windows (limit {self.opts.max_failures}); last: {verdict.text}",
                figures=verdict.figures,
            )
        elif self.opts.max_inconclusive and self.inconclusive >= self.opts.max_inconclusive:
            self._end(
                "rollback",
                f"{self.inconclusive} inconclusive windows in a row (limit {self.opts.max_inconclusive}): "
                f"too little to judge the candidate on; last: {verdict.text}",
                figures=verdict.figures,
            )
        elif verdict.outcome == PASS:
            self._advance(verdict)

    def _advance(self, verdict: Verdict) -> None:
        if self.step == len(self.opts.steps) - 1:
            self._end("promote", f"passed at {self.share:g} %: {verdict.text}", figures=verdict.figures)
            return
        if self.opts.gate and self.step == len(self.opts.steps) - 2 and not self.approved:
            if self.state != "waiting_gate":
                self.state = "waiting_gate"
                self._record(
                    "gate",
                    f"passed at {self.share:g} %; holding before 100 % until approved "
                    f"(eodeploy models rollout {self.model} --approve); failed windows still count",
                    figures=verdict.figures,
                )
            return
        self._move(self.step + 1, f"passed at {self.share:g} %: {verdict.text}", verdict.figures)

    def _move(self, step: int, reason: str, figures: dict[str, Any] | None = None) -> None:
        before = self.share
        with self._lock:
            self.step = step
            self.state = "running"
        assert self.champion is not None
        self._write(self.champion, self.candidate, self.share)
        row_id = self._record("step", reason, from_share=before, to_share=self.share, figures=figures)
        self._applied(row_id, self.champion, self.candidate, self.share)

    def _end(self, action: str, reason: str, figures: dict[str, Any] | None = None) -> None:
        assert self.champion is not None
        before = self.share
        if action == "promote":
            self._write(self.candidate, None, 0.0)
            stable, state = self.candidate, "promoted"
        else:
            self._write(self.champion, None, 0.0)
            stable, state = self.champion, "rolled_back"
        to_share = 100.0 if action == "promote" else 0.0
        with self._lock:
            self.state = state
        row_id = self._record(action, reason, from_share=before, to_share=to_share, figures=figures)
        self._applied(row_id, stable, None, 0.0)

    # --- messages from elsewhere ----------------------------------------------------------------
    def _external_change(self) -> bool:
        """Approvals and aborts recorded by others, and a candidate changed in serving.json.
        True when the current window must be dropped."""
        assert self.rollout_id is not None
        with self.db.session() as s:
            rows = history.rollout_rows(s, self.rollout_id, self._seen)
            news = [(r.id, r.action, r.actor, r.reason) for r in rows]
        for rid, action, actor, reason in news:
            self._seen = max(self._seen, rid)
            if action == "approve" and not self.approved:
                self.approved = True
                if self.state == "waiting_gate":
                    self._move(self.step + 1, f"gate approved by {actor}")
                    return True
            elif action == "abort" and actor != self.actor:
                self._end("rollback", f"aborted by {actor}: {reason}")
                return True
        cfg = self._read()
        canary, stable = cfg.labels.get("canary"), cfg.labels.get("stable")
        if canary == self.candidate and stable == self.champion:
            return False
        if canary is None or stable is None or canary == stable:
            with self._lock:
                self.state = "aborted"
            self._record(
                "abort",
                f"serving.json was changed by hand (labels {cfg.labels}); the controller stops and "
                "leaves the routing as it is now",
                labels=cfg.labels,
            )
            return True
        old = self.candidate
        with self._lock:
            self.candidate, self.champion = canary, stable
            self.step, self.failures, self.inconclusive, self.approved, self._reference = 0, 0, 0, False, None
            self.state = "running"
        self._write(stable, canary, self.share)
        row_id = self._record(
            "restart",
            f"the candidate changed from v{old} to v{canary} (champion v{stable}); the analysis "
            f"restarts at {self.share:g} % with no failed window",
            to_share=self.share,
        )
        self._applied(row_id, stable, canary, self.share)
        return True

    def _feedback(self) -> tuple[Any, Any] | None:
        """Live accuracy of both sides since the rollout started (``mlops.feedback``)."""
        from eodeploy.mlops.feedback import accuracy

        if self.champion is None:
            return None
        window = timedelta(seconds=time.monotonic() - self._started)
        n = self.opts.thresholds.min_labels
        try:
            with self.db.session() as s:
                return (
                    accuracy(s, self.model, self.candidate, window, min_labels=n),
                    accuracy(s, self.model, self.champion, window, min_labels=n),
                )
        except Exception as exc:  # noqa: BLE001 - no accuracy, no accuracy check
            log.warning("feedback accuracy unavailable (%s); the check is skipped", exc)
            return None

    # --- serving.json, metrics, history -----------------------------------------------------------
    def _read(self) -> ServingConfig:
        return ServingConfig.read(self.repo.root / self.model, self.policy)

    def _write(self, stable: int, canary: int | None, percent: float) -> dict[str, int]:
        cfg = self._read()
        labels = dict(cfg.labels)
        labels["stable"] = stable
        if canary is None:
            labels.pop("canary", None)
        else:
            labels["canary"] = canary
        cfg.labels, cfg.canary_percent = labels, percent if canary is not None else 0.0
        cfg = ServingConfig.from_dict(cfg.to_dict(), cfg.policy, f"{self.model}/serving.json")
        self._written_at = utcnow()
        cfg.write(self.repo.root / self.model)
        return labels

    def _snapshot(self) -> Snapshot | None:
        try:
            return self.source()
        except MetricsUnavailableError as exc:
            log.warning("%s", exc)
            self.on_event("warning", {"message": str(exc)})
            return None

    def _applied(self, row_id: int, stable: int, canary: int | None, percent: float) -> None:
        """Wait until every watched server serves this split, and note when (``applied_at``)."""
        if not self._wait_applied:
            return
        want = (str(stable), "" if canary is None else str(canary))
        deadline = time.monotonic() + self.opts.apply_timeout_s
        while time.monotonic() < deadline:
            snap = self._snapshot()
            splits = snap.splits.get(self.model, []) if snap else []
            if splits and all(
                (st, ca) == want and abs(p - (percent if canary is not None else 0.0)) < 1e-6
                for st, ca, p in splits
            ):
                with self.db.session() as s:
                    row = s.get(history.Decision, row_id)
                    if row is not None:
                        row.applied_at = utcnow()
                self.on_event("applied", {"row": row_id})
                return
            time.sleep(min(self.opts.poll_s, 0.1))
        log.warning(
            "not every server serves the new split of %s after %.0f s", self.model, self.opts.apply_timeout_s
        )
        self.on_event(
            "warning",
            {"message": f"the new split is not served everywhere after {self.opts.apply_timeout_s:.0f} s"},
        )

    def _record(
        self,
        action: str,
        reason: str,
        *,
        verdict: str | None = None,
        from_share: float | None = None,
        to_share: float | None = None,
        labels: dict[str, int] | None = None,
        figures: dict[str, Any] | None = None,
    ) -> int:
        if labels is None:
            labels = dict(self._read().labels)
        with self.db.session() as s:
            row = history.record(
                s, self.model, action, self.actor, reason, rollout_id=self.rollout_id,
                champion=self.champion, candidate=self.candidate,
                from_share=self.share if from_share is None and action == "window" else from_share,
                to_share=self.share if to_share is None and action == "window" else to_share,
                verdict=verdict, labels=labels, figures=figures,
                at=self._written_at if action in _WRITES else None,
            )  # fmt: skip
            row_id = row.id
        self._seen = max(self._seen, row_id)
        self._emit_row(row_id)
        return row_id

    def _emit_row(self, row_id: int) -> None:
        with self.db.session() as s:
            row = s.get(history.Decision, row_id)
            data = history.decision_dict(row) if row is not None else {}
        self.on_event("decision", data)


def ask(db: Database, model: str, action: str, actor: str, reason: str = "") -> int:
    """Record an ``approve`` or ``abort`` for the model's running rollout (the controller, wherever
    it runs, reads it within a second). The rollout's id, or ``ConflictError`` when none runs."""
    with db.session() as s:
        start = history.open_rollout(s, model)
        if start is None:
            raise ConflictError(f"no rollout of {model!r} is running; start one with --candidate")
        history.record(
            s, model, action, actor, reason or f"{action} asked by {actor}", rollout_id=start.id,
            champion=start.champion, candidate=start.candidate,
        )  # fmt: skip
        return start.id


def record_route(
    db: Database, model: str, before: ServingConfig, after: ServingConfig, actor: str = "user (cli)"
) -> None:
    """A hand-made labels/split change (``eodeploy models route``) in the model's history."""
    changes = []
    for label in sorted(set(before.labels) | set(after.labels)):
        a, b = before.labels.get(label), after.labels.get(label)
        if a != b:
            changes.append(f"{label}: {'-' if a is None else f'v{a}'} → {'-' if b is None else f'v{b}'}")
    if before.canary_percent != after.canary_percent:
        changes.append(f"canary share {before.canary_percent:g} → {after.canary_percent:g} %")
    if str(before.policy) != str(after.policy):
        changes.append(f"version policy {before.policy} → {after.policy}")
    with db.session() as s:
        history.record(
            s, model, "route", actor, "; ".join(changes) or "no change",
            champion=after.labels.get("stable"), candidate=after.labels.get("canary"),
            from_share=before.canary_percent, to_share=after.canary_percent, labels=after.labels,
        )  # fmt: skip


def _options(o: RolloutOptions) -> dict[str, Any]:
    t = o.thresholds
    return {
        "steps": list(o.steps), "window_s": o.window_s, "window_requests": o.window_requests,
        "max_failures": o.max_failures, "max_inconclusive": o.max_inconclusive, "gate": o.gate,
        "min_requests": t.min_requests,
        "max_error_increase": t.max_error_increase, "p99_ratio": t.p99_ratio,
        "min_agreement": t.min_agreement, "min_mirrored": t.min_mirrored,
        "require_agreement": t.require_agreement, "max_accuracy_drop": o.max_accuracy_drop,
    }  # fmt: skip
