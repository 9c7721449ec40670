"""The import/export jobs table, as part of the store (annotation/jobs.py runs the jobs).

The table lives with the other annotation-store tables so that the service
has one migration; the job runner reads and writes it only through these
methods (and a narrow progress update of its own). ``request``, ``result``
and ``error`` are JSON texts that the runner defines.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from simulacra_services.annotation.prepare import check_request_id
from simulacra_services.annotation.records import JobRecord
from simulacra_services.annotation.row_codec import job_of
from simulacra_services.annotation.tables import datasets, jobs
from simulacra_services.core import errors
from simulacra_services.core.db import transaction, utcnow

TERMINAL_JOB_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
UNFINISHED_JOB_STATES = ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING")
_JOB_FIELDS = {
    "state", "progress_done", "progress_total", "progress_message", "result", "error",
    "cancel_requested", "start_time", "end_time",
}


class JobTable:
    """Job rows of ``AnnotationStore`` (a mixin: it uses the store's engine, dataset lookup and request records)."""

    engine: Engine

    def _dataset_row(self, conn: Connection, dataset_id: str, *, lock: bool = False) -> Row[Any]:
        raise NotImplementedError

    def _recorded(self, conn: Connection, dataset_pk: int, scope: str, request_id: str, digest: str) -> Any | None:
        raise NotImplementedError

    def _record_request(self, conn: Connection, dataset_pk: int, scope: str, request_id: str, digest: str, response: Any) -> None:
        raise NotImplementedError

    def create_job(
        self,
        dataset_id: str,
        *,
        kind: str,
        format: str,
        request: str,
        request_id: str = "",
        payload_digest: str = "",
        job_id: str = "",
        state: str = "JOB_STATE_QUEUED",
    ) -> tuple[JobRecord, bool]:
        """Insert a job; with a request id already used for the same payload, the earlier job and False."""
        if kind not in ("import", "export"):
            raise ValueError(f"job kind must be 'import' or 'export', got {kind!r}")
        if request_id:
            check_request_id(request_id)
        job_id = job_id or uuid.uuid4().hex
        now = utcnow()
        scope = f"{kind}_job"
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            if request_id:
                response = self._recorded(conn, dataset.id, scope, request_id, payload_digest)
                if response is not None:
                    return self._job(conn, dataset_id, kind, response["job_id"]), False
            conn.execute(
                jobs.insert().values(
                    job_id=job_id, dataset=dataset.id, kind=kind, format=format, state=state, progress_done=0,
                    progress_total=0, progress_message="", request=request, result="", error="",
                    cancel_requested=False, create_time=now, update_time=now,
                )
            )
            if request_id:
                self._record_request(conn, dataset.id, scope, request_id, payload_digest, {"job_id": job_id})
            return self._job(conn, dataset_id, kind, job_id), True

    @staticmethod
    def _job(conn: Connection, dataset_id: str, kind: str, job_id: str) -> JobRecord:
        row = conn.execute(
            sa.select(jobs, datasets.c.dataset_id)
            .join(datasets, jobs.c.dataset == datasets.c.id)
            .where(jobs.c.job_id == job_id, jobs.c.kind == kind, datasets.c.dataset_id == dataset_id)
        ).first()
        if row is None:
            collection = "importJobs" if kind == "import" else "exportJobs"
            raise errors.NotFound(
                "JOB_NOT_FOUND",
                f"dataset {dataset_id!r} has no {kind} job {job_id!r}",
                {"job": f"datasets/{dataset_id}/{collection}/{job_id}"},
            )
        return job_of(row)

    def get_job(self, dataset_id: str, kind: str, job_id: str) -> JobRecord:
        with self.engine.connect() as conn:
            self._dataset_row(conn, dataset_id)
            return self._job(conn, dataset_id, kind, job_id)

    def list_jobs(
        self,
        dataset_id: str | None,
        kind: str,
        *,
        states: Sequence[str] | None = None,
        condition: sa.ColumnElement[bool] | None = None,
        after: tuple[dt.datetime, str] | None = None,
        limit: int = 100,
    ) -> list[JobRecord]:
        """Jobs newest first (create_time desc, job_id desc); ``after`` = (create_time, job_id) of the last seen."""
        statement = sa.select(jobs, datasets.c.dataset_id).join(datasets, jobs.c.dataset == datasets.c.id).where(jobs.c.kind == kind)
        with self.engine.connect() as conn:
            if dataset_id is not None:
                self._dataset_row(conn, dataset_id)
                statement = statement.where(datasets.c.dataset_id == dataset_id)
            if states is not None:
                statement = statement.where(jobs.c.state.in_(list(states)))
            if condition is not None:
                statement = statement.where(condition)
            if after is not None:
                statement = statement.where(
                    sa.or_(jobs.c.create_time < after[0], sa.and_(jobs.c.create_time == after[0], jobs.c.job_id < after[1]))
                )
            rows = conn.execute(statement.order_by(jobs.c.create_time.desc(), jobs.c.job_id.desc()).limit(limit)).all()
        return [job_of(row) for row in rows]

    def update_job(self, job_id: str, **fields: Any) -> JobRecord:
        """Set any of state, progress_done/total/message, result, error, cancel_requested, start_time, end_time."""
        unknown = set(fields) - _JOB_FIELDS
        if unknown:
            raise ValueError(f"not job fields: {sorted(unknown)}")
        with transaction(self.engine) as conn:
            conn.execute(sa.update(jobs).where(jobs.c.job_id == job_id).values(update_time=utcnow(), **fields))
            row = conn.execute(
                sa.select(jobs, datasets.c.dataset_id).join(datasets, jobs.c.dataset == datasets.c.id).where(jobs.c.job_id == job_id)
            ).first()
            if row is None:
                raise errors.NotFound("JOB_NOT_FOUND", f"no job {job_id!r}", {"job_id": job_id})
            return job_of(row)

    def request_job_cancel(self, dataset_id: str, kind: str, job_id: str) -> JobRecord:
        """Mark a job for cancellation (state CANCELLING); a finished job is returned unchanged."""
        with transaction(self.engine) as conn:
            job = self._job(conn, dataset_id, kind, job_id)
            if job.state in TERMINAL_JOB_STATES:
                return job
            values: dict[str, Any] = {"cancel_requested": True, "update_time": utcnow()}
            if job.state in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING"):
                values["state"] = "JOB_STATE_CANCELLING"
            conn.execute(sa.update(jobs).where(jobs.c.job_id == job_id).values(values))
            return self._job(conn, dataset_id, kind, job_id)

    def unfinished_jobs(self) -> list[JobRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(jobs, datasets.c.dataset_id)
                .join(datasets, jobs.c.dataset == datasets.c.id)
                .where(jobs.c.state.not_in(TERMINAL_JOB_STATES))
                .order_by(jobs.c.create_time)
            ).all()
        return [job_of(row) for row in rows]
