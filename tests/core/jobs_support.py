"""Shared pieces of the core/jobs tests: a job table on each database, handlers driven by events,
and a runner living in its own thread and event loop that a test can kill without any cleanup."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from simulacra_services.core import db
from simulacra_services.core.jobs import JobContext, JobRecord, JobRunner, JobStore, job_table

TABLE = "test_jobs"
_DEAD_LOOPS: list[asyncio.AbstractEventLoop] = []
"""Loops of killed runners, kept alive: a dead process does not clean up, and neither do they."""


@pytest.fixture
def jobs_engine(database_url: str) -> Iterator[Engine]:
    metadata = sa.MetaData()
    job_table(TABLE, metadata)
    engine = db.create_engine(database_url)
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(jobs_engine: Engine) -> JobStore:
    table = job_table(TABLE, sa.MetaData())
    return JobStore(jobs_engine, table, job_name=lambda kind, parent, job_id: f"{parent}/{kind}Jobs/{job_id}")


def fast_runner(store: JobStore, handlers: Mapping[str, Any], **options: Any) -> JobRunner:
    """A runner with a short lease and tick, so that takeovers happen within a second."""
    settings = {"lease_seconds": 0.6, "tick_seconds": 0.05, "progress_interval": 0.0, "watch_poll_seconds": 0.05, "stop_timeout": 10.0}
    settings.update(options)
    return JobRunner(store, handlers, **settings)


async def wait_for(predicate: Callable[[], Awaitable[bool] | bool], what: str, limit: float = 30.0) -> None:
    """Poll ``predicate`` until true; fail (naming ``what``) after ``limit`` s. Never a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert loop.time() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


async def final(runner: JobRunner, kind: str, job_id: str) -> JobRecord:
    """Watch the job to its end; the last record."""
    last = None
    async for record in runner.watch(kind, job_id):
        last = record
    assert last is not None
    return last


class Recorder:
    """A handler that records each run and returns its spec's ``value``; ``gate`` holds a run until set."""

    resumable = True

    def __init__(self, *, gate: asyncio.Event | None = None, steps: int = 0) -> None:
        self.runs: list[tuple[str, int, Any]] = []
        self.discarded: list[str] = []
        self.gate = gate
        self.started = asyncio.Event()
        self.steps = steps

    async def run(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        self.runs.append((job.job_id, ctx.attempt, ctx.checkpoint))
        self.started.set()
        start = int((ctx.checkpoint or {}).get("step", 0))
        for step in range(start, self.steps):
            ctx.check()
            await ctx.progress(step + 1, self.steps, f"step {step + 1}")
            await ctx.save_checkpoint({"step": step + 1})
            if self.gate is not None and step + 1 == self.steps // 2:
                await self.gate.wait()
        if self.gate is not None and not self.steps:
            await self.gate.wait()
            ctx.check()
        return {"value": job.spec.get("value"), "attempt": ctx.attempt}

    async def discard(self, job: JobRecord) -> None:
        self.discarded.append(job.job_id)


class ThreadRunner:
    """A ``JobRunner`` on its own event loop in its own thread; ``kill`` stops that loop dead:
    no close, no lease release, its tasks never resume, exactly as if its process had died."""

    def __init__(self, make: Callable[[], JobRunner]) -> None:
        self.loop = asyncio.new_event_loop()
        self.runner: JobRunner | None = None
        self._make = make
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coroutine_factory: Callable[[], Awaitable[Any]]) -> Any:
        async def wrapped() -> Any:
            return await coroutine_factory()

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(30)

    def start(self) -> JobRunner:
        async def start() -> JobRunner:
            runner = self._make()
            await runner.start()
            return runner

        self.runner = self.call(start)
        return self.runner

    def kill(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive()
        _DEAD_LOOPS.append(self.loop)
