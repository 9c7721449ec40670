"""annotation_requests goes into core's idempotency_keys; existing rows are carried over

A row (dataset, scope, request_id, payload_sha256, response) becomes the key
(``annotation:datasets/{dataset_id}:{scope}``, request_id) with the same
payload digest, response and time; see ``annotation/requests.py``.

Revision ID: 0006
Revises: 0004, 0005 (core's idempotency_keys with responses; this joins the two)
Create Date: 2026-12-02 15:35:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | tuple[str, ...] | None = ("0004", "0005")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PREFIX = "annotation:datasets/"

_COPY = f"""
INSERT INTO idempotency_keys (scope, request_id, payload_sha256, response, created_at)
SELECT '{_PREFIX}' || d.dataset_id || ':' || r.scope, r.request_id, r.payload_sha256, r.response, r.create_time
FROM annotation_requests AS r JOIN annotation_datasets AS d ON d.id = r.dataset
"""

_COPY_BACK = f"""
INSERT INTO annotation_requests (dataset, scope, request_id, payload_sha256, response, create_time)
SELECT d.id, substr(k.scope, length('{_PREFIX}' || d.dataset_id || ':') + 1), k.request_id, k.payload_sha256,
       k.response, k.created_at
FROM idempotency_keys AS k JOIN annotation_datasets AS d
  ON substr(k.scope, 1, length('{_PREFIX}' || d.dataset_id || ':')) = '{_PREFIX}' || d.dataset_id || ':'
"""


def upgrade() -> None:
    op.execute(sa.text(_COPY))
    with op.batch_alter_table("annotation_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_annotation_requests_create_time")
    op.drop_table("annotation_requests")


def downgrade() -> None:
    op.create_table(
        "annotation_requests",
        sa.Column("dataset", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset"], ["annotation_datasets.id"],
            name=op.f("fk_annotation_requests_dataset_annotation_datasets"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("dataset", "scope", "request_id", name=op.f("pk_annotation_requests")),
    )
    with op.batch_alter_table("annotation_requests", schema=None) as batch_op:
        batch_op.create_index("ix_annotation_requests_create_time", ["create_time"], unique=False)
    op.execute(sa.text(_COPY_BACK))
    op.execute(sa.text(f"DELETE FROM idempotency_keys WHERE substr(scope, 1, {len(_PREFIX)}) = '{_PREFIX}'"))
