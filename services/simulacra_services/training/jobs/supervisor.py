"""One worker process: start it, feed it the request, read its events, stop it on request.

The worker runs in its own session (process group), so a stop reaches it and nothing it started,
and its death never takes the server down. A graceful stop is SIGTERM: the worker finishes its
step, writes a checkpoint, says "stopped" and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from simulacra_services.core.aio import stop_task
from simulacra_services.training.worker import protocol

WORKER_MODULE = "simulacra_services.training.worker"
STOP_POLL_SECONDS = 0.2
KILL_AFTER_SECONDS = 60.0
MAX_EVENT_BYTES = 4 * 1024 * 1024


@dataclass
class WorkerExit:
    returncode: int
    last: dict | None
    """The last meaningful event: "result", "stopped" or "error" (None after a crash)."""

    @property
    def crashed(self) -> bool:
        return self.last is None or (self.last["type"] == protocol.ERROR and self.returncode != protocol.FAILED_EXIT)


async def run_worker(
    request: Mapping[str, Any],
    env: Mapping[str, str],
    on_event: Callable[[dict], Awaitable[None]],
    stop_requested: Callable[[], bool],
    on_start: Callable[[int], Awaitable[None]] | None = None,
) -> WorkerExit:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", WORKER_MODULE,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=dict(env),
        start_new_session=True, limit=MAX_EVENT_BYTES,
    )
    if on_start is not None:
        await on_start(process.pid)
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(json.dumps(request).encode() + b"\n")
    await process.stdin.drain()
    process.stdin.close()

    async def stop_when_asked() -> None:
        while not stop_requested():
            await asyncio.sleep(STOP_POLL_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        await asyncio.sleep(KILL_AFTER_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    stopper = asyncio.create_task(stop_when_asked())
    last = None
    try:
        async for line in process.stdout:
            event = protocol.parse_event(line.decode(errors="replace"))
            if event is None:
                continue
            if event["type"] in (protocol.RESULT, protocol.STOPPED, protocol.ERROR):
                last = event
            await on_event(event)
        returncode = await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    finally:
        await stop_task(stopper)
    if returncode not in (0, protocol.FAILED_EXIT):
        last = None  # killed or crashed, whatever it said before
    return WorkerExit(returncode, last)
