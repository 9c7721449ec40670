"""core.jobs.runner on SQLite and PostgreSQL: running, watching, cancel, pause/resume, errors,
graceful stop, lease takeover after a runner dies, and several runners sharing one table.

Jobs are held at known points with events, never by timing; a dead runner is a runner whose event
loop was stopped dead in another thread (no close, no release: what kill -9 leaves)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from simulacra_services.core import errors
from simulacra_services.core.jobs import (
    CANCELLED,
    CANCELLING,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobContext,
    JobRecord,
    JobStore,
)

from .jobs_support import Recorder, ThreadRunner, fast_runner, final, jobs_engine, store, wait_for  # noqa: F401

pytestmark = pytest.mark.timeout(120)


async def test_a_job_runs_and_watch_sees_progress_then_ends(store: JobStore) -> None:
    handler = Recorder(steps=4)
    runner = fast_runner(store, {"train": handler})
    await runner.start()
    try:
        record, created = await runner.create("train", {"value": 42}, parent="models/m")
        seen = [r async for r in runner.watch("train", record.job_id)]
    finally:
        await runner.close()
    assert created
    last = seen[-1]
    assert (last.state, last.result, last.attempt) == (SUCCEEDED, {"value": 42, "attempt": 1}, 1)
    assert last.progress.done == 4 and last.progress.total == 4 and last.checkpoint == {"step": 4}
    assert all(not r.terminal for r in seen[:-1])
    revisions = [r.revision for r in seen]
    assert revisions == sorted(set(revisions))  # each message is a new change, in order
    dones = [r.progress.done for r in seen]
    assert dones == sorted(dones)
    assert handler.runs == [(record.job_id, 1, None)] and handler.discarded == []


async def test_a_replica_that_does_not_run_the_job_watches_it_to_its_end(store: JobStore) -> None:
    gate = asyncio.Event()
    worker = fast_runner(store, {"train": Recorder(gate=gate, steps=4)})
    onlooker = fast_runner(store, {"train": Recorder()}, max_running=1)  # never started: it only watches
    await worker.start()
    try:
        record, _ = await worker.create("train", {"value": 1})
        seen: list[JobRecord] = []

        async def watch() -> None:
            async for update in onlooker.watch("train", record.job_id):
                seen.append(update)

        watching = asyncio.create_task(watch())
        await wait_for(lambda: any(r.progress.done == 2 for r in seen), "the onlooker to see step 2")
        gate.set()
        await asyncio.wait_for(watching, 60)
    finally:
        await worker.close()
    assert seen[-1].state == SUCCEEDED and all(not r.terminal for r in seen[:-1])
    assert [r.revision for r in seen] == sorted({r.revision for r in seen})


async def test_watch_of_an_ended_job_yields_once(store: JobStore) -> None:
    runner = fast_runner(store, {"train": Recorder()})
    await runner.start()
    try:
        record, _ = await runner.create("train", {})
        await final(runner, "train", record.job_id)
        assert [r.state async for r in runner.watch("train", record.job_id)] == [SUCCEEDED]
        with pytest.raises(errors.NotFound):
            _ = [r async for r in runner.watch("train", "missing")]
    finally:
        await runner.close()


async def test_cancel_a_running_job_discards_it(store: JobStore) -> None:
    gate = asyncio.Event()
    handler = Recorder(gate=gate, steps=4)
    runner = fast_runner(store, {"train": handler})
    await runner.start()
    try:
        record, _ = await runner.create("train", {})
        await wait_for(lambda: store.get("train", record.job_id).checkpoint == {"step": 2}, "the job to reach step 2")
        asked = await runner.cancel("train", record.job_id)
        assert asked.state == CANCELLING
        gate.set()
        ended = await final(runner, "train", record.job_id)
    finally:
        await runner.close()
    assert ended.state == CANCELLED and ended.error is None and ended.result == {}
    assert ended.progress.done == 2  # it stopped at its next check, after step 2
    assert handler.discarded == [record.job_id]


async def test_cancel_of_a_queued_job_is_immediate(store: JobStore) -> None:
    gate = asyncio.Event()
    handler = Recorder(gate=gate)
    runner = fast_runner(store, {"train": handler}, max_running=1)
    await runner.start()
    try:
        first, _ = await runner.create("train", {})
        await handler.started.wait()
        second, _ = await runner.create("train", {})
        cancelled = await runner.cancel("train", second.job_id)
        assert cancelled.state == CANCELLED
        gate.set()
        assert (await final(runner, "train", first.job_id)).state == SUCCEEDED
    finally:
        await runner.close()
    assert [job_id for job_id, _, _ in handler.runs] == [first.job_id]  # the cancelled one never ran


async def test_pause_keeps_the_checkpoint_and_resume_continues_from_it(store: JobStore) -> None:
    gate = asyncio.Event()
    handler = Recorder(gate=gate, steps=6)
    runner = fast_runner(store, {"train": handler})
    await runner.start()
    try:
        record, _ = await runner.create("train", {"value": "v"})
        await wait_for(lambda: store.get("train", record.job_id).checkpoint == {"step": 3}, "step 3")
        asked = await runner.pause("train", record.job_id)
        assert (asked.state, asked.requested) == (RUNNING, "pause")
        gate.set()
        await wait_for(lambda: store.get("train", record.job_id).state == PAUSED, "the pause")
        paused = store.get("train", record.job_id)
        assert (paused.owner, paused.checkpoint, paused.progress.done) == ("", {"step": 3}, 3)
        resumed = await runner.resume("train", record.job_id)
        assert resumed.state == QUEUED
        ended = await final(runner, "train", record.job_id)
    finally:
        await runner.close()
    assert (ended.state, ended.attempt, ended.progress.done) == (SUCCEEDED, 2, 6)
    assert handler.runs == [(record.job_id, 1, None), (record.job_id, 2, {"step": 3})]
    assert handler.discarded == []


class Plain:
    """A handler that cannot resume (imports): pausing is refused; interruptions fail it."""

    resumable = False

    def __init__(self) -> None:
        self.discarded: list[str] = []
        self.started = threading.Event()
        self.release = threading.Event()

    async def run(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        # A handler working in a thread, reporting through the thread-safe calls.
        def work() -> dict[str, Any]:
            ctx.progress_sync(1, 2, "half", force=True)
            self.started.set()
            assert self.release.wait(30)
            ctx.check()
            ctx.progress_sync(2, 2, "done", force=True)
            return {"ok": True}

        return await asyncio.to_thread(work)

    async def discard(self, job: JobRecord) -> None:
        self.discarded.append(job.job_id)


async def test_cancelling_a_paused_job_discards_it_through_a_runner(store: JobStore) -> None:
    gate = asyncio.Event()
    handler = Recorder(gate=gate, steps=4)
    runner = fast_runner(store, {"train": handler})
    await runner.start()
    try:
        record, _ = await runner.create("train", {})
        await wait_for(lambda: store.get("train", record.job_id).checkpoint == {"step": 2}, "step 2")
        await runner.pause("train", record.job_id)
        gate.set()
        await wait_for(lambda: store.get("train", record.job_id).state == PAUSED, "the pause")
        assert (await runner.cancel("train", record.job_id)).state == CANCELLING
        ended = await final(runner, "train", record.job_id)
    finally:
        await runner.close()
    assert ended.state == CANCELLED and handler.discarded == [record.job_id]
    assert len(handler.runs) == 1  # discarded, not run again


async def test_handlers_in_threads_and_non_resumable_jobs(store: JobStore) -> None:
    handler = Plain()
    runner = fast_runner(store, {"import": handler})
    await runner.start()
    try:
        record, _ = await runner.create("import", {})
        await asyncio.to_thread(handler.started.wait, 30)
        assert store.get("import", record.job_id).progress.message == "half"
        with pytest.raises(errors.FailedPrecondition) as caught:
            await runner.pause("import", record.job_id)
        assert caught.value.reason == "JOB_NOT_PAUSABLE"
        handler.release.set()
        ended = await final(runner, "import", record.job_id)
        assert (ended.state, ended.result, ended.progress.done) == (SUCCEEDED, {"ok": True}, 2)
        with pytest.raises(errors.FailedPrecondition) as caught:
            await runner.resume("import", record.job_id, ended=True)
        assert caught.value.reason == "JOB_NOT_RESUMABLE"
    finally:
        await runner.close()


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error
        self.discarded: list[str] = []

    async def run(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        raise self.error

    async def discard(self, job: JobRecord) -> None:
        self.discarded.append(job.job_id)


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (errors.InvalidArgument("INVALID_COCO", "bad file", {"file": "a.json"}), 3, "INVALID_COCO"),
        (errors.FailedPrecondition("BLOB_NOT_FOUND", "gone"), 9, "BLOB_NOT_FOUND"),
        (RuntimeError("secret detail"), 13, "INTERNAL"),
    ],
)
async def test_a_failing_handler_fails_the_job_with_a_clean_error(store: JobStore, error: Exception, code: int, reason: str) -> None:
    handler = Failing(error)
    runner = fast_runner(store, {"train": handler})
    await runner.start()
    try:
        record, _ = await runner.create("train", {})
        ended = await final(runner, "train", record.job_id)
    finally:
        await runner.close()
    assert ended.state == FAILED and ended.error is not None
    assert (ended.error.code, ended.error.reason) == (code, reason)
    assert "secret" not in ended.error.message
    if reason == "INTERNAL":
        assert ended.error.metadata["error_id"] in ended.error.message
    else:
        assert dict(ended.error.metadata) == dict(error.metadata)  # type: ignore[attr-defined]
    assert handler.discarded == [record.job_id]


async def test_closing_requeues_resumable_jobs_and_fails_the_others(store: JobStore) -> None:
    resumable = Recorder(gate=asyncio.Event(), steps=4)
    plain = Plain()
    runner = fast_runner(store, {"train": resumable, "import": plain}, interrupted_message="stopped: create it again")
    await runner.start()
    train, _ = await runner.create("train", {})
    imported, _ = await runner.create("import", {})
    await wait_for(lambda: store.get("train", train.job_id).checkpoint == {"step": 2}, "step 2")
    await asyncio.to_thread(plain.started.wait, 30)
    closing = asyncio.create_task(runner.close())
    await wait_for(lambda: all(ctx.stop_requested for ctx in runner._running.values()), "the stop requests")
    resumable.gate.set()  # type: ignore[union-attr]
    plain.release.set()
    await closing
    requeued = store.get("train", train.job_id)
    assert (requeued.state, requeued.owner, requeued.checkpoint) == (QUEUED, "", {"step": 2})
    failed = store.get("import", imported.job_id)
    assert failed.state == FAILED and failed.error is not None
    assert (failed.error.reason, failed.error.code, failed.error.message) == ("INTERRUPTED", 10, "stopped: create it again")
    assert plain.discarded == [imported.job_id] and resumable.discarded == []

    # The next runner (a restart) resumes the requeued job from its checkpoint.
    successor = Recorder(steps=4)
    runner = fast_runner(store, {"train": successor, "import": Plain()})
    await runner.start()
    try:
        ended = await final(runner, "train", train.job_id)
    finally:
        await runner.close()
    assert (ended.state, ended.attempt) == (SUCCEEDED, 2)
    assert successor.runs == [(train.job_id, 2, {"step": 2})]


class Stuck:
    """Saves a checkpoint, then hangs forever (in the loop of the runner that will be killed)."""

    resumable = True

    def __init__(self) -> None:
        self.reached = threading.Event()

    async def run(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        await ctx.save_checkpoint({"step": 5, "key": f"ckpt/{job.job_id}/5"})
        await ctx.progress(5, 10, "training", force=True)
        self.reached.set()
        await asyncio.Event().wait()
        return {}


async def test_a_dead_runners_job_is_taken_over_after_its_lease_and_resumes_from_its_checkpoint(store: JobStore) -> None:
    stuck = Stuck()
    dead = ThreadRunner(lambda: fast_runner(store, {"train": stuck}, owner="doomed"))
    dead.start()
    record = dead.call(lambda: dead.runner.create("train", {"value": 1}))[0]  # type: ignore[union-attr]
    assert await asyncio.to_thread(stuck.reached.wait, 30)
    dead.kill()
    held = store.get("train", record.job_id)
    assert (held.state, held.owner, held.attempt) == (RUNNING, "doomed", 1)

    successor = Recorder(steps=10)
    runner = fast_runner(store, {"train": successor}, owner="successor")
    await runner.start()
    try:
        ended = await final(runner, "train", record.job_id)
    finally:
        await runner.close()
    assert (ended.state, ended.attempt, ended.result) == (SUCCEEDED, 2, {"value": 1, "attempt": 2})
    assert successor.runs == [(record.job_id, 2, {"step": 5, "key": f"ckpt/{record.job_id}/5"})]
    assert ended.progress.done == 10


async def test_a_dead_runners_job_that_cannot_resume_fails_interrupted_after_discard(store: JobStore) -> None:
    class StuckPlain(Stuck):
        resumable = False

    stuck = StuckPlain()
    dead = ThreadRunner(lambda: fast_runner(store, {"import": stuck}, owner="doomed"))
    dead.start()
    record = dead.call(lambda: dead.runner.create("import", {}))[0]  # type: ignore[union-attr]
    assert await asyncio.to_thread(stuck.reached.wait, 30)
    dead.kill()
    heir = Plain()
    runner = fast_runner(store, {"import": heir})
    await runner.start()
    try:
        ended = await final(runner, "import", record.job_id)
    finally:
        await runner.close()
    assert ended.state == FAILED and ended.error is not None and ended.error.reason == "INTERRUPTED"
    assert heir.discarded == [record.job_id] and not heir.started.is_set()


async def test_a_cancel_asked_while_the_runner_was_dead_is_completed_by_the_next(store: JobStore) -> None:
    stuck = Stuck()
    dead = ThreadRunner(lambda: fast_runner(store, {"train": stuck}, owner="doomed"))
    dead.start()
    record = dead.call(lambda: dead.runner.create("train", {}))[0]  # type: ignore[union-attr]
    assert await asyncio.to_thread(stuck.reached.wait, 30)
    dead.kill()
    heir = Recorder()
    runner = fast_runner(store, {"train": heir})
    await runner.start()
    try:
        assert (await runner.cancel("train", record.job_id)).state == CANCELLING
        ended = await final(runner, "train", record.job_id)
    finally:
        await runner.close()
    assert ended.state == CANCELLED and heir.runs == [] and heir.discarded == [record.job_id]


async def test_a_runner_that_lost_its_lease_stops_without_touching_the_job(store: JobStore) -> None:
    # A runner that stalls longer than its lease (here: it never renews) loses the job to another.
    gate = asyncio.Event()
    slow = Recorder(gate=gate, steps=4)
    stalled = fast_runner(store, {"train": slow}, owner="stalled", lease_seconds=0.3, tick_seconds=3600)
    await stalled.start()
    heir = Recorder(steps=4)
    other = fast_runner(store, {"train": heir}, owner="heir")
    try:
        record, _ = await stalled.create("train", {"value": "x"})
        await wait_for(lambda: store.get("train", record.job_id).checkpoint == {"step": 2}, "step 2")
        await other.start()
        ended = await final(other, "train", record.job_id)
        assert (ended.state, ended.attempt) == (SUCCEEDED, 2)
        gate.set()  # the stalled runner goes on: its writes are refused, it notices and stops
        await wait_for(lambda: not stalled.running, "the stalled runner to drop the job")
        after = store.get("train", record.job_id)
        assert (after.state, after.result, after.revision) == (SUCCEEDED, {"value": "x", "attempt": 2}, ended.revision)
        assert slow.discarded == []
    finally:
        await other.close()
        await stalled.close()


async def test_several_runners_share_the_work_and_never_run_a_job_twice(store: JobStore) -> None:
    runs: list[str] = []
    active: set[str] = set()
    overlaps: list[str] = []

    class Counting:
        async def run(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
            if job.job_id in active:
                overlaps.append(job.job_id)
            active.add(job.job_id)
            runs.append(job.job_id)
            for _ in range(3):
                await asyncio.sleep(0)
                ctx.check()
            active.discard(job.job_id)
            return {"by": ctx.job.owner}

    runners = [fast_runner(store, {"train": Counting()}, owner=f"replica-{i}", max_running=2) for i in range(3)]
    # Jobs first, so that every runner races for all of them from its very first look.
    jobs = [store.create("train", {"i": i})[0] for i in range(24)]
    await asyncio.gather(*(runner.start() for runner in runners))
    try:
        for job in jobs:
            await wait_for(lambda job=job: store.get("train", job.job_id).terminal, f"job {job.job_id}")
    finally:
        await asyncio.gather(*(runner.close() for runner in runners))
    ended = [store.get("train", job.job_id) for job in jobs]
    assert all(r.state == SUCCEEDED and r.attempt == 1 for r in ended)
    assert sorted(runs) == sorted(job.job_id for job in jobs) and not overlaps
    assert {r.result["by"] for r in ended} <= {f"replica-{i}" for i in range(3)}


async def test_runners_in_threads_claim_each_job_once(store: JobStore) -> None:
    # Runners on separate event loops and threads: claims really race in the database.
    runs: list[str] = []
    lock = threading.Lock()

    class Noting:
        async def run(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
            with lock:
                runs.append(job.job_id)
            return {}

    jobs = [store.create("train", {"i": i})[0] for i in range(16)]
    threads = [ThreadRunner(lambda i=i: fast_runner(store, {"train": Noting()}, owner=f"thread-{i}", max_running=3)) for i in range(3)]
    for thread in threads:
        thread.start()
    try:
        for job in jobs:
            await wait_for(lambda job=job: store.get("train", job.job_id).terminal, f"job {job.job_id}")
    finally:
        for thread in threads:
            thread.call(lambda thread=thread: thread.runner.close())  # type: ignore[union-attr]
            thread.kill()
    assert sorted(runs) == sorted(job.job_id for job in jobs)
