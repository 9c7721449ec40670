"""A generator version in memory: its session, its batcher, and the leases of the calls using it.

A call holds a lease for as long as it uses the generator, so that unloading or replacing it
(hot reload) only frees the session once the last call has finished: requests in flight complete
on the version they started on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np

from simulacra_services.core.registry import ModelVersionRecord
from simulacra_services.sampling.runtime.batcher import BatchingPolicy, DynamicBatcher
from simulacra_services.sampling.runtime.session import GeneratorSession
from simulacra_services.sampling.serving.metrics import SamplingMetrics


class LoadedGenerator:
    def __init__(
        self, record: ModelVersionRecord, session: GeneratorSession, policy: BatchingPolicy, metrics: SamplingMetrics, *, pinned: bool = False
    ) -> None:
        self.record = record
        self.name = record.name
        self.signature = record.signature
        self.session = session
        self.pinned = pinned
        self.load_time = dt.datetime.now(dt.timezone.utc)
        self._metrics = metrics
        self.batcher = DynamicBatcher(session.run, policy, observe=self._observe)
        self._leases = 0
        self._retired = False
        self._closing: asyncio.Task[None] | None = None
        metrics.loaded.labels(self.name).set(1)

    @property
    def provider(self) -> str:
        return self.session.provider

    @property
    def retired(self) -> bool:
        return self._retired

    @property
    def leases(self) -> int:
        return self._leases

    def _observe(self, size: int, queue_seconds: list[float], compute_seconds: float) -> None:
        self._metrics.observe_batch(self.name, size, queue_seconds, compute_seconds, int(time.time() * 1000))

    def take_lease(self) -> None:
        """Synchronous, so that a lookup and its lease happen with no await in between."""
        self._leases += 1

    def release_lease(self) -> None:
        self._leases -= 1
        if self._retired and self._leases == 0:
            self._close_soon()

    @asynccontextmanager
    async def leased(self) -> AsyncIterator[LoadedGenerator]:
        """Hold a lease taken with ``take_lease`` until the block ends."""
        try:
            yield self
        finally:
            self.release_lease()

    def retire(self) -> None:
        """No new calls; free the session once the calls using it have finished."""
        self._retired = True
        self._metrics.loaded.labels(self.name).set(0)
        if self._leases == 0:
            self._close_soon()

    def _close_soon(self) -> None:
        if self._closing is None:
            self._closing = asyncio.ensure_future(self.batcher.close())

    async def closed(self) -> None:
        if self._closing is not None:
            await self._closing

    async def infer(self, z: np.ndarray, labels: np.ndarray, attributes: np.ndarray | None) -> np.ndarray:
        """float32 [n, C, H, W]; cut into pieces of at most max_batch_size that the batcher runs concurrently."""
        step = self.batcher.policy.max_batch_size
        n = int(z.shape[0])
        if n <= step:
            return await self.batcher.infer(z, labels, attributes)
        parts = await asyncio.gather(
            *(
                self.batcher.infer(z[i : i + step], labels[i : i + step], None if attributes is None else attributes[i : i + step])
                for i in range(0, n, step)
            )
        )
        return np.concatenate(parts)
