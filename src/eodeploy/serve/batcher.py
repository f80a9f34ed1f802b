"""A dynamic batcher in the style of Triton's: gather requests for up to ``max_queue_delay``,
run them as one batch off the event loop, and refuse work when the queue is full."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from eodeploy.errors import EodeployError, InferenceTimeoutError, ServerBusyError


@dataclass
class BatchConfig:
    max_batch_size: int = 32
    max_queue_delay_s: float = 0.002
    max_queue_size: int = 512  # patches, not requests
    timeout_s: float = 30.0


@dataclass
class _Pending:
    raw: np.ndarray
    band_names: Sequence[str] | None
    units: str | None
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.perf_counter)


Preprocess = Callable[[np.ndarray, Sequence[str] | None, str | None], np.ndarray]
Run = Callable[[np.ndarray], np.ndarray]
Observer = Callable[[str, float], None]


class DynamicBatcher:
    """One queue per model version; one worker task feeding one inference thread.

    Requests hold raw patches; preprocessing happens on the inference thread, per request, so one
    bad request fails alone. A request larger than ``max_batch_size`` runs as its own batch.
    """

    def __init__(
        self,
        preprocess: Preprocess,
        run: Run,
        config: BatchConfig,
        observe: Observer | None = None,
        name: str = "model",
    ) -> None:
        self._preprocess = preprocess
        self._run = run
        self.config = config
        self._observe = observe or (lambda _k, _v: None)
        self._queue: deque[_Pending] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._inflight = 0

    @property
    def queued(self) -> int:
        return self._queued

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def submit(
        self, raw: np.ndarray, band_names: Sequence[str] | None = None, units: str | None = None
    ) -> np.ndarray:
        if self._closing:
            raise ServerBusyError("this model version is being unloaded; retry", retry_after_s=0.5)
        n = len(raw)
        if self._queued and self._queued + n > self.config.max_queue_size:
            raise ServerBusyError(
                f"inference queue is full ({self._queued} patches waiting, limit "
                f"{self.config.max_queue_size}); retry shortly or add replicas",
                retry_after_s=1.0,
            )
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(raw, band_names, units, fut))
        self._queued += n
        self._observe("pending", self._queued)
        self._wakeup.set()
        return await fut

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait (at most max_queue_delay from the oldest request) for the batch to fill.
            deadline = self._queue[0].enqueued + cfg.max_queue_delay_s
            while self._queued < cfg.max_batch_size and not self._closing:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), left)
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            self._inflight += 1
            try:
                await loop.run_in_executor(self._executor, self._compute, batch)
            finally:
                self._inflight -= 1

    def _take(self) -> list[_Pending]:
        now = time.perf_counter()
        batch: list[_Pending] = []
        size = 0
        while self._queue:
            p = self._queue[0]
            if p.future.cancelled():
                self._queue.popleft()
                self._queued -= len(p.raw)
                continue
            if now - p.enqueued > self.config.timeout_s:
                self._queue.popleft()
                self._queued -= len(p.raw)
                p.future.set_exception(
                    InferenceTimeoutError(
                        f"request waited {now - p.enqueued:.1f} s in the queue, over the "
                        f"{self.config.timeout_s:g} s timeout; the server is overloaded"
                    )
                )
                continue
            if batch and size + len(p.raw) > self.config.max_batch_size:
                break
            self._queue.popleft()
            self._queued -= len(p.raw)
            batch.append(p)
            size += len(p.raw)
            self._observe("queue", now - p.enqueued)
        self._observe("pending", self._queued)
        return batch

    def _compute(self, batch: list[_Pending]) -> None:
        """Runs on the inference thread: preprocess each request, run them as one batch."""
        t0 = time.perf_counter()
        tensors: list[np.ndarray] = []
        good: list[_Pending] = []
        for p in batch:
            try:
                tensors.append(self._preprocess(p.raw, p.band_names, p.units))
                good.append(p)
            except Exception as exc:  # one bad request must not fail the others
                _resolve(p.future, exc=exc)
        if not good:
            return
        try:
            out = self._run(tensors[0] if len(tensors) == 1 else np.concatenate(tensors))
        except Exception as exc:
            err = exc if isinstance(exc, EodeployError) else RuntimeError(f"inference failed: {exc}")
            for p in good:
                _resolve(p.future, exc=err)
            return
        start = 0
        for p, t in zip(good, tensors):
            _resolve(p.future, result=out[start : start + len(t)])
            start += len(t)
        self._observe("batch", float(start))
        self._observe("compute", time.perf_counter() - t0)

    async def close(self) -> None:
        """Stop taking requests, finish the queued and in-flight ones, release the thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._executor.shutdown(wait=True)


def _resolve(
    fut: asyncio.Future[np.ndarray], result: np.ndarray | None = None, exc: BaseException | None = None
) -> None:
    loop = fut.get_loop()

    def apply() -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]

    loop.call_soon_threadsafe(apply)
