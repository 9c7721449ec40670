"""``wait_set``: an event wait with a timeout that never loses the caller's cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from simulacra_services.core import aio

Wait = Callable[[asyncio.Event, float | None], Awaitable[bool]]
BOUNDED = [aio._bounded_by_timeout, aio._bounded_by_wait]


@pytest.mark.parametrize("bounded", BOUNDED, ids=["timeout", "wait"])
@pytest.mark.parametrize("turns", range(8))
async def test_a_cancel_that_arrives_as_the_event_is_set_is_never_lost(bounded: Wait, turns: int) -> None:
    # asyncio.wait_for (before 3.12) returns True here for some `turns`, and the cancel is gone.
    event = asyncio.Event()
    task = asyncio.ensure_future(bounded(event, 30.0))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not task.done()
    event.set()
    for _ in range(turns):
        await asyncio.sleep(0)
    requested = task.cancel()
    (outcome,) = await asyncio.gather(task, return_exceptions=True)
    if requested:
        assert isinstance(outcome, asyncio.CancelledError), f"the cancel was swallowed: the wait returned {outcome!r}"
    else:
        assert outcome is True


@pytest.mark.parametrize("bounded", BOUNDED, ids=["timeout", "wait"])
async def test_bounded_waits_see_the_event_or_time_out(bounded: Wait) -> None:
    event = asyncio.Event()
    assert await bounded(event, 0.01) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await bounded(event, 30.0) is True
    assert not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()], "a waiter task was left behind"


async def test_wait_set_looks_without_waiting_and_waits_without_limit() -> None:
    event = asyncio.Event()
    assert await aio.wait_set(event, 0) is False
    assert await aio.wait_set(event, -1.0) is False
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await aio.wait_set(event, None) is True
    assert await aio.wait_set(event, 0) is True


async def test_wait_set_propagates_a_plain_cancel() -> None:
    event = asyncio.Event()
    task = asyncio.ensure_future(aio.wait_set(event, 30.0))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not event._waiters  # type: ignore[attr-defined]


async def test_stop_task_ends_the_task_and_consumes_its_outcome() -> None:
    async def failing() -> None:
        raise RuntimeError("boom")

    broken = asyncio.ensure_future(failing())
    await asyncio.sleep(0)
    await aio.stop_task(broken)  # the task's own error is not the caller's
    assert broken.done() and isinstance(broken.exception(), RuntimeError)
    running = asyncio.ensure_future(asyncio.sleep(30))
    await aio.stop_task(running)
    assert running.cancelled()


async def test_stop_task_never_swallows_a_cancel_of_its_caller() -> None:
    # A stream's cleanup stops its reader task; the stream is cancelled again while the reader
    # is still ending. `suppress(BaseException)` around `await reader` swallowed that second cancel.
    release = asyncio.Event()

    async def slow_to_end() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await release.wait()
            raise

    helper = asyncio.ensure_future(slow_to_end())
    await asyncio.sleep(0)
    caller = asyncio.ensure_future(aio.stop_task(helper))
    for _ in range(3):
        await asyncio.sleep(0)
    assert not caller.done()
    caller.cancel()
    (outcome,) = await asyncio.gather(caller, return_exceptions=True)
    assert isinstance(outcome, asyncio.CancelledError)
    release.set()
    await asyncio.gather(helper, return_exceptions=True)
    assert helper.cancelled()
