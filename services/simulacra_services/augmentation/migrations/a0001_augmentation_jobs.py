"""augmentation jobs table (core.jobs layout)

Revision ID: a0001
Revises: 0001
Create Date: 2026-12-02 14:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

from simulacra_services.core.jobs.table import create_job_table_v1, drop_job_table_v1

revision: str = "a0001"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = ("augmentation",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_job_table_v1("augmentation_jobs")


def downgrade() -> None:
    drop_job_table_v1("augmentation_jobs")
