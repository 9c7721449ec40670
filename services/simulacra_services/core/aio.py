"""asyncio helpers that the standard library gets subtly wrong on the Python versions we run.

``wait_set`` replaces ``asyncio.wait_for(event.wait(), timeout)``. Before Python 3.12,
``wait_for`` returns the inner result when a cancellation arrives just as the inner awaitable
finishes (CPython gh-86296): the caller's ``Task.cancel()`` is lost, and a loop that relies on
being cancelled (a batcher's worker, a job runner's tick, a watch stream) runs on and whoever
awaits it hangs. A sampling-service shutdown hung that way in CI.

``stop_task`` replaces ``task.cancel()`` followed by ``await task`` inside
``contextlib.suppress(BaseException)``: that idiom also swallows a cancellation of the *caller*
that arrives while it waits (a stream's cleanup cancelled a second time), which then runs on.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["stop_task", "wait_set"]


async def wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Whether ``event`` is set within ``timeout`` seconds (None: no limit; <= 0: look, do not wait).

    A cancellation of the calling task always propagates, whatever the event does meanwhile.
    """
    if event.is_set():
        return True
    if timeout is None:
        await event.wait()
        return True
    if timeout <= 0:
        return False
    return await _wait_bounded(event, timeout)


async def _bounded_by_timeout(event: asyncio.Event, timeout: float) -> bool:
    """Python 3.11+: asyncio.timeout turns only its own cancellation into TimeoutError (Task.uncancel)."""
    try:
        async with asyncio.timeout(timeout):  # type: ignore[attr-defined,unused-ignore]
            await event.wait()
    except TimeoutError:
        return False
    return True


async def _bounded_by_wait(event: asyncio.Event, timeout: float) -> bool:
    """Python 3.10: asyncio.wait never swallows the caller's cancellation; the waiter task is ours to end."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)


_wait_bounded = _bounded_by_timeout if sys.version_info >= (3, 11) else _bounded_by_wait


async def stop_task(task: asyncio.Future) -> None:
    """Cancel ``task`` and wait until it has ended; its own outcome (cancelled, or the error it
    raised) is consumed. A cancellation of the caller while it waits propagates."""
    task.cancel()
    if not task.done():
        await asyncio.wait({task})  # never raises the task's outcome; the caller's cancel goes through
    if not task.cancelled():
        task.exception()  # retrieved, so no "exception was never retrieved" at garbage collection
