"""annotation-store tables: datasets, categories, items, annotations, versions, request ids, jobs

(see services/simulacra_services/annotation/persistence/tables.py for how versions work without copies)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:27:13.938814
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('annotation_datasets',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('dataset_id', sa.String(length=63), nullable=False),
    sa.Column('display_name', sa.String(length=256), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('labels', sa.JSON(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('item_count', sa.BigInteger(), nullable=False),
    sa.Column('annotation_count', sa.BigInteger(), nullable=False),
    sa.Column('latest_version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_datasets')),
    sa.UniqueConstraint('dataset_id', name=op.f('uq_annotation_datasets_dataset_id'))
    )
    op.create_table('annotation_categories',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('dataset', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('category_id', sa.BigInteger(), nullable=False),
    sa.Column('display_name', sa.String(length=256), nullable=False),
    sa.Column('supercategory', sa.String(length=256), nullable=False),
    sa.Column('keypoint_names', sa.JSON(), nullable=False),
    sa.Column('skeleton', sa.JSON(), nullable=False),
    sa.Column('flip_pairs', sa.JSON(), nullable=False),
    sa.Column('added_seq', sa.BigInteger(), nullable=False),
    sa.Column('removed_seq', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['dataset'], ['annotation_datasets.id'], name=op.f('fk_annotation_categories_dataset_annotation_datasets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_categories'))
    )
    with op.batch_alter_table('annotation_categories', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_categories_lookup', ['dataset', 'category_id', 'added_seq'], unique=False)

    op.create_table('annotation_items',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('dataset', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('item_id', sa.String(length=128), nullable=False),
    sa.Column('added_seq', sa.BigInteger(), nullable=False),
    sa.Column('removed_seq', sa.BigInteger(), nullable=True),
    sa.Column('shard_hash', sa.BigInteger(), nullable=False),
    sa.Column('image_sha256', sa.String(length=64), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('format', sa.String(length=8), nullable=False),
    sa.Column('channels', sa.Integer(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('split', sa.String(length=32), nullable=False),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('lineage_kind', sa.String(length=16), nullable=False),
    sa.Column('lineage', sa.JSON(), nullable=False),
    sa.Column('file_name', sa.String(length=1024), nullable=False),
    sa.Column('annotation_count', sa.Integer(), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('update_time', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset'], ['annotation_datasets.id'], name=op.f('fk_annotation_items_dataset_annotation_datasets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_items'))
    )
    with op.batch_alter_table('annotation_items', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_items_dataset_item', ['dataset', 'item_id', 'added_seq'], unique=False)
        batch_op.create_index('uq_annotation_items_live', ['dataset', 'item_id'], unique=True, sqlite_where=sa.text('removed_seq IS NULL'), postgresql_where=sa.text('removed_seq IS NULL'))

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
    with op.batch_alter_table('annotation_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_jobs_listing', ['kind', 'dataset', 'create_time'], unique=False)
        batch_op.create_index('ix_annotation_jobs_state', ['state'], unique=False)

    op.create_table('annotation_requests',
    sa.Column('dataset', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('scope', sa.String(length=32), nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('payload_sha256', sa.String(length=64), nullable=False),
    sa.Column('response', sa.JSON(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['dataset'], ['annotation_datasets.id'], name=op.f('fk_annotation_requests_dataset_annotation_datasets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset', 'scope', 'request_id', name=op.f('pk_annotation_requests'))
    )
    with op.batch_alter_table('annotation_requests', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_requests_create_time', ['create_time'], unique=False)

    op.create_table('annotation_versions',
    sa.Column('dataset', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('create_time', sa.DateTime(timezone=True), nullable=False),
    sa.Column('item_count', sa.BigInteger(), nullable=False),
    sa.Column('annotation_count', sa.BigInteger(), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['dataset'], ['annotation_datasets.id'], name=op.f('fk_annotation_versions_dataset_annotation_datasets'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('dataset', 'version', name=op.f('pk_annotation_versions'))
    )
    op.create_table('annotation_annotations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('item_row', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('dataset', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('annotation_id', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('category_id', sa.BigInteger(), nullable=False),
    sa.Column('instance_id', sa.String(length=64), nullable=False),
    sa.Column('iscrowd', sa.Boolean(), nullable=True),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('area', sa.Float(), nullable=True),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('geometry', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['item_row'], ['annotation_items.id'], name=op.f('fk_annotation_annotations_item_row_annotation_items'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_annotation_annotations'))
    )
    with op.batch_alter_table('annotation_annotations', schema=None) as batch_op:
        batch_op.create_index('ix_annotation_annotations_category', ['dataset', 'category_id', 'item_row'], unique=False)
        batch_op.create_index('ix_annotation_annotations_item_row', ['item_row', 'position'], unique=False)
        batch_op.create_index('ix_annotation_annotations_kind', ['dataset', 'kind', 'item_row'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('annotation_annotations', schema=None) as batch_op:
        batch_op.drop_index('ix_annotation_annotations_kind')
        batch_op.drop_index('ix_annotation_annotations_item_row')
        batch_op.drop_index('ix_annotation_annotations_category')

    op.drop_table('annotation_annotations')
    op.drop_table('annotation_versions')
    with op.batch_alter_table('annotation_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_annotation_requests_create_time')

    op.drop_table('annotation_requests')
    with op.batch_alter_table('annotation_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_annotation_jobs_state')
        batch_op.drop_index('ix_annotation_jobs_listing')

    op.drop_table('annotation_jobs')
    with op.batch_alter_table('annotation_items', schema=None) as batch_op:
        batch_op.drop_index('uq_annotation_items_live', sqlite_where=sa.text('removed_seq IS NULL'), postgresql_where=sa.text('removed_seq IS NULL'))
        batch_op.drop_index('ix_annotation_items_dataset_item')

    op.drop_table('annotation_items')
    with op.batch_alter_table('annotation_categories', schema=None) as batch_op:
        batch_op.drop_index('ix_annotation_categories_lookup')

    op.drop_table('annotation_categories')
    op.drop_table('annotation_datasets')
