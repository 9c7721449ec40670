"""What import and export jobs keep per dataset: their job rows (created under the dataset lock), what an
import wrote (its chunks' request records) and how that is discarded again, the files already there."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from simulacra_services.annotation.domain.prepare import check_request_id
from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.categories import CategoryRepository
from simulacra_services.annotation.persistence.item_writes import ItemWriter
from simulacra_services.annotation.persistence.tables import items, request_scope
from simulacra_services.core import errors
from simulacra_services.core.db import idempotency, transaction
from simulacra_services.core.jobs import JobRecord as CoreJobRecord
from simulacra_services.core.jobs import JobStore


class DatasetJobRepository:
    """Job rows of a dataset (core/jobs' table) and the bookkeeping of imports."""

    def __init__(self, engine: Engine, writer: ItemWriter, categories: CategoryRepository) -> None:
        self.engine = engine
        self.writer = writer
        self.categories = categories

    def create_job(
        self, job_store: JobStore, dataset_id: str, kind: str, spec: dict[str, Any], *, label: str, request_id: str, job_id: str
    ) -> tuple[CoreJobRecord, bool]:
        """A job of the dataset, created under its row lock: committing a version checks for unfinished
        imports under the same lock, so no import starts between that check and the version row."""
        if request_id:
            check_request_id(request_id)
        with transaction(self.engine) as conn:
            rows.dataset_row(conn, dataset_id, lock=True)
            return job_store.create(
                kind, spec, parent=f"datasets/{dataset_id}", request_id=request_id, job_id=job_id, label=label, conn=conn
            )

    def import_writes(self, dataset_id: str, job_id: str) -> tuple[list[str], list[int]]:
        """``(item ids, category ids)`` an import job wrote: its chunks' request records (``{job}-{n}``)
        are written in the same transactions as the rows, so they name exactly what is in the database."""
        with self.engine.connect() as conn:
            responses = idempotency.recorded_responses(conn, request_scope(dataset_id, "import"), f"{job_id}-")
        item_ids: list[str] = []
        category_ids: list[int] = []
        for request_id, response in sorted(responses.items()):
            if request_id.removeprefix(f"{job_id}-").isdigit():
                item_ids.extend(response.get("item_ids", []))
                category_ids.extend(response.get("category_ids", []))
        return item_ids, category_ids

    def discard_import(self, dataset_id: str, job_id: str) -> tuple[int, int]:
        """Remove from the working state what an import that will not succeed wrote: its items, then
        the categories it created that nothing uses any more. Idempotent (a second call finds nothing
        live), so a runner that dies while discarding leaves the rest to the next. ``(items, categories)``."""
        item_ids, category_ids = self.import_writes(dataset_id, job_id)
        removed_items = self.writer.delete_many(dataset_id, item_ids) if item_ids else 0
        removed_categories = 0
        for category_id in category_ids:
            try:
                self.categories.delete(dataset_id, category_id)
                removed_categories += 1
            except (errors.NotFound, errors.FailedPrecondition):
                pass  # already gone, or used by items written since: it stays
        return removed_items, removed_categories

    def live_files(self, dataset_id: str) -> set[tuple[str, str]]:
        """``(file_name, image sha256)`` of every working-state item (imports skip those)."""
        with self.engine.connect() as conn:
            dataset = rows.dataset_row(conn, dataset_id)
            found = conn.execute(
                sa.select(items.c.file_name, items.c.image_sha256).where(items.c.dataset == dataset.id, items.c.removed_seq.is_(None))
            )
            return {(row.file_name, row.image_sha256) for row in found}
