"""annotation_jobs takes core/jobs' shape (JSON spec, leases, attempts); existing rows are carried over

The old table is renamed away, the new one created with core's frozen helper,
every row copied (kind and state kept; the request becomes the spec
``{"format": ..., "job": <request>}``, the format the label, the parent
``datasets/{dataset}``, the cancel flag the ``requested`` column), then the
old table dropped. Request ids of old jobs are not carried over.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 14:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from simulacra_services.core.jobs.table import create_job_table_v1, drop_job_table_v1

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COPY = """
INSERT INTO annotation_jobs (
    job_id, kind, label, parent, state, requested, spec, result, error, checkpoint,
    progress_done, progress_total, progress_message, progress_detail, attempt,
    request_id, request_digest, owner, lease_expire_time, revision,
    create_time, update_time, start_time, end_time
)
SELECT
    old.job_id, old.kind, old.format, 'datasets/' || d.dataset_id, old.state,
    CASE WHEN old.cancel_requested THEN 'cancel' ELSE '' END,
    '{"format":"' || old.format || '","job":' || old.request || '}',
    CASE WHEN old.result = '' THEN NULL ELSE old.result END,
    CASE WHEN old.error = '' THEN NULL ELSE old.error END,
    NULL,
    old.progress_done, old.progress_total, old.progress_message, NULL,
    CASE WHEN old.start_time IS NULL THEN 0 ELSE 1 END,
    NULL, NULL, NULL, NULL, 1,
    old.create_time, old.update_time, old.start_time, old.end_time
FROM annotation_jobs_old AS old JOIN annotation_datasets AS d ON d.id = old.dataset
"""


def upgrade() -> None:
    op.drop_index('ix_annotation_jobs_listing', table_name='annotation_jobs')
    op.drop_index('ix_annotation_jobs_state', table_name='annotation_jobs')
    op.rename_table('annotation_jobs', 'annotation_jobs_old')
    if op.get_bind().dialect.name == 'postgresql':
        # The primary key's index keeps its name across the rename; names of indexes are schema-wide.
        op.execute('ALTER TABLE annotation_jobs_old RENAME CONSTRAINT pk_annotation_jobs TO pk_annotation_jobs_old')
    create_job_table_v1('annotation_jobs')
    op.execute(sa.text(_COPY))
    op.drop_table('annotation_jobs_old')


def downgrade() -> None:
    drop_job_table_v1('annotation_jobs')
    op.create_table('annotation_jobs',
    sa.Column('job_id', sa.String(length=63), nullable=False),
    sa.Column('dataset', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('progress_done', sa.BigInteger(), nullable=False),
    sa.Column('progress_total', sa.BigInteger(), nullable=False),
    sa.Column('progress_message', sa.String(length=1024), nullable=False),
    sa.Column('request', sa.Text(), nullable=False),
    sa.Column('result', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('start_time', sa.DateTime(timezone=True), nullable=True),
    sa.Column('end_time', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset'], ['annotation_datasets.id'], name=op.f('fk_annotation_jobs_dataset_annotation_datasets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', name=op.f('pk_annotation_jobs'))
    )
    op.create_index('ix_annotation_jobs_listing', 'annotation_jobs', ['kind', 'dataset', 'create_time'], unique=False)
    op.create_index('ix_annotation_jobs_state', 'annotation_jobs', ['state'], unique=False)
