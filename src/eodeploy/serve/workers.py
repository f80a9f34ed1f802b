"""``eodeploy serve --workers N``: N server processes on one port, so one host uses every core.

Python spends about a millisecond of one core per request on HTTP parsing, routing and the
batcher's hand-off, so a single process cannot keep ONNX Runtime busy with a light model. Each
worker here is a whole server (HTTP, gRPC, dynamic batcher, registry) in its own process, bound
to the same HTTP and gRPC ports with ``SO_REUSEPORT``: the kernel spreads new connections over
the workers that are listening. A worker listens only once its models are loaded and warmed, so
the kernel never hands a connection to one that would answer "not ready".

The supervisor (this module, in the ``eodeploy serve`` process) loads nothing itself. It checks
the ports, starts the workers (``spawn``: no threads or ONNX Runtime state forked), gives each
its share of the cores for ONNX Runtime, restarts a worker that dies, forwards SIGTERM/SIGINT
so every worker drains (``serve.lifecycle``), and exits 0 when they all did. Metrics: every
worker writes its counters and histograms to files in one ``PROMETHEUS_MULTIPROC_DIR``, and
``/metrics`` on any worker sums them (``serve.metrics``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

from eodeploy.settings import Settings

log = logging.getLogger("eodeploy.serve.workers")

#: A worker that dies this soon after starting, this many times in a row, is not restarted again:
#: the whole server stops (a model that crashes the process on load would otherwise spin for ever).
EARLY_EXIT_S = 10.0
MAX_EARLY_EXITS = 5


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a container
    or Kubernetes CPU limit, which affinity does not show)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


def worker_settings(cfg: Settings, cores: int | None = None) -> Settings:
    """Each worker's settings: ONNX Runtime threads budgeted so workers x threads <= cores, and no
    idle-thread spinning (a spinning worker burns the core another worker needs) unless set."""
    cores = cores or available_cores()
    update: dict[str, object] = {}
    if not cfg.intra_op_threads:
        update["intra_op_threads"] = max(1, cores // cfg.workers)
    if "ort_spinning" not in cfg.model_fields_set:
        update["ort_spinning"] = False
    return cfg.model_copy(update=update)


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT, not yet listening: uvicorn listens on it once the
    worker's lifespan (model loading) has finished."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    sock.set_inheritable(False)
    return sock


def _die_with_parent() -> None:
    """Linux: SIGTERM this worker when the supervisor dies (even by SIGKILL), so no orphan keeps
    serving the port; it then drains like any other SIGTERM."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_worker(cfg: Settings, index: int) -> None:
    """One worker process: the whole server, listening on the shared port once ready."""
    os.setpgrp()  # Ctrl-C reaches the supervisor only; it forwards one signal, so none drains twice
    _die_with_parent()
    from eodeploy.cli.serve_cmd import run_server

    run_server(cfg, sockets=[reuseport_socket(cfg.host, cfg.port)], worker=index)


class Supervisor:
    """Starts ``cfg.workers`` workers, keeps them running, and stops them together."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = worker_settings(cfg)
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: dict[int, BaseProcess] = {}
        self.started: dict[int, float] = {}
        self.early_exits = 0
        self.stopping = False
        self.signals = 0

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        self.stopping = True
        # The first signal drains every worker; a second one tells them to stop at once.
        for p in self.procs.values():
            if p.pid is not None and p.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    def _start(self, index: int) -> None:
        p = self.ctx.Process(target=run_worker, args=(self.cfg, index), name=f"eodeploy-worker-{index}")
        p.start()
        self.procs[index], self.started[index] = p, time.monotonic()
        log.info("worker %d started (pid %s)", index, p.pid)

    def run(self) -> int:
        metrics_dir = tempfile.mkdtemp(prefix="eodeploy-metrics-")
        # Read by prometheus_client when each spawned worker imports it (serve.metrics).
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for i in range(self.cfg.workers):
                self._start(i)
            return self._watch(metrics_dir)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            for p in self.procs.values():
                if p.is_alive():
                    p.kill()
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

    def _watch(self, metrics_dir: str) -> int:
        from prometheus_client import multiprocess

        codes: dict[int, int | None] = {}
        deadline: float | None = None
        while True:
            if self.stopping and deadline is None:
                deadline = time.monotonic() + self.cfg.drain_delay_s + self.cfg.drain_timeout_s + 5
            for i, p in list(self.procs.items()):
                if i in codes or p.is_alive():
                    continue
                p.join()
                if p.pid is not None:  # its live gauges (queue length, model ready) no longer count
                    multiprocess.mark_process_dead(p.pid, metrics_dir)
                if self.stopping:
                    # Killed by our own SIGTERM before it could install its handler (still importing,
                    # nothing loaded, not listening): nothing was cut off, so that is a clean stop.
                    codes[i] = 0 if p.exitcode == -signal.SIGTERM else p.exitcode
                    continue
                quick = time.monotonic() - self.started[i] < EARLY_EXIT_S
                self.early_exits = self.early_exits + 1 if quick else 0
                log.error("worker %d (pid %s) exited with code %s", i, p.pid, p.exitcode)
                if self.early_exits >= MAX_EARLY_EXITS:
                    log.error(
                        "workers keep dying within %g s of starting (%d times in a row): stopping; "
                        "run 'eodeploy serve' without --workers to see why", EARLY_EXIT_S, self.early_exits,
                    )  # fmt: skip
                    self._on_signal(signal.SIGTERM, None)
                    codes[i] = p.exitcode or 1
                    continue
                time.sleep(min(2.0, 0.1 * 2**self.early_exits) if quick else 0)  # back off a crash loop
                self._start(i)
            if len(codes) == len(self.procs):
                failed = {i: c for i, c in codes.items() if c != 0}
                if failed:
                    log.error("workers exited with codes %s", failed)
                return 0 if not failed and self.early_exits < MAX_EARLY_EXITS else 1
            if deadline is not None and time.monotonic() > deadline:
                late = [i for i, p in self.procs.items() if p.is_alive()]
                log.error("workers %s still running %g s after the drain began: killing them", late,
                          self.cfg.drain_delay_s + self.cfg.drain_timeout_s + 5)  # fmt: skip
                for i in late:
                    self.procs[i].kill()
                    self.procs[i].join()
                    codes[i] = 1
                continue
            time.sleep(0.1)
