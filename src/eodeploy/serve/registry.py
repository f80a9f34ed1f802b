"""Loaded model versions: version policy, labels, canary routing and hot reload without downtime."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eodeploy.errors import EodeployError, ModelNotFoundError, ModelNotReadyError
from eodeploy.package.repository import ModelPackage, ModelRepository, sha256_file
from eodeploy.runtime.predictor import Predictor
from eodeploy.serve.batcher import BatchConfig, DynamicBatcher
from eodeploy.serve.cache import ResponseCache
from eodeploy.serve.metrics import ServerMetrics
from eodeploy.serve.policy import SERVING_FILE, ServingConfig, VersionPolicy
from eodeploy.settings import Settings

log = logging.getLogger("eodeploy.serve.registry")


@dataclass
class ServedModel:
    """One loaded, warmed-up version with its own batcher."""

    package: ModelPackage
    predictor: Predictor
    batcher: DynamicBatcher
    #: The model file's sha256 and a digest of its package: what the response cache keys on, and
    #: what tells a hot reload that a version number now names another model.
    identity: str
    loaded_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def version(self) -> int:
        return self.package.version

    @property
    def spec(self) -> Any:
        return self.predictor.spec


@dataclass
class VersionState:
    state: str  # LOADING | AVAILABLE | UNLOADING | UNAVAILABLE
    reason: str = ""


class ModelRegistry:
    def __init__(
        self, settings: Settings, metrics: ServerMetrics, cache: ResponseCache | None = None
    ) -> None:
        self.settings = settings
        self.cache = cache
        self.repo = ModelRepository(settings.model_repo)
        self.metrics = metrics
        self.default_policy = VersionPolicy.parse(settings.version_policy)
        self._served: dict[str, dict[int, ServedModel]] = {}
        self._configs: dict[str, ServingConfig] = {}
        self._states: dict[tuple[str, int], VersionState] = {}
        self._unloaded: set[str] = set()  # explicitly unloaded through the repository API
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        self._signature: Any = None
        self._load_task: asyncio.Task[None] | None = None
        self._expected: set[str] = set()  # models with versions the policy wants loaded
        self.loaded = False  # the initial load has finished (well or not)
        self.draining = False  # shutting down: not ready, still answering what arrives
        self._rng = random.Random()

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self, wait: bool = False) -> None:
        """Load models in the background: the server answers liveness at once, and readiness
        (503 until then) only once every model has a version loaded and warmed up. ``wait``: return
        only when the load has finished."""
        self._load_task = asyncio.get_running_loop().create_task(self._initial_load())
        if wait:
            await asyncio.shield(self._load_task)

    async def _initial_load(self) -> None:
        try:
            await self.sync()
        except Exception:  # a broken repository must not kill the server; readiness tells
            log.exception("loading the model repository failed")
        finally:
            self.loaded = True
        log.info("serving %s", ", ".join(self.names()) or "no models")
        if self.settings.poll_interval_s > 0:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll())

    @property
    def ready(self) -> bool:
        """Loaded, and every model the repository wants served has a version that loaded: a server
        whose every version failed is not ready."""
        return not self.draining and self.loaded and all(self._served.get(name) for name in self._expected)

    @property
    def state(self) -> str:
        """ "draining", "loading", "ready" or "unavailable" (loaded, but a wanted model has no version)."""
        if self.draining:
            return "draining"
        if not self.loaded:
            return "loading"
        return "ready" if self.ready else "unavailable"

    async def stop(self) -> None:
        for task in (self._load_task, self._poll_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        async with self._lock:
            for name in list(self._served):
                for v in list(self._served[name]):
                    # Shutting down is not unloading: the entries stay for the other replicas
                    # sharing Redis (they are keyed by content, so never stale).
                    await self._drop(name, v, invalidate=False)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                if self._repo_signature() != self._signature:
                    await self.sync()
            except Exception:  # a broken scan must never stop the poller
                log.exception("model repository scan failed")

    def _repo_signature(self) -> Any:
        """Changes when a version, its files or serving.json change: a version removed and its
        number reused by another model is a change even though the numbers are the same."""
        sig = []
        for name in self.repo.names():
            cfg = self.repo.root / name / SERVING_FILE
            versions = tuple((v, _stamp(self.repo.root / name / str(v))) for v in self.repo.versions(name))
            sig.append((name, versions, _stamp(cfg)))
        return tuple(sig)

    # --- loading --------------------------------------------------------------------------------
    async def sync(self, only: str | None = None) -> None:
        """Bring loaded versions in line with the repository and each model's serving.json."""
        async with self._lock:
            self._signature = self._repo_signature()
            names = set(self.repo.names()) | set(self._served)
            for name in sorted(names):
                if only is not None and name != only:
                    continue
                try:
                    await self._sync_model(name)
                except Exception:  # one model's problem stays that model's
                    log.exception("model %s: syncing with the repository failed", name)
                    self._expected.add(name)  # and it is not ready unless a version still serves

    async def _sync_model(self, name: str) -> None:
        available = self.repo.versions(name)
        if name in self._unloaded or not available:
            wanted: list[int] = []
        else:
            try:
                cfg = ServingConfig.read(self.repo.root / name, self.default_policy)
            except EodeployError as exc:  # keep serving the last good routing; report the problem
                keeping = "the last good routing" if name in self._configs else "the default policy"
                log.error("model %s: %s (serving with %s until it is fixed)", name, exc, keeping)
                cfg = self._configs.get(name, ServingConfig(self.default_policy))
            self._configs[name] = cfg
            wanted = cfg.wanted(available)
        if wanted:
            self._expected.add(name)
        else:
            self._expected.discard(name)
        current = self._served.setdefault(name, {})
        for v in wanted:
            if v not in current or await self._replaced(current[v]):
                await self._load(name, v)
        for v in [v for v in current if v not in wanted]:
            await self._drop(name, v)
        for key in [k for k in self._states if k[0] == name and k[1] not in wanted]:
            if self._states[key].state != "UNAVAILABLE" or key[1] not in available:
                del self._states[key]

    async def _replaced(self, served: ServedModel) -> bool:
        """Whether the repository's package under this version number is another model now."""
        try:
            package = self.repo.get(served.name, served.version)
        except EodeployError:
            return False  # gone: the policy drops it
        sha = package.recorded_sha256 or str(await asyncio.to_thread(sha256_file, package.model_path))
        return served.identity != _identity(package, sha)

    async def _load(self, name: str, version: int) -> None:
        """Load (or reload, when the number now names another model) and swap in atomically: the
        old model serves until the new one is warm."""
        old = self._served.get(name, {}).get(version)
        if old is None:
            self._states[(name, version)] = VersionState("LOADING")
        try:
            package = self.repo.get(name, version)
            predictor, identity = await asyncio.to_thread(self._open_and_warm, package)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, EodeployError) else f"{type(exc).__name__}: {exc}"
            log.error("model %s version %s failed to load: %s", name, version, reason)
            if old is not None:  # the new file is broken: drop the old model, it was removed
                await self._drop(name, version)
            self._states[(name, version)] = VersionState("UNAVAILABLE", reason)
            return
        labels = {"model": name, "version": str(version)}
        m = self.metrics
        pending = m.pending.labels(**labels)
        queue = m.queue_duration.labels(**labels)
        compute = m.compute_duration.labels(**labels)
        batch = m.batch_size.labels(**labels)
        execs = m.exec_count.labels(**labels)
        count = m.inference_count.labels(**labels)

        def observe(kind: str, value: float) -> None:
            if kind == "pending":
                pending.set(value)
            elif kind == "queue":
                queue.observe(value)
            elif kind == "compute":
                compute.observe(value)
            elif kind == "batch":
                batch.observe(value)
                execs.inc()
                count.inc(value)

        s = self.settings
        batcher = DynamicBatcher(
            predictor.preprocess,
            predictor.run,
            BatchConfig(s.max_batch_size, s.max_queue_delay_ms / 1000, s.max_queue_size, s.request_timeout_s),
            observe,
            name=f"{name}-{version}",
        )
        batcher.start()
        self._served.setdefault(name, {})[version] = ServedModel(package, predictor, batcher, identity)
        self._states[(name, version)] = VersionState("AVAILABLE")
        m.model_ready.labels(**labels).set(1)
        log.info("model %s version %s ready (%s)", name, version, ", ".join(predictor.providers))
        if old is not None:
            log.info("model %s version %s: the file changed; the previous model is unloaded", name, version)
            await self._retire(old)

    def _open_and_warm(self, package: ModelPackage) -> tuple[Predictor, str]:
        s = self.settings
        identity = _identity(package, package.recorded_sha256 or sha256_file(package.model_path))
        predictor = Predictor(
            package,
            intra_op_threads=s.intra_op_threads or None,
            inter_op_threads=s.inter_op_threads or None,
            session_config={"session.intra_op.allow_spinning": "1" if s.ort_spinning else "0"},
        )
        spec = predictor.spec
        # Warm up before reporting ready (Triton's model_warmup): one patch, then a full batch.
        for n in (1, s.max_batch_size):
            raw = np.zeros((n, len(spec.bands), spec.height, spec.width), np.float32)
            predictor.run(predictor.preprocess(raw))
        return predictor, identity

    async def _drop(self, name: str, version: int, invalidate: bool = True) -> None:
        served = self._served.get(name, {}).pop(version, None)
        if served is None:
            return
        self._states[(name, version)] = VersionState("UNLOADING")
        self.metrics.model_ready.labels(model=name, version=str(version)).set(0)
        await self._retire(served, invalidate)
        self._states.pop((name, version), None)
        log.info("model %s version %s unloaded", name, version)

    async def _retire(self, served: ServedModel, invalidate: bool = True) -> None:
        await served.batcher.close()  # in-flight and queued requests finish first
        if invalidate and self.cache is not None:
            await self.cache.invalidate(served.identity)

    async def load(self, name: str) -> None:
        if not self.repo.versions(name):
            raise ModelNotFoundError(self._unknown(name))
        self._unloaded.discard(name)
        await self.sync(only=name)
        if not self._served.get(name):
            reasons = "; ".join(st.reason for (n, _), st in self._states.items() if n == name and st.reason)
            raise ModelNotReadyError(f"model {name!r} failed to load: {reasons or 'no version selected'}")

    async def unload(self, name: str) -> None:
        if name not in self._served and not self.repo.versions(name):
            raise ModelNotFoundError(self._unknown(name))
        self._unloaded.add(name)
        await self.sync(only=name)

    # --- routing --------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(n for n, vs in self._served.items() if vs)

    def served_versions(self, name: str) -> list[int]:
        return sorted(self._served.get(name, {}))

    def config(self, name: str) -> ServingConfig:
        return self._configs.get(name, ServingConfig(self.default_policy))

    def _unknown(self, name: str) -> str:
        return f"model {name!r} is not served here (served: {', '.join(self.names()) or 'none'})"

    def resolve(
        self, name: str, version: int | str | None = None, label: str | None = None, key: str | None = None
    ) -> ServedModel:
        versions = self._served.get(name)
        if not versions:
            if not self.loaded or any(
                n == name and st.state == "LOADING" for (n, _), st in self._states.items()
            ):
                raise ModelNotReadyError(f"model {name!r} is loading; retry shortly")
            raise ModelNotFoundError(self._unknown(name))
        cfg = self.config(name)
        if label is not None:
            if label not in cfg.labels:
                raise ModelNotFoundError(
                    f"model {name!r} has no label {label!r} (labels: {', '.join(cfg.labels) or 'none'})"
                )
            version = cfg.labels[label]
        if version is not None and version != "":
            try:
                v = int(version)
            except (TypeError, ValueError):
                raise ModelNotFoundError(f"version {version!r} of model {name!r} is not a number") from None
            if v in versions:
                return versions[v]
            state = self._states.get((name, v))
            if state and state.state == "LOADING":
                raise ModelNotReadyError(f"model {name!r} version {v} is loading; retry shortly")
            if state and state.state == "UNAVAILABLE":
                raise ModelNotReadyError(f"model {name!r} version {v} failed to load: {state.reason}")
            raise ModelNotFoundError(
                f"model {name!r} version {v} is not served (served versions: "
                f"{', '.join(map(str, sorted(versions)))}; the version policy is {cfg.policy})"
            )
        return versions[self._default_version(name, cfg, versions, key)]

    def _default_version(
        self, name: str, cfg: ServingConfig, versions: dict[int, ServedModel], key: str | None
    ) -> int:
        stable = cfg.labels.get("stable")
        base = stable if stable in versions else max(versions)
        canary = cfg.labels.get("canary")
        if cfg.canary_percent and canary in versions and canary != base:
            # A routing key (e.g. a user id) keeps a client on one side of the split, as TF Serving suggests.
            draw = (zlib.crc32(key.encode()) % 10000) / 100 if key else self._rng.random() * 100
            if draw < cfg.canary_percent:
                return canary  # type: ignore[return-value]
        return base

    def status(self, name: str) -> list[tuple[int, VersionState]]:
        out = [(v, st) for (n, v), st in self._states.items() if n == name]
        if not out and not self.repo.versions(name):
            raise ModelNotFoundError(self._unknown(name))
        return sorted(out, key=lambda t: t[0])

    def index(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = []
        for name in self.repo.names():
            states = [(v, st) for (n, v), st in self._states.items() if n == name]
            if not states:
                rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"})
            for v, st in sorted(states, key=lambda t: t[0]):
                rows.append({"name": name, "version": str(v), "state": st.state, "reason": st.reason})
        return rows


def _identity(package: ModelPackage, model_sha256: str) -> str:
    """The model file's sha256 and a digest of the package's item.json (preprocessing, classes)."""
    item = json.dumps(package.item, sort_keys=True, default=str).encode()
    return f"{model_sha256[:32]}-{hashlib.blake2b(item, digest_size=8).hexdigest()}"


def _stamp(path: Path) -> tuple[int, int]:
    """Modification time and size of a file, or of a version folder's files; (0, 0) when absent."""
    try:
        if path.is_dir():
            stats = [p.stat() for p in sorted(path.iterdir()) if p.is_file()]
            return max((st.st_mtime_ns for st in stats), default=0), sum(st.st_size for st in stats)
        st = path.stat()
        return st.st_mtime_ns, st.st_size
    except OSError:
        return 0, 0
