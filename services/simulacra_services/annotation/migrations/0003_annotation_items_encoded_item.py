"""annotation items keep their encoded message (annotation_items.encoded_item)

Rows written before this revision keep NULL there: streams read them the slow
way (decoding their annotations), which gives the same messages.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 16:27:08.823767
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('annotation_items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('encoded_item', sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('annotation_items', schema=None) as batch_op:
        batch_op.drop_column('encoded_item')
