"""The annotation-store's facade over its repositories (``annotation.persistence``).

``AnnotationStore`` keeps the API the servicer, the jobs, the benchmarks and
the tests use: datasets, categories, items, versions, statistics and the
bookkeeping of jobs, each forwarded to the repository of its aggregate
(``_forward``: the facade restates no signature).

Synchronous (SQLAlchemy and the object store block): async callers use
``asyncio.to_thread``. No gRPC here; every failure is a ``core.errors`` error
with a stable reason. How versions work without copies is explained in
``tables.py``; every write of a dataset's working state runs in one
transaction that first bumps the dataset's sequence number, which also
serializes the writers of one dataset (a row lock on PostgreSQL, the write
lock on SQLite).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Engine

from simulacra_services.annotation.persistence.blobs import MAX_IMAGE_PIXELS, BlobStore
from simulacra_services.annotation.persistence.categories import CategoryRepository
from simulacra_services.annotation.persistence.content import ItemContent
from simulacra_services.annotation.persistence.datasets import (  # noqa: F401 (re-exported)
    DATASET_FILTER_FIELDS,
    DATASET_ORDER_COLUMNS,
    MAX_CATEGORIES_PER_CREATE,
    DatasetRepository,
)
from simulacra_services.annotation.persistence.imports import DatasetJobRepository
from simulacra_services.annotation.persistence.item_reads import ITEM_ORDER_COLUMNS, ItemReader  # noqa: F401
from simulacra_services.annotation.persistence.item_writes import ItemWriter
from simulacra_services.annotation.persistence.packs import DEFAULT_MAX_PACK_BYTES, SEGMENT_BYTES, PackStore
from simulacra_services.annotation.persistence.row_codec import NO_ENCODING, ItemEncoding
from simulacra_services.annotation.persistence.rows import MAX_DESCRIPTION, MAX_DISPLAY_NAME  # noqa: F401
from simulacra_services.annotation.persistence.statistics import StatisticsRepository
from simulacra_services.annotation.persistence.versions import VersionRepository
from simulacra_services.core.budget import PixelBudget
from simulacra_services.core.storage import ObjectStore


_log = logging.getLogger("simulacra.annotation.packs")

P = ParamSpec("P")
R = TypeVar("R")


def _forward(repository: str, method: Callable[Concatenate[Any, P], R]) -> Callable[Concatenate[AnnotationStore, P], R]:
    """A facade method that is ``method`` of the repository held in attribute ``repository``.

    The signature, defaults and docstring are the repository's own (written once, there).
    """

    @functools.wraps(method)
    def forwarded(self: AnnotationStore, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(getattr(self, repository), *args, **kwargs)

    return forwarded


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
        stream_packs: bool = False,
        stream_pack_max_bytes: int = DEFAULT_MAX_PACK_BYTES,
        pack_segment_bytes: int = SEGMENT_BYTES,
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
        self.packs = PackStore(objects, enabled=stream_packs, max_bytes=stream_pack_max_bytes, segment_bytes=pack_segment_bytes)

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
    create_dataset = _forward("datasets", DatasetRepository.create)
    get_dataset = _forward("datasets", DatasetRepository.get)
    list_datasets = _forward("datasets", DatasetRepository.list)

    def delete_dataset(self, dataset_id: str, *, force: bool = False) -> None:
        """``DatasetRepository.delete``, then the dataset's stream packs (``packs.PackStore``).

        The dataset is gone once its rows are: packs left by a storage error here are logged, not
        raised (their keys hold the old dataset's create time, so no later dataset uses them).
        """
        self.datasets.delete(dataset_id, force=force)
        try:
            self.packs.delete_dataset(dataset_id)
        except Exception:
            _log.warning("stream packs of deleted dataset %r not all removed", dataset_id, exc_info=True)

    # categories ----------------------------------------------------------
    list_categories = _forward("categories", CategoryRepository.list)
    list_categories_page = _forward("categories", CategoryRepository.list_page)
    get_category = _forward("categories", CategoryRepository.get)
    create_category = _forward("categories", CategoryRepository.create)
    ensure_categories = _forward("categories", CategoryRepository.ensure)
    delete_category = _forward("categories", CategoryRepository.delete)

    # items: writes -------------------------------------------------------
    prepare_items = _forward("item_writes", ItemWriter.prepare)
    prepare_batch = _forward("item_writes", ItemWriter.prepare_batch)
    replayed_batch = _forward("item_writes", ItemWriter.replayed_batch)
    write_batch = _forward("item_writes", ItemWriter.write_batch)
    commit_items = _forward("item_writes", ItemWriter.commit)
    update_item = _forward("item_writes", ItemWriter.update)
    delete_item = _forward("item_writes", ItemWriter.delete)
    delete_items = _forward("item_writes", ItemWriter.delete_many)

    # jobs of a dataset ---------------------------------------------------
    create_job = _forward("dataset_jobs", DatasetJobRepository.create_job)
    import_writes = _forward("dataset_jobs", DatasetJobRepository.import_writes)
    discard_import = _forward("dataset_jobs", DatasetJobRepository.discard_import)
    live_files = _forward("dataset_jobs", DatasetJobRepository.live_files)

    # items: reads --------------------------------------------------------
    get_item = _forward("item_reads", ItemReader.get)
    list_items = _forward("item_reads", ItemReader.list)
    iter_items = _forward("item_reads", ItemReader.iter)
    item_page = _forward("item_reads", ItemReader.page)
    stream_page = _forward("item_reads", ItemReader.stream_page)
    count_items = _forward("item_reads", ItemReader.count)
    with_pixel_data = _forward("content", ItemContent.with_pixel_data)
    read_image = _forward("content", ItemContent.read_image)
    read_full = _forward("content", ItemContent.read_full)
    read_stream_entries = _forward("content", ItemContent.read_stream_entries)

    # versions and statistics ---------------------------------------------
    commit_version = _forward("versions", VersionRepository.commit)
    resolve_version = _forward("versions", VersionRepository.resolve)
    get_version = resolve_version
    list_versions = _forward("versions", VersionRepository.list)
    statistics = _forward("stats", StatisticsRepository.compute)
