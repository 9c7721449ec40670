"""The annotation-store's facade over its repositories (``annotation.persistence``).

``AnnotationStore`` keeps the API the servicer, the jobs, the benchmarks and
the tests use: datasets, categories, items, versions, statistics and the
bookkeeping of jobs, each forwarded to the repository of its aggregate.

Synchronous (SQLAlchemy and the object store block): async callers use
``asyncio.to_thread``. No gRPC here; every failure is a ``core.errors`` error
with a stable reason. How versions work without copies is explained in
``tables.py``; every write of a dataset's working state runs in one
transaction that first bumps the dataset's sequence number, which also
serializes the writers of one dataset (a row lock on PostgreSQL, the write
lock on SQLite).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from simulacra_services.annotation.domain.model import BoxBoundsPolicy, Category
from simulacra_services.annotation.persistence.blobs import MAX_IMAGE_PIXELS, BlobStore
from simulacra_services.annotation.persistence.categories import CategoryRepository
from simulacra_services.annotation.persistence.content import ItemContent
from simulacra_services.annotation.persistence.datasets import (  # noqa: F401 (re-exported)
    DATASET_FILTER_FIELDS,
    DATASET_ORDER_COLUMNS,
    MAX_CATEGORIES_PER_CREATE,
    DatasetRepository,
)
from simulacra_services.annotation.domain.prepare import PreparedItem
from simulacra_services.annotation.domain.records import BatchResult, DatasetRecord, ItemChanges, ItemRecord, NewItem, Page, VersionRecord
from simulacra_services.annotation.domain.statistics import Statistics
from simulacra_services.annotation.persistence.imports import DatasetJobRepository
from simulacra_services.annotation.persistence.item_reads import ITEM_ORDER_COLUMNS, ItemReader  # noqa: F401
from simulacra_services.annotation.persistence.item_writes import ItemWriter
from simulacra_services.annotation.persistence.row_codec import NO_ENCODING, EncodedItem, ItemEncoding
from simulacra_services.annotation.persistence.rows import MAX_DESCRIPTION, MAX_DISPLAY_NAME  # noqa: F401
from simulacra_services.annotation.persistence.statistics import StatisticsRepository
from simulacra_services.annotation.persistence.versions import VersionRepository
from simulacra_services.core.budget import PixelBudget
from simulacra_services.core.jobs import JobRecord as CoreJobRecord
from simulacra_services.core.jobs import JobStore
from simulacra_services.core.storage import ObjectStore


class AnnotationStore:
    """Datasets and everything in them, on a migrated database and an object store."""

    def __init__(
        self,
        engine: Engine,
        objects: ObjectStore,
        *,
        read_threads: int = 8,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
        decode_budget: PixelBudget | None = None,
        item_encoding: ItemEncoding = NO_ENCODING,
    ) -> None:
        self.engine = engine
        self.blobs = BlobStore(objects)
        self.content = ItemContent(self.blobs, read_threads=read_threads if objects.prefers_parallel_reads else 1)
        self.datasets = DatasetRepository(engine)
        self.categories = CategoryRepository(engine)
        self.item_reads = ItemReader(engine, self.content, encoding=item_encoding)
        self.item_writes = ItemWriter(
            engine, self.blobs, self.item_reads, max_image_pixels=max_image_pixels, decode_budget=decode_budget
        )
        self.versions = VersionRepository(engine)
        self.stats = StatisticsRepository(engine)
        self.dataset_jobs = DatasetJobRepository(engine, self.item_writes, self.categories)

    @property
    def max_image_pixels(self) -> int:
        """The server's image size limit (setting max_image_pixels): every image written is checked against it."""
        return self.item_writes.max_image_pixels

    @property
    def decode_budget(self) -> PixelBudget | None:
        """Pixels decoded at once by all uploads and imports (setting decode_budget_pixels)."""
        return self.item_writes.decode_budget

    def close(self) -> None:
        """Stop the blob reader threads (the engine and object store belong to the caller)."""
        self.content.close()

    # datasets ------------------------------------------------------------
    def create_dataset(
        self,
        dataset_id: str,
        *,
        display_name: str = "",
        description: str = "",
        labels: Mapping[str, str] | None = None,
        categories: Sequence[Category] = (),
    ) -> DatasetRecord:
        return self.datasets.create(
            dataset_id, display_name=display_name, description=description, labels=labels, categories=categories
        )

    def get_dataset(self, dataset_id: str) -> DatasetRecord:
        return self.datasets.get(dataset_id)

    def list_datasets(self, *, page_size: int = 0, page_token: str = "", filter: str = "", order_by: str = "") -> Page:
        return self.datasets.list(page_size=page_size, page_token=page_token, filter=filter, order_by=order_by)

    def delete_dataset(self, dataset_id: str, *, force: bool = False) -> None:
        self.datasets.delete(dataset_id, force=force)

    # categories ----------------------------------------------------------
    def list_categories(self, dataset_id: str, version: str | int | None = None) -> list[Category]:
        return self.categories.list(dataset_id, version)

    def list_categories_page(
        self, dataset_id: str, version: str | int | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> Page:
        return self.categories.list_page(dataset_id, version, page_size=page_size, page_token=page_token)

    def get_category(self, dataset_id: str, category_id: int, version: str | int | None = None) -> Category:
        return self.categories.get(dataset_id, category_id, version)

    def create_category(self, dataset_id: str, category: Category) -> Category:
        return self.categories.create(dataset_id, category)

    def ensure_categories(self, dataset_id: str, wanted: Sequence[Category]) -> int:
        return self.categories.ensure(dataset_id, wanted)

    def delete_category(self, dataset_id: str, category_id: int) -> None:
        self.categories.delete(dataset_id, category_id)

    # items: writes -------------------------------------------------------
    def prepare_items(
        self,
        dataset_id: str,
        new_items: Sequence[NewItem],
        *,
        policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT,
        path: str = "items",
        first_index: int = 0,
        extra_categories: Sequence[Category] = (),
    ) -> list[PreparedItem]:
        return self.item_writes.prepare(
            dataset_id, new_items, policy=policy, path=path, first_index=first_index, extra_categories=extra_categories
        )

    def replayed_batch(self, dataset_id: str, request_id: str, payload_digest: str, scope: str = "upload") -> BatchResult | None:
        return self.item_writes.replayed_batch(dataset_id, request_id, payload_digest, scope)

    def write_batch(
        self,
        dataset_id: str,
        new_items: Sequence[NewItem],
        *,
        request_id: str = "",
        payload_digest: str = "",
        policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT,
        path: str = "items",
    ) -> BatchResult:
        return self.item_writes.write_batch(
            dataset_id, new_items, request_id=request_id, payload_digest=payload_digest, policy=policy, path=path
        )

    def commit_items(
        self,
        dataset_id: str,
        prepared: Sequence[PreparedItem],
        *,
        request_id: str = "",
        payload_digest: str = "",
        scope: str = "upload",
        categories: Sequence[Category] = (),
    ) -> BatchResult:
        return self.item_writes.commit(
            dataset_id, prepared, request_id=request_id, payload_digest=payload_digest, scope=scope, categories=categories
        )

    def update_item(
        self,
        dataset_id: str,
        item_id: str,
        changes: ItemChanges,
        *,
        etag: str = "",
        policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT,
    ) -> ItemRecord:
        return self.item_writes.update(dataset_id, item_id, changes, etag=etag, policy=policy)

    def delete_item(self, dataset_id: str, item_id: str) -> None:
        self.item_writes.delete(dataset_id, item_id)

    def delete_items(self, dataset_id: str, item_ids: Sequence[str]) -> int:
        return self.item_writes.delete_many(dataset_id, item_ids)

    # jobs of a dataset ---------------------------------------------------
    def create_job(
        self, job_store: JobStore, dataset_id: str, kind: str, spec: dict[str, Any], *, label: str, request_id: str, job_id: str
    ) -> tuple[CoreJobRecord, bool]:
        return self.dataset_jobs.create_job(
            job_store, dataset_id, kind, spec, label=label, request_id=request_id, job_id=job_id
        )

    def import_writes(self, dataset_id: str, job_id: str) -> tuple[list[str], list[int]]:
        return self.dataset_jobs.import_writes(dataset_id, job_id)

    def discard_import(self, dataset_id: str, job_id: str) -> tuple[int, int]:
        return self.dataset_jobs.discard_import(dataset_id, job_id)

    def live_files(self, dataset_id: str) -> set[tuple[str, str]]:
        return self.dataset_jobs.live_files(dataset_id)

    # items: reads --------------------------------------------------------
    def get_item(self, dataset_id: str, item_id: str, *, version: str | int | None = None, full: bool = True) -> ItemRecord:
        return self.item_reads.get(dataset_id, item_id, version=version, full=full)

    def list_items(
        self,
        dataset_id: str,
        version: str | int | None = None,
        *,
        filter: str = "",
        order_by: str = "",
        page_size: int = 0,
        page_token: str = "",
        full: bool = False,
    ) -> Page:
        return self.item_reads.list(
            dataset_id, version, filter=filter, order_by=order_by, page_size=page_size, page_token=page_token, full=full
        )

    def iter_items(
        self,
        dataset_id: str,
        version: str | int | None = None,
        *,
        filter: str = "",
        full: bool = False,
        after_item_id: str = "",
        shard_index: int = 0,
        shard_count: int = 0,
        page_size: int = 256,
    ) -> Iterator[ItemRecord]:
        return self.item_reads.iter(
            dataset_id, version, filter=filter, full=full, after_item_id=after_item_id,
            shard_index=shard_index, shard_count=shard_count, page_size=page_size,
        )

    def item_page(
        self,
        dataset_id: str,
        version: str | int | None,
        *,
        filter: str = "",
        after_item_id: str = "",
        shard_index: int = 0,
        shard_count: int = 0,
        limit: int = 256,
    ) -> list[ItemRecord]:
        return self.item_reads.page(
            dataset_id, version, filter=filter, after_item_id=after_item_id,
            shard_index=shard_index, shard_count=shard_count, limit=limit,
        )

    def stream_page(
        self,
        dataset_id: str,
        version: str | int | None,
        *,
        filter: str = "",
        after_item_id: str = "",
        shard_index: int = 0,
        shard_count: int = 0,
        limit: int = 256,
    ) -> list[EncodedItem | ItemRecord]:
        return self.item_reads.stream_page(
            dataset_id, version, filter=filter, after_item_id=after_item_id,
            shard_index=shard_index, shard_count=shard_count, limit=limit,
        )

    def count_items(self, dataset_id: str, version: str | int | None = None, filter: str = "") -> int:
        return self.item_reads.count(dataset_id, version, filter)

    def with_pixel_data(self, record: ItemRecord) -> ItemRecord:
        return self.content.with_pixel_data(record)

    def read_image(self, record: ItemRecord) -> bytes:
        return self.content.read_image(record)

    def read_full(self, records: Sequence[ItemRecord]) -> list[tuple[ItemRecord, bytes]]:
        return self.content.read_full(records)

    def read_stream_entries(self, entries: Sequence[EncodedItem | ItemRecord]) -> list[tuple[EncodedItem | ItemRecord, bytes]]:
        return self.content.read_stream_entries(entries)

    # versions and statistics ---------------------------------------------
    def commit_version(self, dataset_id: str, description: str = "") -> tuple[VersionRecord, bool]:
        return self.versions.commit(dataset_id, description)

    def resolve_version(self, dataset_id: str, version: str | int) -> VersionRecord:
        return self.versions.resolve(dataset_id, version)

    get_version = resolve_version

    def list_versions(self, dataset_id: str, *, page_size: int = 0, page_token: str = "") -> Page:
        return self.versions.list(dataset_id, page_size=page_size, page_token=page_token)

    def statistics(self, dataset_id: str, version: str | int | None = None, *, filter: str = "") -> Statistics:
        return self.stats.compute(dataset_id, version, filter=filter)
