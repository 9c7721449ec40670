"""Running jobs: claims under leases, handlers, progress, cancel/pause/resume, watch, recovery.

A ``JobRunner`` runs the jobs of the kinds it has handlers for, at most
``max_running`` at once. It finds work by asking the store for claimable jobs
(queued ones, and active ones whose runner is gone) whenever it is woken
(``submit``, a finished job, ``resume``) and at least every ``tick`` seconds,
and it renews the leases of the jobs it runs at the same pace. So:

- several replicas sharing one database share the work, and never run one
  job twice at once (a claim is a compare-and-set on the row);
- a replica that dies (kill -9, lost node) stops renewing; once its lease
  has expired another runner takes the job over: ``attempt`` grows and the
  handler runs again with ``ctx.checkpoint`` (what the last attempt saved),
  or, for a handler that is not ``resumable``, the job ends FAILED with
  reason INTERRUPTED after ``discard``;
- a runner that lost a lease (it stalled longer than the lease) notices at
  its next write or renewal and stops that job without touching it again:
  every write it makes is fenced by its owner id.

Leases are timestamps written by each replica's clock: replicas' clocks must
agree to well within a lease (NTP does), or a fast clock takes jobs over early.

Handlers (one per kind) implement ``JobHandler``: ``async run(job, ctx) ->
result dict``, an optional ``async discard(job)`` (remove what a job that
will not succeed left behind: called once, before the job ends CANCELLED or
FAILED, whether it stopped here or its runner died), and an optional
``resumable`` flag (default True). ``run`` calls ``ctx.check()`` between
units of work; it raises ``JobStopped`` (cancel, pause, service stopping,
lease lost) and the runner records the outcome. Handlers that work in a
thread use ``ctx.progress_sync`` / ``ctx.save_checkpoint_sync``.

Outcomes: a result -> SUCCEEDED; ``SimulacraError`` -> FAILED with its code,
reason, message and metadata; any other exception -> FAILED INTERNAL with an
error id that finds the stack trace in the log; cancel -> CANCELLED; pause ->
PAUSED (resume queues it again); service stopping -> QUEUED again for a
resumable handler (the next runner resumes it), FAILED INTERRUPTED otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, runtime_checkable

from simulacra_services.core import errors
from simulacra_services.core.aio import stop_task, wait_set
from simulacra_services.core.jobs.model import (
    CANCELLED,
    CANCELLING,
    CODE_ABORTED,
    CODE_INTERNAL,
    FAILED,
    PAUSED,
    QUEUED,
    REQUEST_CANCEL,
    REQUEST_PAUSE,
    RUNNING,
    SUCCEEDED,
    JobError,
    JobRecord,
    Progress,
)
from simulacra_services.core.jobs.store import JobStore

_log = logging.getLogger("simulacra.jobs")

# google.rpc.Code values by errors.Code name.
GRPC_CODES = {
    "CANCELLED": 1, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
DEFAULT_INTERRUPTED_MESSAGE = "the service stopped while the job ran and the job cannot resume: create it again"


class JobStopped(Exception):
    """Raised by ``ctx.check()``: the handler must stop now (cleanly: the runner records why)."""


class JobCancelled(JobStopped):
    """Cancel was asked."""


class JobPaused(JobStopped):
    """Pause was asked."""


class JobInterrupted(JobStopped):
    """The service is stopping."""


class LeaseLost(JobStopped):
    """Another runner has taken the job over: this one must not touch it again."""


_STOPS: dict[str, type[JobStopped]] = {
    REQUEST_CANCEL: JobCancelled, REQUEST_PAUSE: JobPaused, "stop": JobInterrupted, "lost": LeaseLost,
}
# When several reasons to stop arrive, the strongest wins.
_STOP_RANK = {REQUEST_PAUSE: 1, "stop": 2, REQUEST_CANCEL: 3, "lost": 4}


@runtime_checkable
class JobHandler(Protocol):
    """What a service implements per job kind (``discard`` and ``resumable`` are optional)."""

    async def run(self, job: JobRecord, ctx: JobContext) -> Mapping[str, Any]: ...


def resumable(handler: Any) -> bool:
    return bool(getattr(handler, "resumable", True))


def job_error(error: errors.SimulacraError) -> JobError:
    return JobError(GRPC_CODES.get(error.code.value, CODE_INTERNAL), error.reason, error.message, dict(error.metadata))


class JobContext:
    """A running job's link to its runner: progress, checkpoints, and whether to stop."""

    def __init__(self, runner: JobRunner, job: JobRecord) -> None:
        self._runner = runner
        self.job = job
        self.job_id = job.job_id
        self.attempt = job.attempt
        """1 on the first run, 2 after one takeover or resume, ..."""
        self.checkpoint: Mapping[str, Any] | None = job.checkpoint
        """What the last attempt saved (None: start from scratch)."""
        self.current = job.progress
        self._stop: str | None = None
        self._last_write = float("-inf")

    # ---- stopping ------------------------------------------------------------------
    def _request(self, why: str) -> None:
        if self._stop is None or _STOP_RANK[why] > _STOP_RANK[self._stop]:
            self._stop = why

    def _withdraw_pause(self) -> None:
        if self._stop == REQUEST_PAUSE:
            self._stop = None

    @property
    def stop_requested(self) -> bool:
        return self._stop is not None

    def check(self) -> None:
        """Raise the matching ``JobStopped`` when the job must stop; cheap (no I/O), callable from any thread."""
        why = self._stop
        if why is not None:
            raise _STOPS[why]()

    # ---- progress and checkpoints ------------------------------------------------------
    async def progress(
        self, done: int, total: int, message: str = "", detail: Mapping[str, Any] | None = None, *, force: bool = False
    ) -> None:
        """Record progress; written (and watchers woken) at most every ``progress_interval`` s unless ``force``."""
        self.current = Progress(int(done), int(total), message, dict(detail or {}))
        now = time.monotonic()
        if force or now - self._last_write >= self._runner.progress_interval:
            self._last_write = now
            written = await asyncio.to_thread(self._runner.store.set_progress, self.job_id, self._runner.owner, self.current)
            self._written(written)

    async def save_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Save a small JSON document the next attempt gets as ``ctx.checkpoint`` (written at once)."""
        written = await asyncio.to_thread(self._runner.store.save_checkpoint, self.job_id, self._runner.owner, checkpoint)
        self._written(written)
        if written is not None:
            self.checkpoint = dict(checkpoint)

    def _written(self, record: JobRecord | None) -> None:
        if record is None:
            self._request("lost")
        self._runner._notify()

    def progress_sync(self, done: int, total: int, message: str = "", detail: Mapping[str, Any] | None = None, *, force: bool = False) -> None:
        """``progress`` from a worker thread (not from the event loop)."""
        asyncio.run_coroutine_threadsafe(self.progress(done, total, message, detail, force=force), self._runner.loop).result()

    def save_checkpoint_sync(self, checkpoint: Mapping[str, Any]) -> None:
        """``save_checkpoint`` from a worker thread (not from the event loop)."""
        asyncio.run_coroutine_threadsafe(self.save_checkpoint(checkpoint), self._runner.loop).result()


class JobRunner:
    """Runs the jobs of ``handlers``' kinds from ``store`` (see the module docstring)."""

    def __init__(
        self,
        store: JobStore,
        handlers: Mapping[str, Any],
        *,
        owner: str = "",
        max_running: int = 2,
        lease_seconds: float = 30.0,
        tick_seconds: float | None = None,
        progress_interval: float = 0.25,
        watch_poll_seconds: float = 1.0,
        stop_timeout: float = 30.0,
        interrupted_message: str = DEFAULT_INTERRUPTED_MESSAGE,
    ) -> None:
        if max_running < 1 or lease_seconds <= 0:
            raise ValueError("max_running must be >= 1 and lease_seconds > 0")
        self.store = store
        self.handlers = dict(handlers)
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.max_running = max_running
        self.lease_seconds = lease_seconds
        self.tick_seconds = tick_seconds if tick_seconds is not None else lease_seconds / 3
        self.progress_interval = progress_interval
        self.watch_poll_seconds = watch_poll_seconds
        self.stop_timeout = stop_timeout
        self.interrupted_message = interrupted_message
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()
        self._running: dict[str, JobContext] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._closing = False
        self._main: asyncio.Task[None] | None = None

    # ---- life cycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Recover and start: claims what is claimable now (jobs of dead runners whose lease expired,
        jobs a previous run of this owner left), then keeps looking every ``tick_seconds``."""
        self.loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        await self._dispatch()
        self._main = self.loop.create_task(self._forever(), name=f"job-runner-{self.owner}")

    async def close(self) -> None:
        """Stop claiming, ask running jobs to stop, wait for them up to ``stop_timeout`` seconds."""
        self._closing = True
        if self._main is not None:
            await stop_task(self._main)
        for ctx in self._running.values():
            ctx._request("stop")
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
            for task in pending:
                _log.warning("job task %s did not stop within %.0f s; its lease will expire", task.get_name(), self.stop_timeout)
                task.cancel()

    @property
    def closing(self) -> bool:
        """True once ``close`` has begun."""
        return self._closing

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this runner runs now."""
        return list(self._running)

    # ---- requests ----------------------------------------------------------------------
    async def submit(self, job_id: str = "") -> None:
        """A job was queued (or a slot may be free): look for work now instead of at the next tick."""
        self._wake.set()

    async def create(
        self, kind: str, spec: Mapping[str, Any], *, parent: str = "", request_id: str = "", job_id: str = "", label: str = ""
    ) -> tuple[JobRecord, bool]:
        """``store.create`` and, for a new job, ``submit``."""
        self._check_kind(kind)
        record, created = await asyncio.to_thread(
            self.store.create, kind, spec, parent=parent, request_id=request_id, job_id=job_id, label=label
        )
        if created:
            await self.submit(record.job_id)
        return record, created

    async def cancel(self, kind: str, job_id: str, parent: str | None = None) -> JobRecord:
        """Cancel: at once when the job never ran; a running job stops at its next ``ctx.check()``, and
        one that ran before (paused, or queued again) is claimed, discarded and ended CANCELLED."""
        record = await asyncio.to_thread(self.store.request_cancel, kind, job_id, parent)
        ctx = self._running.get(job_id)
        if ctx is not None and record.state == CANCELLING:
            ctx._request(REQUEST_CANCEL)
        self._notify()
        self._wake.set()  # a CANCELLING job nobody runs is claimed and ended
        return record

    async def pause(self, kind: str, job_id: str, parent: str | None = None) -> JobRecord:
        """Pause: at once when queued; a running job stops at its next ``ctx.check()`` and keeps its checkpoint."""
        handler = self._check_kind(kind)
        if not resumable(handler):
            raise errors.FailedPrecondition(
                "JOB_NOT_PAUSABLE", f"{kind} jobs cannot pause: they do not resume from a checkpoint", {"kind": kind}
            )
        record = await asyncio.to_thread(self.store.request_pause, kind, job_id, parent)
        ctx = self._running.get(job_id)
        if ctx is not None and record.requested == REQUEST_PAUSE:
            ctx._request(REQUEST_PAUSE)
        self._notify()
        return record

    async def resume(self, kind: str, job_id: str, parent: str | None = None, *, ended: bool = False) -> JobRecord:
        """Resume a paused job (with ``ended``, a failed or cancelled one too): queued again, run from its checkpoint."""
        handler = self._check_kind(kind)
        if ended and not resumable(handler):
            raise errors.FailedPrecondition(
                "JOB_NOT_RESUMABLE", f"{kind} jobs do not resume from a checkpoint: create a new one", {"kind": kind}
            )
        record = await asyncio.to_thread(self.store.resume, kind, job_id, parent, ended=ended)
        ctx = self._running.get(job_id)
        if ctx is not None:
            ctx._withdraw_pause()
        self._notify()
        self._wake.set()
        return record

    async def watch(self, kind: str, job_id: str, parent: str | None = None) -> AsyncIterator[JobRecord]:
        """The job now, then each time it changes; ends after a terminal state.

        Woken by this runner's own changes, and polling the row every
        ``watch_poll_seconds`` for changes made by other replicas.
        """
        last = None
        while True:
            changed = self._changed
            record = await asyncio.to_thread(self.store.get, kind, job_id, parent)
            if record.revision != last:
                last = record.revision
                yield record
            if record.terminal:
                return
            await wait_set(changed, self.watch_poll_seconds)

    def _check_kind(self, kind: str) -> Any:
        handler = self.handlers.get(kind)
        if handler is None:
            raise ValueError(f"this runner has no handler for {kind!r} jobs")
        return handler

    def _notify(self) -> None:
        """Wake every watcher (on the event loop)."""
        self._changed.set()
        self._changed = asyncio.Event()

    # ---- the loop ------------------------------------------------------------------------
    async def _forever(self) -> None:
        # The flag, not only the task's cancellation, ends the loop (belt and braces: wait_set
        # never swallows a cancel, which Python 3.11's wait_for can).
        while not self._closing:
            await wait_set(self._wake, self.tick_seconds)
            if self._closing:
                return
            self._wake.clear()
            try:
                await self._renew()
                await self._dispatch()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database hiccup must not end the runner: try again next tick
                _log.exception("job runner %s: renewing or claiming failed; retrying", self.owner)

    async def _renew(self) -> None:
        ids = list(self._running)
        if not ids:
            return
        held = await asyncio.to_thread(self.store.renew, self.owner, ids, self.lease_seconds)
        for job_id in ids:
            ctx = self._running.get(job_id)
            if ctx is None:
                continue
            if job_id not in held:
                ctx._request("lost")
            elif held[job_id] in (REQUEST_CANCEL, REQUEST_PAUSE):
                ctx._request(held[job_id])
            elif held[job_id] == "":
                ctx._withdraw_pause()

    async def _dispatch(self) -> None:
        while not self._closing:
            free = self.max_running - len(self._running)
            if free <= 0:
                return
            found = await asyncio.to_thread(
                self.store.claimable, list(self.handlers), self.owner, limit=free + len(self._running)
            )
            candidates = [job_id for job_id in found if job_id not in self._running][:free]
            claimed = 0
            for job_id in candidates:
                if self._closing:
                    return
                pair = await asyncio.to_thread(self.store.claim, job_id, self.owner, self.lease_seconds)
                if pair is not None:
                    claimed += 1
                    self._launch(*pair)
            if not claimed:
                return  # nothing left, or other runners won every race: wait for the next wake-up

    def _launch(self, before: JobRecord, job: JobRecord) -> None:
        ctx = JobContext(self, job)
        self._running[job.job_id] = ctx
        task = self.loop.create_task(self._execute(before, job, ctx), name=f"job-{job.kind}-{job.job_id}")
        self._tasks[job.job_id] = task
        self._notify()

    # ---- one job ---------------------------------------------------------------------------
    async def _execute(self, before: JobRecord, job: JobRecord, ctx: JobContext) -> None:
        handler = self.handlers[job.kind]
        try:
            await self._outcome(handler, before, job, ctx)
        except Exception:
            _log.exception("job %s: recording its outcome failed; its lease will expire and another runner ends it", job.job_id)
        finally:
            self._running.pop(job.job_id, None)
            self._tasks.pop(job.job_id, None)
            self._notify()
            self._wake.set()

    async def _outcome(self, handler: Any, before: JobRecord, job: JobRecord, ctx: JobContext) -> None:
        store, owner = self.store, self.owner
        taken_over = before.state in (RUNNING, CANCELLING)
        if job.state == CANCELLING or job.requested == REQUEST_CANCEL:
            await self._discard(handler, job)
            await asyncio.to_thread(store.finish, job.job_id, owner, CANCELLED)
            return
        if job.requested == REQUEST_PAUSE and resumable(handler):
            await asyncio.to_thread(store.release, job.job_id, owner, PAUSED)
            return
        if taken_over and not resumable(handler):
            _log.warning("job %s: its runner %s is gone and %s jobs do not resume: failing it", job.job_id, before.owner, job.kind)
            await self._fail_interrupted(handler, job)
            return
        try:
            result = await handler.run(job, ctx)
        except LeaseLost:
            _log.warning("job %s: another runner took it over; this one stops without touching it", job.job_id)
        except JobCancelled:
            await self._discard(handler, job)
            await asyncio.to_thread(store.finish, job.job_id, owner, CANCELLED, progress=ctx.current)
        except JobPaused:
            await asyncio.to_thread(store.release, job.job_id, owner, PAUSED, progress=ctx.current)
        except JobInterrupted:
            if resumable(handler):
                await asyncio.to_thread(store.release, job.job_id, owner, QUEUED, progress=ctx.current)
            else:
                await self._fail_interrupted(handler, job, ctx.current)
        except errors.SimulacraError as error:
            await self._discard(handler, job)
            await asyncio.to_thread(store.finish, job.job_id, owner, FAILED, error=job_error(error), progress=ctx.current)
        except asyncio.CancelledError:
            raise  # close() gave up waiting: the lease expires and another runner takes over
        except Exception:
            error_id = secrets.token_hex(8)
            _log.exception("job %s failed unexpectedly (error id %s)", job.job_id, error_id)
            await self._discard(handler, job)
            internal = JobError(
                CODE_INTERNAL, "INTERNAL",
                f"the job failed on an internal error; the service log has the details under error id {error_id}",
                {"error_id": error_id},
            )
            await asyncio.to_thread(store.finish, job.job_id, owner, FAILED, error=internal, progress=ctx.current)
        else:
            await asyncio.to_thread(store.finish, job.job_id, owner, SUCCEEDED, result=dict(result or {}), progress=ctx.current)

    async def _fail_interrupted(self, handler: Any, job: JobRecord, progress: Progress | None = None) -> None:
        await self._discard(handler, job)
        error = JobError(CODE_ABORTED, "INTERRUPTED", self.interrupted_message, {})
        await asyncio.to_thread(self.store.finish, job.job_id, self.owner, FAILED, error=error, progress=progress)

    @staticmethod
    async def _discard(handler: Any, job: JobRecord) -> None:
        discard = getattr(handler, "discard", None)
        if discard is None:
            return
        try:
            await discard(job)
        except Exception:
            _log.exception("job %s: discarding what it left failed", job.job_id)
