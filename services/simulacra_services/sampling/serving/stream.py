"""A sample stream: consecutive batches of one shard of the index sequence, bounded in flight.

At most ``max_in_flight`` batches are computed ahead of the consumer: the producer waits on a
bounded queue, so a slow client never makes the server buffer more. Cancelling the consumer
(client gone, deadline) cancels the batches still being computed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from simulacra_services.sampling.serving.generator import LoadedGenerator
from simulacra_services.sampling.serving.sampler import SampleBatch, produce
from simulacra_services.sampling.serving.spec import CheckedSpec, shard_indices


@dataclass(frozen=True)
class StreamPlan:
    start_index: int
    count: int
    """Samples in total; 0: endless."""
    batch_size: int
    shard_index: int = 0
    shard_count: int = 1
    max_in_flight: int = 2


async def stream_batches(generator: LoadedGenerator, checked: CheckedSpec, plan: StreamPlan, *, offload: bool) -> AsyncIterator[SampleBatch]:
    queue: asyncio.Queue[asyncio.Future[SampleBatch] | None] = asyncio.Queue(maxsize=max(1, plan.max_in_flight))

    async def fill() -> None:
        start, sent = plan.start_index, 0
        while plan.count == 0 or sent < plan.count:
            n = plan.batch_size if plan.count == 0 else min(plan.batch_size, plan.count - sent)
            indices = shard_indices(start, plan.shard_index, plan.shard_count, n)
            task = asyncio.ensure_future(produce(generator, checked, indices, offload=offload))
            try:
                await queue.put(task)
            except BaseException:
                task.cancel()
                raise
            start, sent = int(indices[-1]) + 1, sent + n
        await queue.put(None)

    producer = asyncio.ensure_future(fill())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, producer}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                producer.result()  # the producer failed (e.g. indices past 2^64): raise its error
                continue
            task = getter.result()
            if task is None:
                return
            yield await task
    finally:
        producer.cancel()
        with contextlib.suppress(BaseException):
            await producer
        while not queue.empty():
            pending = queue.get_nowait()
            if pending is not None:
                pending.cancel()
