"""A sample stream: consecutive batches of one shard of the index sequence, bounded in flight.

At most ``max_in_flight`` batches are computed (or computing) ahead of what the consumer has
taken: the producer waits for a slot, so a slow client never makes the server buffer more.
Cancelling the consumer (client gone, deadline) cancels the batches still being computed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from simulacra_services.core.aio import stop_task
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
    # A slot per message computed ahead: taken before a batch starts, given back when the batch
    # is handed to the transport. The queue itself is unbounded; the slots bound it.
    slots = asyncio.Semaphore(max(1, plan.max_in_flight))
    queue: asyncio.Queue[asyncio.Future[SampleBatch] | None] = asyncio.Queue()

    async def fill() -> None:
        start, sent = plan.start_index, 0
        while plan.count == 0 or sent < plan.count:
            n = plan.batch_size if plan.count == 0 else min(plan.batch_size, plan.count - sent)
            indices = shard_indices(start, plan.shard_index, plan.shard_count, n)
            await slots.acquire()
            queue.put_nowait(asyncio.ensure_future(produce(generator, checked, indices, offload=offload)))
            start, sent = int(indices[-1]) + 1, sent + n
        queue.put_nowait(None)

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
            batch = await task
            slots.release()
            yield batch
    finally:
        await stop_task(producer)
        while not queue.empty():
            pending = queue.get_nowait()
            if pending is not None:
                pending.cancel()
