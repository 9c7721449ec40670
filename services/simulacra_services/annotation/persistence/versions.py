"""Versions: commit the working state (no copies: a version is a sequence number), resolve and list them."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from simulacra_services.annotation.domain.records import Page, VersionRecord
from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.row_codec import version_of
from simulacra_services.annotation.persistence.rows import MAX_DESCRIPTION
from simulacra_services.annotation.persistence.tables import datasets, jobs, versions
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.pagination import PageRequest
from simulacra_services.core.db import transaction, utcnow
from simulacra_services.core.jobs import ACTIVE as ACTIVE_JOB_STATES


class VersionRepository:
    """The rows of ``versions``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def commit(self, dataset_id: str, description: str = "") -> tuple[VersionRecord, bool]:
        """Freeze the working state as the next version; ``(latest, False)`` when its content is the latest's.

        Refused (FAILED_PRECONDITION, IMPORT_IN_PROGRESS) while an import job
        of the dataset is unfinished: an import writes its chunks in separate
        transactions and removes them again if it stops, so a version made in
        between would freeze a partial import. The job row exists (QUEUED)
        from its creation and leaves the unfinished states only after the
        job's undo, and the check runs under this transaction's dataset lock,
        which every chunk write and every job creation also takes: no import
        can write or start between the check and the version row.
        """
        rows.check_text(description, "description", MAX_DESCRIPTION, multiline=True)
        with transaction(self.engine) as conn:
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
            _check_no_import_running(conn, dataset)
            latest = None
            if dataset.latest_version:
                latest = rows.version_row(conn, dataset, dataset.latest_version)
                if latest.seq == dataset.seq:
                    return version_of(dataset_id, latest), False
            digest = rows.content_digest(conn, dataset.id, dataset.seq)
            if latest is not None and latest.content_sha256 == digest:
                # Written and undone again (an import that failed or was cancelled, an edit
                # reverted): the same content is the same version.
                return version_of(dataset_id, latest), False
            number = dataset.latest_version + 1
            values = {
                "dataset": dataset.id, "version": number, "seq": dataset.seq, "description": description,
                "create_time": utcnow(), "item_count": dataset.item_count,
                "annotation_count": dataset.annotation_count, "content_sha256": digest,
            }
            conn.execute(versions.insert().values(values))
            conn.execute(sa.update(datasets).where(datasets.c.id == dataset.id).values(latest_version=number))
            row = conn.execute(sa.select(versions).where(versions.c.dataset == dataset.id, versions.c.version == number)).one()
            return version_of(dataset_id, row), True

    def resolve(self, dataset_id: str, version: str | int) -> VersionRecord:
        """A version by number or "latest"; VERSION_NOT_FOUND when absent."""
        with self.engine.connect() as conn:
            dataset = rows.dataset_row(conn, dataset_id)
            return version_of(dataset_id, rows.version_row(conn, dataset, version))

    def list(self, dataset_id: str, *, page_size: int = 0, page_token: str = "") -> Page:
        size = pagination.page_size_of(page_size)
        with self.engine.connect() as conn:
            dataset = rows.dataset_row(conn, dataset_id)
            page = PageRequest.parse(
                size, page_token, pagination.fingerprint(rpc="ListVersions", dataset=dataset_id, created=dataset.create_time),
                validate=pagination.values_of(pagination.is_int),
            )
            statement = sa.select(versions).where(versions.c.dataset == dataset.id)
            if not page.first:
                statement = statement.where(versions.c.version < page.cursor[0])
            found = conn.execute(statement.order_by(versions.c.version.desc()).limit(size + 1)).all()
        found, token = page.finish(found, lambda last: [last.version])
        return Page([version_of(dataset_id, row) for row in found], token)


def _check_no_import_running(conn: Connection, dataset: Row[Any]) -> None:
    # Imports never pause, so QUEUED, RUNNING and CANCELLING are the unfinished states. A job
    # whose runner died stays RUNNING until another runner takes it over and discards its writes.
    running = conn.execute(
        sa.select(jobs.c.job_id)
        .where(jobs.c.parent == f"datasets/{dataset.dataset_id}", jobs.c.kind == "import", jobs.c.state.in_(list(ACTIVE_JOB_STATES)))
        .order_by(jobs.c.create_time, jobs.c.job_id)
        .limit(1)
    ).scalar()
    if running is not None:
        job = f"datasets/{dataset.dataset_id}/importJobs/{running}"
        raise errors.FailedPrecondition(
            "IMPORT_IN_PROGRESS",
            f"dataset {dataset.dataset_id!r} has an unfinished import ({job}); a version made now could hold part "
            "of it: commit once the job has ended (WatchImportJob), or cancel it",
            {"dataset": f"datasets/{dataset.dataset_id}", "job": job},
        )
