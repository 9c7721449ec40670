"""Job rows: create, read, list, and the state changes a runner or an RPC makes. Synchronous (call
it through ``asyncio.to_thread`` from async code), SQLite and PostgreSQL alike.

Concurrency rules, which make several runners sharing one database safe:

- ``claim`` is a compare-and-set on the row's ``revision``: of two runners
  claiming one job at once exactly one wins, on either database.
- Every write a runner makes while it runs a job (progress, checkpoint,
  finish, release) names the runner as ``owner``; once another runner has
  taken the job over (after the lease expired) such writes change nothing and
  return None, and the runner stops the job (``LeaseLost``).
- Cancel, pause and resume from any replica are single conditional updates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from simulacra_services.core import errors
from simulacra_services.core.db import transaction, utcnow
from simulacra_services.core.db.idempotency import check_request_id, request_id_reused
from simulacra_services.core.jobs.model import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    FAILED,
    MAX_MESSAGE_CHARS,
    PAUSED,
    QUEUED,
    REQUEST_CANCEL,
    REQUEST_PAUSE,
    RUNNING,
    TERMINAL,
    JobError,
    JobRecord,
    Progress,
    short_state,
)
from simulacra_services.core.jobs.table import MAX_KIND_CHARS, MAX_LABEL_CHARS, MAX_PARENT_CHARS

MAX_SPEC_BYTES = 4 * 1024 * 1024
"""A job's spec is its request, not its data: larger specs are refused."""
MAX_CHECKPOINT_BYTES = 64 * 1024
"""A checkpoint names where the state is (an object key, a step), it does not hold it."""

JobName = Callable[[str, str, str], str]
"""``(kind, parent, job_id) -> resource name`` for error messages."""


def _default_name(kind: str, parent: str, job_id: str) -> str:
    return f"{parent + '/' if parent else ''}{kind}Jobs/{job_id}"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _loads(text: str | None) -> Any:
    return None if text is None or text == "" else json.loads(text)


def spec_digest(spec: Mapping[str, Any]) -> str:
    """sha256 of a spec's canonical JSON: a retried create with the same request id must carry the same spec."""
    return hashlib.sha256(_dumps(spec).encode()).hexdigest()


class JobStore:
    """The rows of one job table (see ``table.job_table``)."""

    def __init__(self, engine: Engine, table: sa.Table, *, job_name: JobName = _default_name) -> None:
        self.engine = engine
        self.table = table
        self.job_name = job_name

    # ---- reading ---------------------------------------------------------------------
    def record(self, row: Row[Any]) -> JobRecord:
        values = row._mapping
        error = _loads(values["error"])
        return JobRecord(
            job_id=values["job_id"],
            kind=values["kind"],
            parent=values["parent"],
            state=values["state"],
            spec=_loads(values["spec"]) or {},
            progress=Progress(
                int(values["progress_done"]),
                int(values["progress_total"]),
                values["progress_message"],
                _loads(values["progress_detail"]) or {},
            ),
            result=_loads(values["result"]) or {},
            error=None if error is None else JobError.from_json(error),
            attempt=int(values["attempt"]),
            checkpoint=_loads(values["checkpoint"]),
            create_time=values["create_time"],
            start_time=values["start_time"],
            end_time=values["end_time"],
            update_time=values["update_time"],
            label=values["label"],
            request_id=values["request_id"] or "",
            requested=values["requested"],
            owner=values["owner"] or "",
            lease_expire_time=values["lease_expire_time"],
            revision=int(values["revision"]),
        )

    def _row(self, conn: Connection, job_id: str) -> Row[Any] | None:
        return conn.execute(sa.select(self.table).where(self.table.c.job_id == job_id)).first()

    def _not_found(self, kind: str, parent: str | None, job_id: str) -> errors.SimulacraError:
        name = self.job_name(kind, parent or "", job_id)
        return errors.NotFound("JOB_NOT_FOUND", f"no job {name!r}", {"job": name})

    def _matching(self, conn: Connection, kind: str, job_id: str, parent: str | None) -> Row[Any]:
        row = self._row(conn, job_id)
        if row is None or row.kind != kind or (parent is not None and row.parent != parent):
            raise self._not_found(kind, parent, job_id)
        return row

    def get(self, kind: str, job_id: str, parent: str | None = None) -> JobRecord:
        """The job; NOT_FOUND (JOB_NOT_FOUND) when there is none of that kind (and parent, if given)."""
        with self.engine.connect() as conn:
            return self.record(self._matching(conn, kind, job_id, parent))

    def find(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = self._row(conn, job_id)
        return None if row is None else self.record(row)

    def list(
        self,
        kind: str,
        parent: str | None = None,
        *,
        states: Iterable[str] | None = None,
        condition: sa.ColumnElement[bool] | None = None,
        after: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Jobs newest first (create_time, then job_id, descending); ``after``: (create_time, job_id) of the last seen."""
        t = self.table
        statement = sa.select(t).where(t.c.kind == kind)
        if parent is not None:
            statement = statement.where(t.c.parent == parent)
        if states is not None:
            statement = statement.where(t.c.state.in_(list(states)))
        if condition is not None:
            statement = statement.where(condition)
        if after is not None:
            statement = statement.where(
                sa.or_(t.c.create_time < after[0], sa.and_(t.c.create_time == after[0], t.c.job_id < after[1]))
            )
        statement = statement.order_by(t.c.create_time.desc(), t.c.job_id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [self.record(row) for row in conn.execute(statement)]

    # ---- creating and deleting ---------------------------------------------------------
    def create(
        self,
        kind: str,
        spec: Mapping[str, Any],
        *,
        parent: str = "",
        request_id: str = "",
        job_id: str = "",
        label: str = "",
        conn: Connection | None = None,
    ) -> tuple[JobRecord, bool]:
        """A new QUEUED job, and True; with a ``request_id`` already used for this kind and parent,
        the job it created and False (ALREADY_EXISTS, REQUEST_ID_REUSED when the spec differs).

        ``conn``: create inside the caller's transaction (e.g. under a lock of the parent's row).
        """
        if not kind or len(kind) > MAX_KIND_CHARS or len(parent) > MAX_PARENT_CHARS or len(label) > MAX_LABEL_CHARS:
            raise ValueError(
                f"job kind must be 1..{MAX_KIND_CHARS} characters, label at most {MAX_LABEL_CHARS}, parent at most {MAX_PARENT_CHARS}"
            )
        check_request_id(request_id)
        text = _dumps(spec)
        if len(text) > MAX_SPEC_BYTES:
            raise errors.InvalidArgument(
                "JOB_SPEC_TOO_LARGE", f"the job's request has {len(text)} bytes as JSON, at most {MAX_SPEC_BYTES}", {"limit": MAX_SPEC_BYTES}
            )
        digest = hashlib.sha256(text.encode()).hexdigest()
        now = utcnow()
        values = {
            "job_id": job_id or secrets.token_hex(8), "kind": kind, "label": label, "parent": parent, "state": QUEUED, "requested": "",
            "spec": text, "result": None, "error": None, "checkpoint": None, "progress_done": 0, "progress_total": 0,
            "progress_message": "", "progress_detail": None, "attempt": 0, "request_id": request_id or None,
            "request_digest": digest if request_id else None, "owner": None, "lease_expire_time": None, "revision": 1,
            "create_time": now, "update_time": now, "start_time": None, "end_time": None,
        }
        if conn is not None:
            return self._create(conn, kind, parent, request_id, digest, values)
        for _ in range(2):  # a concurrent create with the same request id: the second pass finds it
            try:
                with transaction(self.engine) as own:
                    return self._create(own, kind, parent, request_id, digest, values)
            except IntegrityError:
                if not request_id:
                    raise
        raise RuntimeError("unreachable: a conflicting request id was not found on the second pass")

    def _create(
        self, conn: Connection, kind: str, parent: str, request_id: str, digest: str, values: dict[str, Any]
    ) -> tuple[JobRecord, bool]:
        t = self.table
        if request_id:
            row = conn.execute(
                sa.select(t).where(t.c.kind == kind, t.c.parent == parent, t.c.request_id == request_id)
            ).first()
            if row is not None:
                if row.request_digest != digest:
                    raise request_id_reused(request_id)
                return self.record(row), False
        conn.execute(t.insert().values(values))
        row = self._row(conn, values["job_id"])
        assert row is not None
        return self.record(row), True

    def delete(self, kind: str, job_id: str, parent: str | None = None) -> None:
        """Remove a finished job (FAILED_PRECONDITION JOB_NOT_FINISHED while it is not terminal)."""
        with transaction(self.engine) as conn:
            row = self._matching(conn, kind, job_id, parent)
            if row.state not in TERMINAL:
                name = self.job_name(kind, row.parent, job_id)
                raise errors.FailedPrecondition(
                    "JOB_NOT_FINISHED", f"job {name!r} is {short_state(row.state)}: cancel it first", {"job": name}
                )
            conn.execute(sa.delete(self.table).where(self.table.c.job_id == job_id))

    def delete_parent(self, conn: Connection, parent: str) -> None:
        """Remove every job of ``parent`` inside the caller's transaction (the parent is being deleted)."""
        conn.execute(sa.delete(self.table).where(self.table.c.parent == parent))

    # ---- runners: claims and leases -------------------------------------------------------
    def claimable(self, kinds: Sequence[str], owner: str, *, limit: int, now: dt.datetime | None = None) -> list[str]:
        """Ids of jobs a runner may claim, oldest first: QUEUED ones, and RUNNING/CANCELLING ones whose
        runner is gone (no owner, an expired lease, or ``owner`` itself from before a restart)."""
        t = self.table
        now = now or utcnow()
        free = sa.or_(t.c.owner.is_(None), t.c.lease_expire_time < now, t.c.owner == owner)
        statement = (
            sa.select(t.c.job_id)
            .where(t.c.kind.in_(list(kinds)), t.c.state.in_(list(ACTIVE)), free)
            .order_by(t.c.create_time, t.c.job_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [row.job_id for row in conn.execute(statement)]

    def claim(self, job_id: str, owner: str, lease_seconds: float) -> tuple[JobRecord, JobRecord] | None:
        """Take the job's lease: ``(before, after)``, or None when it is not claimable or another runner won.

        QUEUED becomes RUNNING (first start time kept); RUNNING/CANCELLING stay as they are (a takeover).
        ``attempt`` grows by one.
        """
        t = self.table
        now = utcnow()
        with transaction(self.engine) as conn:
            row = self._row(conn, job_id)
            if row is None or row.state not in ACTIVE:
                return None
            expire = row.lease_expire_time
            if row.owner is not None and row.owner != owner and expire is not None and expire >= now:
                return None
            before = self.record(row)
            updated = conn.execute(
                sa.update(t)
                .where(t.c.job_id == job_id, t.c.revision == row.revision)
                .values(
                    owner=owner,
                    lease_expire_time=now + dt.timedelta(seconds=lease_seconds),
                    state=RUNNING if row.state == QUEUED else row.state,
                    attempt=t.c.attempt + 1,
                    start_time=sa.func.coalesce(t.c.start_time, now),
                    update_time=now,
                    revision=t.c.revision + 1,
                )
            )
            if updated.rowcount != 1:
                return None
            after = self._row(conn, job_id)
            assert after is not None
            return before, self.record(after)

    def renew(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> dict[str, str]:
        """Extend ``owner``'s leases; ``{job_id: requested}`` of the jobs it still holds (the others were lost)."""
        if not job_ids:
            return {}
        t = self.table
        now = utcnow()
        with transaction(self.engine) as conn:
            conn.execute(
                sa.update(t)
                .where(t.c.job_id.in_(list(job_ids)), t.c.owner == owner)
                .values(lease_expire_time=now + dt.timedelta(seconds=lease_seconds))
            )
            rows = conn.execute(sa.select(t.c.job_id, t.c.requested).where(t.c.job_id.in_(list(job_ids)), t.c.owner == owner))
            return {row.job_id: row.requested for row in rows}

    def _owned_update(self, job_id: str, owner: str, values: dict[str, Any]) -> JobRecord | None:
        t = self.table
        now = utcnow()
        with transaction(self.engine) as conn:
            updated = conn.execute(
                sa.update(t)
                .where(t.c.job_id == job_id, t.c.owner == owner)
                .values(update_time=now, revision=t.c.revision + 1, **values)
            )
            if updated.rowcount != 1:
                return None
            row = self._row(conn, job_id)
        return None if row is None else self.record(row)

    def set_progress(self, job_id: str, owner: str, progress: Progress) -> JobRecord | None:
        """Write progress (None: ``owner`` no longer holds the job)."""
        return self._owned_update(job_id, owner, _progress_values(progress))

    def save_checkpoint(self, job_id: str, owner: str, checkpoint: Mapping[str, Any]) -> JobRecord | None:
        text = _dumps(checkpoint)
        if len(text) > MAX_CHECKPOINT_BYTES:
            raise ValueError(f"a checkpoint must be at most {MAX_CHECKPOINT_BYTES} bytes of JSON (it names state, it does not hold it)")
        return self._owned_update(job_id, owner, {"checkpoint": text})

    def finish(
        self,
        job_id: str,
        owner: str | None,
        state: str,
        *,
        result: Mapping[str, Any] | None = None,
        error: JobError | None = None,
        progress: Progress | None = None,
    ) -> JobRecord | None:
        """End the job in a terminal ``state`` and drop its lease; with ``owner`` only while it holds the job."""
        if state not in TERMINAL:
            raise ValueError(f"{state} is not a terminal state")
        values: dict[str, Any] = {
            "state": state, "requested": "", "owner": None, "lease_expire_time": None, "end_time": utcnow(),
            "result": None if result is None else _dumps(result), "error": None if error is None else _dumps(error.to_json()),
        }
        if progress is not None:
            values.update(_progress_values(progress))
        if owner is not None:
            return self._owned_update(job_id, owner, values)
        t = self.table
        with transaction(self.engine) as conn:
            conn.execute(
                sa.update(t).where(t.c.job_id == job_id, t.c.state.not_in(list(TERMINAL)))
                .values(update_time=utcnow(), revision=t.c.revision + 1, **values)
            )
            row = self._row(conn, job_id)
        return None if row is None else self.record(row)

    def release(self, job_id: str, owner: str, state: str, *, progress: Progress | None = None) -> JobRecord | None:
        """Give the job back unfinished: QUEUED (another runner resumes it) or PAUSED (until resumed)."""
        if state not in (QUEUED, PAUSED):
            raise ValueError(f"a released job is QUEUED or PAUSED, not {state}")
        values: dict[str, Any] = {"state": state, "owner": None, "lease_expire_time": None}
        if state == PAUSED:
            values["requested"] = ""
        if progress is not None:
            values.update(_progress_values(progress))
        return self._owned_update(job_id, owner, values)

    # ---- requests from RPCs -------------------------------------------------------------------
    def request_cancel(self, kind: str, job_id: str, parent: str | None = None) -> JobRecord:
        """A job that never ran: CANCELLED at once. One that is running, or ran before (queued again
        or paused, with a checkpoint): CANCELLING, until a runner has called its handler's ``discard``
        and ended it CANCELLED. Ended: unchanged."""
        t = self.table
        now = utcnow()
        with transaction(self.engine) as conn:
            row = self._matching(conn, kind, job_id, parent)
            if row.state in (QUEUED, PAUSED) and row.owner is None and row.attempt == 0:
                values: dict[str, Any] = {"state": CANCELLED, "requested": "", "end_time": now}
            elif row.state in (RUNNING, QUEUED, PAUSED):
                values = {"state": CANCELLING, "requested": REQUEST_CANCEL}
            else:  # CANCELLING or ended
                return self.record(row)
            conn.execute(
                sa.update(t).where(t.c.job_id == job_id).values(update_time=now, revision=t.c.revision + 1, **values)
            )
            row = self._row(conn, job_id)
            assert row is not None
            return self.record(row)

    def request_pause(self, kind: str, job_id: str, parent: str | None = None) -> JobRecord:
        """QUEUED: PAUSED at once. RUNNING: asked to pause (PAUSED once its runner stops). PAUSED: unchanged."""
        t = self.table
        now = utcnow()
        with transaction(self.engine) as conn:
            row = self._matching(conn, kind, job_id, parent)
            if row.state == PAUSED or (row.state == RUNNING and row.requested == REQUEST_PAUSE):
                return self.record(row)
            if row.state == QUEUED and row.owner is None:
                values: dict[str, Any] = {"state": PAUSED}
            elif row.state in (RUNNING, QUEUED):
                values = {"requested": REQUEST_PAUSE}
            else:
                name = self.job_name(kind, row.parent, job_id)
                raise errors.FailedPrecondition(
                    "JOB_NOT_PAUSABLE", f"job {name!r} is {short_state(row.state)}: only a queued or running job pauses",
                    {"job": name, "state": row.state},
                )
            conn.execute(sa.update(t).where(t.c.job_id == job_id).values(update_time=now, revision=t.c.revision + 1, **values))
            row = self._row(conn, job_id)
            assert row is not None
            return self.record(row)

    def resume(self, kind: str, job_id: str, parent: str | None = None, *, ended: bool = False) -> JobRecord:
        """PAUSED: QUEUED again. RUNNING with a pause asked: the request is withdrawn. With ``ended``,
        FAILED and CANCELLED jobs are queued again too (their checkpoint kept, their error cleared)."""
        t = self.table
        now = utcnow()
        with transaction(self.engine) as conn:
            row = self._matching(conn, kind, job_id, parent)
            if row.state == PAUSED or (ended and row.state in (FAILED, CANCELLED)):
                values: dict[str, Any] = {"state": QUEUED, "requested": "", "error": None, "end_time": None}
            elif row.state in (RUNNING, QUEUED) and row.requested == REQUEST_PAUSE:
                values = {"requested": ""}
            elif row.state in (RUNNING, QUEUED):
                return self.record(row)
            else:
                name = self.job_name(kind, row.parent, job_id)
                raise errors.FailedPrecondition(
                    "JOB_NOT_RESUMABLE",
                    f"job {name!r} is {short_state(row.state)}: only a paused job resumes"
                    + (", or a failed or cancelled one" if ended else ""),
                    {"job": name, "state": row.state},
                )
            conn.execute(sa.update(t).where(t.c.job_id == job_id).values(update_time=now, revision=t.c.revision + 1, **values))
            row = self._row(conn, job_id)
            assert row is not None
            return self.record(row)


def _progress_values(progress: Progress) -> dict[str, Any]:
    return {
        "progress_done": int(progress.done),
        "progress_total": int(progress.total),
        "progress_message": progress.message[:MAX_MESSAGE_CHARS],
        "progress_detail": _dumps(dict(progress.detail)) if progress.detail else None,
    }
