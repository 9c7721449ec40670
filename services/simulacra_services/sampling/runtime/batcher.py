"""Dynamic batching with Triton's vocabulary: many small concurrent requests, few large inferences.

Requests wait in an asyncio queue. A batch starts with the oldest waiting request and takes the
requests behind it, in arrival order, while they fit in ``max_batch_size``. It is dispatched as
soon as it is full, or its size is one of ``preferred_batch_sizes`` and nothing else is waiting,
or the oldest request has waited ``max_queue_delay_us``. Requests never split (the caller cuts
large ones to ``max_batch_size`` first); each one's rows of the output go back to its own future.
Inference runs on worker threads (``instances`` of them at most at once), never on the event loop:
while they run, the next batch fills. With no queue delay, a request that finds nothing queued and
an instance free runs at once, alone (the batch the worker would have formed, without its hops).
The threads are fed by ``InferenceThreads``, a lean hand-off (one queue put there, one
``call_soon_threadsafe`` back) rather than ``run_in_executor``'s chain of futures: the hop is
paid by every one-sample call.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from simulacra_services.core.aio import stop_task, wait_set

RunFn = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], np.ndarray]
BatchObserver = Callable[[int, list[float], float], None]
"""Called after each inference with (batch size, queue seconds of each request, inference seconds)."""


@dataclass(frozen=True)
class BatchingPolicy:
    enabled: bool = True
    max_batch_size: int = 64
    max_queue_delay_us: int = 0
    """0 (Triton's default): no waiting; requests that arrive while an inference runs still form the next batch."""
    preferred_batch_sizes: tuple[int, ...] = field(default_factory=tuple)
    instances: int = 1
    """Inferences of one generator running at once."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_delay_us < 0 or self.instances < 1:
            raise ValueError(f"bad batching policy {self}")
        if any(not 1 <= p <= self.max_batch_size for p in self.preferred_batch_sizes):
            raise ValueError(f"preferred batch sizes must be within 1..{self.max_batch_size}")


class InferenceThreads:
    """``count`` daemon threads running blocking calls for the event loop (started on first use)."""

    def __init__(self, count: int, name: str = "sampling-infer") -> None:
        self._count = count
        self._name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._started = False
        self._closed = False

    def run(self, fn: Callable, *args: object) -> asyncio.Future:
        """``fn(*args)`` on a thread; its result (or exception) on a future of the running loop."""
        if self._closed:
            raise RuntimeError("inference threads are closed")
        if not self._started:
            self._started = True
            for i in range(self._count):
                threading.Thread(target=self._work, name=f"{self._name}-{i}", daemon=True).start()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop closed meanwhile: nobody waits any more
                pass

    def close(self) -> None:
        """The jobs queued still run; then the threads end."""
        self._closed = True
        if self._started:
            for _ in range(self._count):
                self._jobs.put(None)


def _settle(future: asyncio.Future, result: object, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


@dataclass
class _Request:
    z: np.ndarray
    labels: np.ndarray
    attributes: np.ndarray | None
    future: asyncio.Future[np.ndarray]
    enqueued: float

    @property
    def size(self) -> int:
        return int(self.z.shape[0])


class DynamicBatcher:
    """Batches calls of one generator's ``run`` function; see the module docstring."""

    def __init__(self, run: RunFn, policy: BatchingPolicy, observe: BatchObserver | None = None) -> None:
        self._run = run
        self.policy = policy
        self._observe = observe
        self._threads = InferenceThreads(policy.instances)
        self._queue: collections.deque[_Request] = collections.deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.instances)
        self._inflight: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        return sum(r.size for r in self._queue)

    async def infer(self, z: np.ndarray, labels: np.ndarray, attributes: np.ndarray | None = None) -> np.ndarray:
        """samples float32 [n, C, H, W] for n <= max_batch_size rows of inputs (a view the caller may overwrite)."""
        if self._closed:
            raise RuntimeError("batcher is closed")
        n = int(z.shape[0])
        if n > self.policy.max_batch_size:
            raise ValueError(f"{n} rows exceed max_batch_size {self.policy.max_batch_size}")
        if not self.policy.enabled:
            async with self._slots:
                started = time.perf_counter()
                out = await self._threads.run(self._run, z, labels, attributes)
                if self._observe is not None:
                    self._observe(n, [0.0], time.perf_counter() - started)
                return out
        if self.policy.max_queue_delay_us == 0 and not self._queue and not self._slots.locked():
            # Nothing waits and an instance is free: a batch of this request alone, run now
            # (what the worker would do a few event-loop turns later). Requests that arrive
            # while it runs queue up and form the next batch.
            await self._slots.acquire()  # free: returns at once
            try:
                started = time.perf_counter()
                out = await self._threads.run(self._run, z, labels, attributes)
                if self._observe is not None:
                    self._observe(n, [0.0], time.perf_counter() - started)
                return out
            finally:
                self._slots.release()
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(z, labels, attributes, future, time.perf_counter()))
        self._arrived.set()
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._work())
        return await future

    async def _work(self) -> None:
        while not self._closed:  # the flag ends the loop too, should a cancel ever be lost
            if not await self._next_waiting(None):  # idle workers hold no instance (the direct path may take it)
                return
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            if not batch:
                self._slots.release()
                return
            task = asyncio.ensure_future(self._dispatch(batch))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def _next_waiting(self, timeout: float | None) -> bool:
        """Whether a live request is at the head of the queue, waiting up to ``timeout`` (None: until
        one comes or the batcher closes)."""
        while not self._closed:
            while self._queue and self._queue[0].future.done():  # cancelled while queued
                self._queue.popleft()
            if self._queue:
                return True
            self._arrived.clear()
            if timeout is not None and timeout <= 0:
                return False
            if not await wait_set(self._arrived, timeout):
                return False
        return False

    async def _collect(self) -> list[_Request]:
        policy = self.policy
        if not await self._next_waiting(None):
            return []  # closed
        first = self._queue.popleft()
        batch, size = [first], first.size
        deadline = first.enqueued + policy.max_queue_delay_us / 1e6
        try:
            while size < policy.max_batch_size:
                if await self._next_waiting(0):
                    if size + self._queue[0].size > policy.max_batch_size:
                        break
                    request = self._queue.popleft()
                    batch.append(request)
                    size += request.size
                    continue
                if size in policy.preferred_batch_sizes:
                    break
                if not await self._next_waiting(deadline - time.perf_counter()):
                    break
        except BaseException:  # cancelled (close): back to the head of the queue, which close() fails
            self._queue.extendleft(reversed(batch))
            raise
        return batch

    async def _dispatch(self, batch: list[_Request]) -> None:
        try:
            live = [r for r in batch if not r.future.done()]
            if not live:
                return
            started = time.perf_counter()
            queue_seconds = [started - r.enqueued for r in live]
            if len(live) == 1:
                z, labels, attrs = live[0].z, live[0].labels, live[0].attributes
            else:
                z = np.concatenate([r.z for r in live])
                labels = np.concatenate([r.labels for r in live])
                attrs = None if live[0].attributes is None else np.concatenate([r.attributes for r in live])  # type: ignore[misc]
            try:
                out = await self._threads.run(self._run, z, labels, attrs)
            except Exception as error:
                for r in live:
                    if not r.future.done():
                        r.future.set_exception(error)
                return
            if self._observe is not None:
                self._observe(int(z.shape[0]), queue_seconds, time.perf_counter() - started)
            offset = 0
            for r in live:
                if not r.future.done():
                    r.future.set_result(out[offset : offset + r.size])
                offset += r.size
        finally:
            self._slots.release()

    async def close(self) -> None:
        """Finish the inferences running, fail the queued requests, stop the threads."""
        self._closed = True
        self._arrived.set()
        if self._worker is not None:
            await stop_task(self._worker)
        if self._inflight:
            await asyncio.gather(*self._inflight, return_exceptions=True)
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(RuntimeError("generator unloaded"))
        self._threads.close()
