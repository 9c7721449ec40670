"""The job table: one per service, same columns everywhere, built by :func:`job_table`.

A service declares its table in its ``tables.py``::

    jobs = job_table("training_jobs")

and creates it in a revision of its own migration chain with the frozen
helper (so that the revision keeps producing the same table when this
module grows a version 2)::

    from simulacra_services.core.jobs.table import create_job_table_v1
    def upgrade() -> None:
        create_job_table_v1("training_jobs")

Columns hold JSON texts (``spec``, ``result``, ``error``, ``checkpoint``,
``progress_detail``), never protobuf: the api/ layer converts. ``revision``
grows with every change of the row (watchers compare it; a claim is a
compare-and-set on it). ``owner`` + ``lease_expire_time`` are the lease of
the runner that runs the job.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

from simulacra_services.core.db.schema import UtcDateTime, metadata as shared_metadata

MAX_KIND_CHARS = 63
MAX_LABEL_CHARS = 63
MAX_PARENT_CHARS = 512
MAX_REQUEST_ID_CHARS = 128
MAX_OWNER_CHARS = 200


def _columns_v1(datetime_type: sa.types.TypeEngine) -> list[Column]:
    return [
        Column("job_id", String(63), nullable=False),
        Column("kind", String(MAX_KIND_CHARS), nullable=False),
        # A short tag the service filters on (e.g. an import's source format), "" for none.
        Column("label", String(MAX_LABEL_CHARS), nullable=False),
        # The resource the job belongs to (e.g. "datasets/cars"), "" for none.
        Column("parent", String(MAX_PARENT_CHARS), nullable=False),
        # A common.v1.JobState name, e.g. JOB_STATE_RUNNING.
        Column("state", String(32), nullable=False),
        # A pending "cancel" or "pause" request, "" for none.
        Column("requested", String(16), nullable=False),
        Column("spec", Text, nullable=False),
        Column("result", Text, nullable=True),
        Column("error", Text, nullable=True),
        Column("checkpoint", Text, nullable=True),
        Column("progress_done", BigInteger, nullable=False),
        Column("progress_total", BigInteger, nullable=False),
        Column("progress_message", String(1024), nullable=False),
        Column("progress_detail", Text, nullable=True),
        Column("attempt", Integer, nullable=False),
        Column("request_id", String(MAX_REQUEST_ID_CHARS), nullable=True),
        Column("request_digest", String(64), nullable=True),
        Column("owner", String(MAX_OWNER_CHARS), nullable=True),
        Column("lease_expire_time", datetime_type, nullable=True),
        Column("revision", BigInteger, nullable=False),
        Column("create_time", datetime_type, nullable=False),
        Column("update_time", datetime_type, nullable=False),
        Column("start_time", datetime_type, nullable=True),
        Column("end_time", datetime_type, nullable=True),
    ]


def _constraints_v1(name: str) -> list[sa.SchemaItem]:
    return [
        sa.PrimaryKeyConstraint("job_id", name=f"pk_{name}"),
        # NULL request ids do not collide: only jobs created with a request id are unique by it.
        UniqueConstraint("kind", "parent", "request_id", name=f"uq_{name}_request"),
        Index(f"ix_{name}_listing", "kind", "parent", "create_time"),
        Index(f"ix_{name}_state", "state"),
    ]


def job_table(name: str, metadata: MetaData = shared_metadata) -> Table:
    """The job table ``name`` (e.g. ``"training_jobs"``) on ``metadata`` (the shared one by default)."""
    return Table(name, metadata, *_columns_v1(UtcDateTime()), *_constraints_v1(name))


def create_job_table_v1(name: str) -> None:
    """Create job table ``name`` inside an Alembic revision (frozen: never change what this creates)."""
    from alembic import op

    items = _constraints_v1(name)
    op.create_table(
        name,
        *_columns_v1(sa.DateTime(timezone=True)),
        *[item for item in items if not isinstance(item, Index)],
    )
    for index in (item for item in items if isinstance(item, Index)):
        op.create_index(index.name, name, [c if isinstance(c, str) else c.name for c in index.expressions], unique=False)


def drop_job_table_v1(name: str) -> None:
    """Drop job table ``name`` inside an Alembic revision (the downgrade of ``create_job_table_v1``)."""
    from alembic import op

    for index in (item for item in _constraints_v1(name) if isinstance(item, Index)):
        op.drop_index(index.name, table_name=name)
    op.drop_table(name)
