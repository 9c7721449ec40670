"""staging areas (annotation_stagings) and a version's derived_from (annotation_versions)

Items uploaded with a staging_id live in annotation_items with added_seq = -n,
removed_seq = -n + 1 (n the staging's id): invisible until CommitStagedVersion
writes a version row with seq -n (see tables.py). Existing versions get
derived_from "" (not derived).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 15:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("annotation_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("derived_from_version", sa.String(length=256), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("derived_from_pipeline_digest", sa.String(length=64), nullable=False, server_default=""))
    op.create_table(
        "annotation_stagings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("dataset", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("staging_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["dataset"], ["annotation_datasets.id"], name=op.f("fk_annotation_stagings_dataset_annotation_datasets"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_annotation_stagings")),
    )
    with op.batch_alter_table("annotation_stagings", schema=None) as batch_op:
        batch_op.create_index("uq_annotation_stagings_dataset_staging", ["dataset", "staging_id"], unique=True)


def downgrade() -> None:
    # Staged rows (negative sequence numbers) and versions committed from stagings go with them.
    op.execute(sa.text("DELETE FROM annotation_versions WHERE seq < 0"))
    op.execute(sa.text("DELETE FROM annotation_annotations WHERE item_row IN (SELECT id FROM annotation_items WHERE added_seq < 0)"))
    op.execute(sa.text("DELETE FROM annotation_items WHERE added_seq < 0"))
    op.execute(sa.text("DELETE FROM annotation_categories WHERE added_seq < 0"))
    with op.batch_alter_table("annotation_stagings", schema=None) as batch_op:
        batch_op.drop_index("uq_annotation_stagings_dataset_staging")
    op.drop_table("annotation_stagings")
    with op.batch_alter_table("annotation_versions", schema=None) as batch_op:
        batch_op.drop_column("derived_from_pipeline_digest")
        batch_op.drop_column("derived_from_version")
