"""The annotation-store's domain layer: datasets, categories, items, versions, statistics, jobs.

Synchronous (SQLAlchemy and the object store block): async callers use
``asyncio.to_thread``. No gRPC here; every failure is a ``core.errors`` error
with a stable reason. How versions work without copies is explained in
``tables.py``; every write of a dataset's working state runs in one
transaction that first bumps the dataset's sequence number, which also
serializes the writers of one dataset (a row lock on PostgreSQL, the write
lock on SQLite).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from simulacra_services.annotation import codec, convert, queries, validation
from simulacra_services.annotation import filters as filter_syntax
from simulacra_services.annotation.blobs import MAX_IMAGE_PIXELS, BlobStore
from simulacra_services.annotation.model import Annotation, BoxBoundsPolicy, Category, PixelMap
from simulacra_services.annotation.prepare import (
    MAX_ITEMS_PER_BATCH,
    PreparedItem,
    check_annotations,
    check_lineage,
    check_request_id,
    content_digest,
    prepare,
    store_blobs,
)
from simulacra_services.annotation.records import (
    BatchResult,
    DatasetRecord,
    ItemChanges,
    ItemRecord,
    NewItem,
    Page,
    VersionRecord,
)
from simulacra_services.annotation.row_codec import (
    ANNOTATION_COLUMNS,
    ITEM_COLUMNS,
    EncodedItem,
    annotation_of,
    annotation_rows,
    category_json,
    category_of,
    category_row,
    dataset_of,
    encoded_item,
    item_of,
    item_row,
    row_etag,
    version_of,
)
from simulacra_services.annotation.statistics import Statistics, compute_statistics
from simulacra_services.annotation.tables import annotations, datasets, items, jobs, request_scope, versions
from simulacra_services.annotation.tables import categories as categories_table
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.pagination import PageRequest
from simulacra_services.core.jobs import ACTIVE as ACTIVE_JOB_STATES
from simulacra_services.core.jobs import JobRecord as CoreJobRecord
from simulacra_services.core.jobs import JobStore
from simulacra_services.core.db import transaction, utcnow
from simulacra_services.core.db import idempotency
from simulacra_services.core.budget import PixelBudget
from simulacra_services.core.storage import ObjectStore

MAX_DISPLAY_NAME = 256
MAX_DESCRIPTION = 4096
MAX_CATEGORIES_PER_CREATE = 10_000
_CHUNK = 500  # rows per IN (...) list
# The row id, then the fields of an EncodedItem in their order.
_STREAM_COLUMNS = (items.c.id, items.c.item_id, items.c.image_sha256, items.c.size_bytes, items.c.encoded_item)
T = TypeVar("T")

DATASET_FILTER_FIELDS = {
    "display_name": filter_syntax.FieldSpec(filter_syntax.FieldType.STRING),
    "labels": filter_syntax.FieldSpec(filter_syntax.FieldType.MAP),
    "create_time": filter_syntax.FieldSpec(filter_syntax.FieldType.TIMESTAMP),
    "update_time": filter_syntax.FieldSpec(filter_syntax.FieldType.TIMESTAMP),
    "item_count": filter_syntax.FieldSpec(filter_syntax.FieldType.INTEGER),
    "latest_version": filter_syntax.FieldSpec(filter_syntax.FieldType.INTEGER),
}
ITEM_ORDER_COLUMNS = {
    "item_id": items.c.item_id,
    "create_time": items.c.create_time,
    "file_name": items.c.file_name,
    "width": items.c.width,
    "height": items.c.height,
    "split": items.c.split,
}
_ITEM_ORDER_TYPES = {
    "item_id": pagination.is_str, "create_time": pagination.is_time, "file_name": pagination.is_str,
    "width": pagination.is_int, "height": pagination.is_int, "split": pagination.is_str,
}
DATASET_ORDER_COLUMNS = {"name": datasets.c.dataset_id, "create_time": datasets.c.create_time, "update_time": datasets.c.update_time}
_DATASET_ORDER_TYPES = {"name": pagination.is_str, "create_time": pagination.is_time, "update_time": pagination.is_time}


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _dataset_not_found(dataset_id: str) -> errors.SimulacraError:
    return errors.NotFound(
        "DATASET_NOT_FOUND", f"dataset {dataset_id!r} does not exist", {"dataset": f"datasets/{dataset_id}"}
    )


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
    ) -> None:
        self.engine = engine
        self.blobs = BlobStore(objects)
        # The server's image size limit (setting max_image_pixels): every image written is checked against it.
        self.max_image_pixels = max_image_pixels
        # Pixels decoded at once by all uploads and imports (setting decode_budget_pixels).
        self.decode_budget = decode_budget
        self._read_threads = read_threads if objects.prefers_parallel_reads else 1
        self._readers = ThreadPoolExecutor(self._read_threads, thread_name_prefix="annotation-blob-read")

    # ------------------------------------------------------------------
    # internal helpers
    # ------------------------------------------------------------------
    def _dataset_row(self, conn: Connection, dataset_id: str, *, lock: bool = False) -> Row[Any]:
        statement = sa.select(datasets).where(datasets.c.dataset_id == dataset_id)
        if lock:
            statement = statement.with_for_update()
        row = conn.execute(statement).first()
        if row is None:
            raise _dataset_not_found(dataset_id)
        return row

    def _bump(self, conn: Connection, dataset_pk: int) -> int:
        """Take the next sequence number of a dataset (and its write lock on PostgreSQL)."""
        conn.execute(sa.update(datasets).where(datasets.c.id == dataset_pk).values(seq=datasets.c.seq + 1, update_time=utcnow()))
        return int(conn.execute(sa.select(datasets.c.seq).where(datasets.c.id == dataset_pk)).scalar_one())

    def _version_row(self, conn: Connection, dataset: Row[Any], version: str | int) -> Row[Any]:
        number = dataset.latest_version if version == "latest" else int(version)
        row = None
        if number > 0:
            row = conn.execute(
                sa.select(versions).where(versions.c.dataset == dataset.id, versions.c.version == number)
            ).first()
        if row is None:
            shown = "latest" if version == "latest" else str(version)
            raise errors.NotFound(
                "VERSION_NOT_FOUND",
                f"dataset {dataset.dataset_id!r} has no version {shown}"
                + (" (nothing committed yet)" if dataset.latest_version == 0 else f"; the latest is {dataset.latest_version}"),
                {"version": f"datasets/{dataset.dataset_id}/versions/{shown}", "latest_version": dataset.latest_version},
            )
        return row

    def _state(self, conn: Connection, dataset_id: str, version: str | int | None) -> tuple[Row[Any], int | None, int]:
        """The dataset row, the sequence to read at (None: working state) and the version number (0: working)."""
        dataset = self._dataset_row(conn, dataset_id)
        if version is None or version == 0:
            return dataset, None, 0
        row = self._version_row(conn, dataset, version)
        return dataset, int(row.seq), int(row.version)

    @staticmethod
    def _categories(conn: Connection, dataset_pk: int, seq: int | None) -> list[Category]:
        rows = conn.execute(
            sa.select(categories_table)
            .where(categories_table.c.dataset == dataset_pk, queries.visible(categories_table, seq))
            .order_by(categories_table.c.category_id)
        )
        return [category_of(row) for row in rows]

    @staticmethod
    def _record_request(
        conn: Connection, dataset: Row[Any], scope: str, request_id: str, digest: str, response: Any
    ) -> None:
        idempotency.record_response(conn, request_scope(dataset.dataset_id, scope), request_id, digest, response)

    @staticmethod
    def _recorded(conn: Connection, dataset: Row[Any], scope: str, request_id: str, digest: str) -> Any | None:
        """The response first given to ``request_id``; REQUEST_ID_REUSED when the payload differs."""
        return idempotency.recorded_response(conn, request_scope(dataset.dataset_id, scope), request_id, digest)

    # ------------------------------------------------------------------
    # datasets
    # ------------------------------------------------------------------
    def _dataset_record(self, conn: Connection, row: Row[Any]) -> DatasetRecord:
        return self._dataset_records(conn, [row])[0]

    @staticmethod
    def _dataset_records(conn: Connection, rows: Sequence[Row[Any]]) -> list[DatasetRecord]:
        """Records of dataset rows, with their live category counts (one query for all)."""
        counts: dict[int, int] = {}
        if rows:
            counts = dict(
                conn.execute(
                    sa.select(categories_table.c.dataset, sa.func.count())
                    .where(categories_table.c.dataset.in_([row.id for row in rows]), categories_table.c.removed_seq.is_(None))
                    .group_by(categories_table.c.dataset)
                ).all()
            )
        return [dataset_of(row, int(counts.get(row.id, 0))) for row in rows]

    def create_dataset(
        self,
        dataset_id: str,
        *,
        display_name: str = "",
        description: str = "",
        labels: Mapping[str, str] | None = None,
        categories: Sequence[Category] = (),
    ) -> DatasetRecord:
        validation.validate_dataset_id(dataset_id, "dataset_id")
        _check_text(display_name, "dataset.display_name", MAX_DISPLAY_NAME)
        _check_text(description, "dataset.description", MAX_DESCRIPTION, multiline=True)
        labels = dict(sorted((labels or {}).items()))
        validation.validate_attributes(labels, "dataset.labels")
        if len(categories) > MAX_CATEGORIES_PER_CREATE:
            raise errors.InvalidArgument(
                "TOO_MANY_CATEGORIES",
                f"categories: {len(categories)} given, at most {MAX_CATEGORIES_PER_CREATE}",
                {"field": "categories", "limit": MAX_CATEGORIES_PER_CREATE},
            )
        assigned = _assign_category_ids(categories)
        validation.validate_categories(assigned, "categories")
        now = utcnow()
        try:
            with transaction(self.engine) as conn:
                if conn.execute(sa.select(datasets.c.id).where(datasets.c.dataset_id == dataset_id)).first() is not None:
                    raise _dataset_exists(dataset_id)
                seq = 1 if assigned else 0
                pk = conn.execute(
                    datasets.insert().returning(datasets.c.id).values(
                        dataset_id=dataset_id, display_name=display_name, description=description, labels=labels,
                        create_time=now, update_time=now, seq=seq, item_count=0, annotation_count=0, latest_version=0,
                    )
                ).scalar_one()
                if assigned:
                    conn.execute(categories_table.insert(), [category_row(pk, c, seq) for c in assigned])
                return self._dataset_record(conn, self._dataset_row(conn, dataset_id))
        except IntegrityError:
            raise _dataset_exists(dataset_id) from None

    def get_dataset(self, dataset_id: str) -> DatasetRecord:
        with self.engine.connect() as conn:
            return self._dataset_record(conn, self._dataset_row(conn, dataset_id))

    def list_datasets(self, *, page_size: int = 0, page_token: str = "", filter: str = "", order_by: str = "") -> Page:
        keys = queries.parse_order_by(order_by, DATASET_ORDER_COLUMNS, "name")
        page = PageRequest.parse(
            page_size, page_token,
            pagination.fingerprint(rpc="ListDatasets", filter=filter, order_by=[(k.name, k.descending) for k in keys]),
            validate=pagination.values_of(*(_DATASET_ORDER_TYPES[k.name] for k in keys)),
        )
        node = filter_syntax.parse_filter(filter, DATASET_FILTER_FIELDS)

        def label(comparison: filter_syntax.Comparison) -> sa.ColumnElement[bool]:
            value = datasets.c.labels[comparison.key].as_string()
            if comparison.value is None:
                return value.is_not(None)
            return sa.and_(value.is_not(None), filter_syntax.compare(value, comparison.op, comparison.value))

        condition = filter_syntax.to_sqlalchemy(
            node,
            {
                "display_name": datasets.c.display_name,
                "labels": label,
                "create_time": datasets.c.create_time,
                "update_time": datasets.c.update_time,
                "item_count": datasets.c.item_count,
                "latest_version": datasets.c.latest_version,
            },
        )
        statement = sa.select(datasets).where(condition)
        if not page.first:
            statement = statement.where(queries.after(keys, page.cursor))
        statement = statement.order_by(*queries.order_clauses(keys)).limit(page.size + 1)
        with self.engine.connect() as conn:
            rows, token = page.finish(conn.execute(statement).all(), lambda last: [getattr(last, _dataset_column(k.name)) for k in keys])
            records = self._dataset_records(conn, rows)
        return Page(records, token)

    def delete_dataset(self, dataset_id: str, *, force: bool = False) -> None:
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            if not force and (dataset.item_count > 0 or dataset.latest_version > 0):
                raise errors.FailedPrecondition(
                    "DATASET_NOT_EMPTY",
                    f"dataset {dataset_id!r} has {dataset.item_count} items and {dataset.latest_version} versions; "
                    "set force to delete it with everything in it",
                    {"dataset": f"datasets/{dataset_id}", "item_count": dataset.item_count, "latest_version": dataset.latest_version},
                )
            # Children first: not every SQLite build enforces ON DELETE CASCADE the same way, this does.
            item_rows = sa.select(items.c.id).where(items.c.dataset == dataset.id)
            conn.execute(sa.delete(annotations).where(annotations.c.item_row.in_(item_rows)))
            idempotency.forget_scopes(conn, request_scope(dataset_id))
            for table in (items, categories_table, versions):
                conn.execute(sa.delete(table).where(table.c.dataset == dataset.id))
            conn.execute(sa.delete(jobs).where(jobs.c.parent == f"datasets/{dataset_id}"))
            conn.execute(sa.delete(datasets).where(datasets.c.id == dataset.id))

    # ------------------------------------------------------------------
    # categories
    # ------------------------------------------------------------------
    def list_categories(self, dataset_id: str, version: str | int | None = None) -> list[Category]:
        with self.engine.connect() as conn:
            dataset, seq, _ = self._state(conn, dataset_id, version)
            return self._categories(conn, dataset.id, seq)

    def list_categories_page(
        self, dataset_id: str, version: str | int | None = None, *, page_size: int = 0, page_token: str = ""
    ) -> Page:
        """Categories by category_id, one page at a time."""
        size = pagination.page_size_of(page_size)
        with self.engine.connect() as conn:
            dataset, seq, number = self._state(conn, dataset_id, version)
            found = self._categories(conn, dataset.id, seq)
        page = PageRequest.parse(
            size, page_token,
            pagination.fingerprint(rpc="ListCategories", dataset=dataset_id, created=dataset.create_time, version=number),
            validate=pagination.values_of(pagination.is_int),
        )
        if not page.first:
            found = [c for c in found if c.category_id > page.cursor[0]]
        return Page(*page.finish(found, lambda last: [last.category_id]))

    def get_category(self, dataset_id: str, category_id: int, version: str | int | None = None) -> Category:
        for category in self.list_categories(dataset_id, version):
            if category.category_id == category_id:
                return category
        raise errors.NotFound(
            "CATEGORY_NOT_FOUND",
            f"dataset {dataset_id!r} has no category {category_id}" + (f" in version {version}" if version else ""),
            {"category": f"datasets/{dataset_id}/categories/{category_id}", "category_id": category_id},
        )

    def create_category(self, dataset_id: str, category: Category) -> Category:
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            live = self._categories(conn, dataset.id, None)
            if category.category_id == 0:
                # Above every id ever used: a deleted category's id keeps meaning it in committed versions.
                highest = conn.execute(
                    sa.select(sa.func.max(categories_table.c.category_id)).where(categories_table.c.dataset == dataset.id)
                ).scalar_one()
                category = dataclasses.replace(category, category_id=int(highest or 0) + 1)
            validation.validate_category(category, "category")
            for other in live:
                if other.category_id == category.category_id or other.display_name == category.display_name:
                    same_id = other.category_id == category.category_id
                    raise errors.AlreadyExists(
                        "CATEGORY_ALREADY_EXISTS",
                        f"dataset {dataset_id!r} already has a category "
                        + (f"with id {category.category_id}" if same_id else f"named {category.display_name!r}"),
                        {"field": "category.category_id" if same_id else "category.display_name",
                         "category": f"datasets/{dataset_id}/categories/{other.category_id}"},
                    )
            seq = self._bump(conn, dataset.id)
            conn.execute(categories_table.insert().values(category_row(dataset.id, category, seq)))
            return category

    def ensure_categories(self, dataset_id: str, wanted: Sequence[Category]) -> int:
        """Create the categories of ``wanted`` the dataset lacks (by id); those it has must agree.

        Returns how many were created. For imports: CATEGORY_CONFLICT names
        the first category whose id or name clashes with a different one
        (``validation.categories_agree``, the import planner's rule too).
        """
        validation.validate_categories(wanted, "categories")
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            return len(self._create_missing_categories(conn, dataset, wanted))

    def _create_missing_categories(self, conn: Connection, dataset: Row[Any], wanted: Sequence[Category]) -> list[Category]:
        """Insert the categories of ``wanted`` the working state lacks (one sequence number); those it has must agree."""
        live = {c.category_id: c for c in self._categories(conn, dataset.id, None)}
        names = {c.display_name: c.category_id for c in live.values()}
        missing = []
        for index, category in enumerate(wanted):
            existing = live.get(category.category_id)
            clash = existing is not None and not validation.categories_agree(existing, category)
            clash = clash or (existing is None and category.display_name in names)
            if clash:
                raise errors.FailedPrecondition(
                    "CATEGORY_CONFLICT",
                    f"categories[{index}]: category {category.category_id} {category.display_name!r} differs from "
                    "the dataset's category with the same id or name",
                    {"field": f"categories[{index}]", "category_id": category.category_id},
                )
            if existing is None:
                missing.append(category)
        if missing:
            seq = self._bump(conn, dataset.id)
            conn.execute(categories_table.insert(), [category_row(dataset.id, c, seq) for c in missing])
        return missing

    def delete_category(self, dataset_id: str, category_id: int) -> None:
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            row = conn.execute(
                sa.select(categories_table.c.id).where(
                    categories_table.c.dataset == dataset.id, categories_table.c.category_id == category_id, categories_table.c.removed_seq.is_(None)
                )
            ).first()
            if row is None:
                raise errors.NotFound(
                    "CATEGORY_NOT_FOUND",
                    f"dataset {dataset_id!r} has no category {category_id}",
                    {"category": f"datasets/{dataset_id}/categories/{category_id}", "category_id": category_id},
                )
            in_use = conn.execute(
                sa.select(sa.func.count())
                .select_from(annotations.join(items, annotations.c.item_row == items.c.id))
                .where(annotations.c.dataset == dataset.id, annotations.c.category_id == category_id, items.c.removed_seq.is_(None))
            ).scalar_one()
            if in_use:
                raise errors.FailedPrecondition(
                    "CATEGORY_IN_USE",
                    f"category {category_id} of dataset {dataset_id!r} is used by {in_use} annotations of the working "
                    "state; delete or change those first",
                    {"category": f"datasets/{dataset_id}/categories/{category_id}", "annotation_count": in_use},
                )
            seq = self._bump(conn, dataset.id)
            conn.execute(sa.update(categories_table).where(categories_table.c.id == row.id).values(removed_seq=seq))

    # ------------------------------------------------------------------
    # items: writes
    # ------------------------------------------------------------------
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
        """Validate items and store their blobs; nothing is written to the database.

        ``extra_categories`` count as existing too (an import creates its
        categories just before it commits); ``commit_items`` checks again that
        every category used exists by then. Prepared items hold no image bytes.
        """
        with self.engine.connect() as conn:
            dataset = self._dataset_row(conn, dataset_id)
            known = {c.category_id: c for c in self._categories(conn, dataset.id, None)}
        known.update({c.category_id: c for c in extra_categories})
        return prepare(
            new_items, known, self.blobs, policy=policy, path=path, first_index=first_index,
            max_image_pixels=self.max_image_pixels, decode_budget=self.decode_budget,
        )

    def replayed_batch(self, dataset_id: str, request_id: str, payload_digest: str, scope: str = "upload") -> BatchResult | None:
        """The result of an earlier batch with this request id, if any (REQUEST_ID_REUSED on a different payload)."""
        if not request_id:
            return None
        check_request_id(request_id)
        with self.engine.connect() as conn:
            dataset = self._dataset_row(conn, dataset_id)
            response = self._recorded(conn, dataset, scope, request_id, payload_digest)
        return None if response is None else BatchResult(list(response["item_ids"]), True)

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
        """Create items atomically: validate all, store blobs, then one transaction."""
        replay = self.replayed_batch(dataset_id, request_id, payload_digest)
        if replay is not None:
            return replay
        if len(new_items) > MAX_ITEMS_PER_BATCH:
            raise errors.InvalidArgument(
                "TOO_MANY_ITEMS",
                f"{path}: {len(new_items)} items in one batch, at most {MAX_ITEMS_PER_BATCH}",
                {"field": path, "count": len(new_items), "limit": MAX_ITEMS_PER_BATCH},
            )
        prepared = self.prepare_items(dataset_id, new_items, policy=policy, path=path)
        return self.commit_items(dataset_id, prepared, request_id=request_id, payload_digest=payload_digest)

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
        """Insert prepared items in one transaction: all of them or none.

        ``categories``: created first in the same transaction where missing (an
        import's); the request record lists the ids created (``import_writes``).
        """
        if request_id:
            check_request_id(request_id)
        now = utcnow()
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            if request_id:
                response = self._recorded(conn, dataset, scope, request_id, payload_digest)
                if response is not None:
                    return BatchResult(list(response["item_ids"]), True)
            created = [c.category_id for c in self._create_missing_categories(conn, dataset, categories)] if categories else []
            if not prepared:  # no items: no new sequence number unless categories were created
                if request_id:
                    self._record_request(
                        conn, dataset, scope, request_id, payload_digest, {"item_ids": [], "category_ids": created}
                    )
                return BatchResult([], False)
            live_categories = {c.category_id for c in self._categories(conn, dataset.id, None)}
            for item in prepared:
                _check_categories_still_exist(item.annotations, live_categories, f"{item.path}.annotations")
            self._check_new_ids(conn, dataset, prepared)
            seq = self._bump(conn, dataset.id)
            item_rows = [item_row(dataset.id, item, seq, now, now) for item in prepared]
            rows_per_item = [annotation_rows(dataset.id, 0, item.annotations) for item in prepared]
            for row, rows_of_item in zip(item_rows, rows_per_item):
                row["encoded_item"] = encoded_item(dataset_id, row, rows_of_item)
            pks = self._insert_items(conn, item_rows)
            new_annotations = []
            for pk, rows_of_item in zip(pks, rows_per_item):
                for row in rows_of_item:
                    row["item_row"] = pk
                new_annotations.extend(rows_of_item)
            if new_annotations:
                conn.execute(annotations.insert(), new_annotations)
            conn.execute(
                sa.update(datasets).where(datasets.c.id == dataset.id).values(
                    item_count=datasets.c.item_count + len(prepared),
                    annotation_count=datasets.c.annotation_count + len(new_annotations),
                )
            )
            item_ids = [item.item_id for item in prepared]
            if request_id:
                self._record_request(
                    conn, dataset, scope, request_id, payload_digest, {"item_ids": item_ids, "category_ids": created}
                )
            return BatchResult(item_ids, False)

    @staticmethod
    def _insert_items(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
        if not rows:
            return []
        result = conn.execute(items.insert().returning(items.c.id, sort_by_parameter_order=True), rows)
        return [int(pk) for pk in result.scalars().all()]

    @staticmethod
    def _check_new_ids(conn: Connection, dataset: Row[Any], prepared: Sequence[PreparedItem]) -> None:
        by_id = {item.item_id: item for item in prepared}
        for chunk in _chunks(list(by_id)):
            taken = conn.execute(
                sa.select(items.c.item_id).where(
                    items.c.dataset == dataset.id, items.c.removed_seq.is_(None), items.c.item_id.in_(chunk)
                )
            ).scalars().first()
            if taken is not None:
                item = by_id[taken]
                raise errors.AlreadyExists(
                    "ITEM_ALREADY_EXISTS",
                    f"{item.path}.item_id: dataset {dataset.dataset_id!r} already has an item {taken!r}",
                    {"field": f"{item.path}.item_id", "item_index": item.index,
                     "item": f"datasets/{dataset.dataset_id}/items/{taken}"},
                )

    # ------------------------------------------------------------------
    # import and export jobs (rows in core/jobs' table, see annotation/jobs.py)
    # ------------------------------------------------------------------
    def create_job(
        self, job_store: JobStore, dataset_id: str, kind: str, spec: dict[str, Any], *, label: str, request_id: str, job_id: str
    ) -> tuple[CoreJobRecord, bool]:
        """A job of the dataset, created under its row lock: ``commit_version`` checks for unfinished
        imports under the same lock, so no import starts between that check and the version row."""
        if request_id:
            check_request_id(request_id)
        with transaction(self.engine) as conn:
            self._dataset_row(conn, dataset_id, lock=True)
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
        removed_items = self.delete_items(dataset_id, item_ids) if item_ids else 0
        removed_categories = 0
        for category_id in category_ids:
            try:
                self.delete_category(dataset_id, category_id)
                removed_categories += 1
            except (errors.NotFound, errors.FailedPrecondition):
                pass  # already gone, or used by items written since: it stays
        return removed_items, removed_categories

    def live_files(self, dataset_id: str) -> set[tuple[str, str]]:
        """``(file_name, image sha256)`` of every working-state item (imports skip those)."""
        with self.engine.connect() as conn:
            dataset = self._dataset_row(conn, dataset_id)
            rows = conn.execute(
                sa.select(items.c.file_name, items.c.image_sha256).where(items.c.dataset == dataset.id, items.c.removed_seq.is_(None))
            )
            return {(row.file_name, row.image_sha256) for row in rows}

    def update_item(
        self,
        dataset_id: str,
        item_id: str,
        changes: ItemChanges,
        *,
        etag: str = "",
        policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT,
    ) -> ItemRecord:
        """Replace the item's row by a changed copy; committed versions keep the old row."""
        current = self.get_item(dataset_id, item_id, full=False)
        if etag and etag != current.etag:
            raise _etag_mismatch(dataset_id, item_id, etag, current.etag)
        split = current.split if changes.split is None else validation.normalize_split(changes.split, "item.split")
        attributes = current.attributes
        if changes.attributes is not None:
            validation.validate_attributes(changes.attributes, "item.attributes")
            attributes = dict(sorted(changes.attributes.items()))
        file_name = current.file_name
        if changes.file_name is not None:
            if changes.file_name:
                validation.validate_relative_path(changes.file_name, "item.file_name")
            file_name = changes.file_name
        lineage = current.lineage if changes.lineage is None else check_lineage(changes.lineage, "item.lineage")
        new_annotations = current.annotations
        if changes.annotations is not None:
            known = {c.category_id: c for c in self.list_categories(dataset_id)}
            pending: dict[str, bytes] = {}
            new_annotations = check_annotations(
                changes.annotations, current.image, known, policy, "item.annotations", pending, self.blobs
            )
            store_blobs(self.blobs, list(pending.values()))
        digest = content_digest(item_id, current.image, split, attributes, lineage, new_annotations, file_name)
        now = utcnow()
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            old = self._live_item_row(conn, dataset, item_id)
            if row_etag(old) != current.etag:  # changed since we read it
                if etag:
                    raise _etag_mismatch(dataset_id, item_id, etag, row_etag(old))
                raise errors.Aborted(
                    "CONCURRENT_UPDATE",
                    f"item {item_id!r} changed while this update was being prepared; retry",
                    {"item": f"datasets/{dataset_id}/items/{item_id}"},
                )
            if changes.annotations is not None:
                live_categories = {c.category_id for c in self._categories(conn, dataset.id, None)}
                _check_categories_still_exist(new_annotations, live_categories, "item.annotations")
            seq = self._bump(conn, dataset.id)
            conn.execute(sa.update(items).where(items.c.id == old.id).values(removed_seq=seq))
            row = item_row(
                dataset.id,
                PreparedItem(0, "item", item_id, current.image, split, attributes, lineage, new_annotations, file_name, digest),
                seq,
                old.create_time,
                now,
            )
            rows = annotation_rows(dataset.id, 0, new_annotations)
            row["encoded_item"] = encoded_item(dataset_id, row, rows)
            (pk,) = self._insert_items(conn, [row])
            if changes.annotations is None:
                columns = [c.name for c in annotations.columns if c.name not in ("id", "item_row")]
                copy = sa.select(sa.literal(pk).label("item_row"), *(annotations.c[name] for name in columns)).where(
                    annotations.c.item_row == old.id
                )
                conn.execute(sa.insert(annotations).from_select(["item_row", *columns], copy))
            else:
                for annotation_row in rows:
                    annotation_row["item_row"] = pk
                if rows:
                    conn.execute(annotations.insert(), rows)
                conn.execute(
                    sa.update(datasets).where(datasets.c.id == dataset.id).values(
                        annotation_count=datasets.c.annotation_count - old.annotation_count + len(rows)
                    )
                )
        return self.get_item(dataset_id, item_id, full=False)

    def delete_item(self, dataset_id: str, item_id: str) -> None:
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            old = self._live_item_row(conn, dataset, item_id)
            seq = self._bump(conn, dataset.id)
            conn.execute(sa.update(items).where(items.c.id == old.id).values(removed_seq=seq))
            conn.execute(
                sa.update(datasets).where(datasets.c.id == dataset.id).values(
                    item_count=datasets.c.item_count - 1, annotation_count=datasets.c.annotation_count - old.annotation_count
                )
            )

    def delete_items(self, dataset_id: str, item_ids: Sequence[str]) -> int:
        """Remove items from the working state in one transaction; ids not there are ignored. How many went."""
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            found: list[Row[Any]] = []
            for chunk in _chunks(list(dict.fromkeys(item_ids))):
                found.extend(
                    conn.execute(
                        sa.select(items.c.id, items.c.annotation_count).where(
                            items.c.dataset == dataset.id, items.c.removed_seq.is_(None), items.c.item_id.in_(chunk)
                        )
                    ).all()
                )
            if not found:
                return 0
            seq = self._bump(conn, dataset.id)
            for chunk in _chunks([row.id for row in found]):
                conn.execute(sa.update(items).where(items.c.id.in_(chunk)).values(removed_seq=seq))
            conn.execute(
                sa.update(datasets).where(datasets.c.id == dataset.id).values(
                    item_count=datasets.c.item_count - len(found),
                    annotation_count=datasets.c.annotation_count - sum(int(row.annotation_count) for row in found),
                )
            )
            return len(found)

    @staticmethod
    def _live_item_row(conn: Connection, dataset: Row[Any], item_id: str) -> Row[Any]:
        row = conn.execute(
            sa.select(items).where(items.c.dataset == dataset.id, items.c.item_id == item_id, items.c.removed_seq.is_(None))
        ).first()
        if row is None:
            raise _item_not_found(dataset.dataset_id, item_id, 0)
        return row

    # ------------------------------------------------------------------
    # items: reads
    # ------------------------------------------------------------------
    def get_item(self, dataset_id: str, item_id: str, *, version: str | int | None = None, full: bool = True) -> ItemRecord:
        with self.engine.connect() as conn:
            dataset, seq, number = self._state(conn, dataset_id, version)
            row = conn.execute(
                sa.select(*ITEM_COLUMNS).where(items.c.dataset == dataset.id, items.c.item_id == item_id, queries.visible(items, seq))
            ).first()
            if row is None:
                raise _item_not_found(dataset_id, item_id, number)
            (record,) = self._records(conn, dataset_id, number, [row])
        return self.with_pixel_data(record) if full else record

    def _records(self, conn: Connection, dataset_id: str, version: int, rows: Sequence[Row[Any]]) -> list[ItemRecord]:
        by_row: dict[int, list[Annotation]] = {row.id: [] for row in rows}
        for chunk in _chunks([row.id for row in rows if row.annotation_count]):
            result = conn.execute(
                sa.select(*ANNOTATION_COLUMNS)
                .where(annotations.c.item_row.in_(chunk))
                .order_by(annotations.c.item_row, annotations.c.position)
            )
            for a in result:
                by_row[a.item_row].append(annotation_of(a))
        return [item_of(dataset_id, version, row, tuple(by_row[row.id])) for row in rows]

    def with_pixel_data(self, record: ItemRecord) -> ItemRecord:
        """The record with the pixel maps' tensor data read from their blobs."""
        if not any(isinstance(a.geometry, PixelMap) for a in record.annotations):
            return record
        loaded = []
        for annotation in record.annotations:
            geometry = annotation.geometry
            if isinstance(geometry, PixelMap):
                annotation = dataclasses.replace(annotation, geometry=dataclasses.replace(geometry, data=self.blobs.read(geometry.sha256)))
            loaded.append(annotation)
        return dataclasses.replace(record, annotations=tuple(loaded))

    def read_image(self, record: ItemRecord) -> bytes:
        return self.blobs.read(record.image.sha256)

    def read_full(self, records: Sequence[ItemRecord]) -> list[tuple[ItemRecord, bytes]]:
        """Each record with its pixel-map data and its image bytes, read in parallel (S3 round trips overlap)."""
        return self._read_each(lambda record: (self.with_pixel_data(record), self.read_image(record)), records)

    def read_stream_entries(self, entries: Sequence[EncodedItem | ItemRecord]) -> list[tuple[EncodedItem | ItemRecord, bytes]]:
        """``read_full`` for the entries of ``stream_page``: an encoded item needs its image bytes only."""

        def one(entry: EncodedItem | ItemRecord) -> tuple[EncodedItem | ItemRecord, bytes]:
            if isinstance(entry, EncodedItem):
                return entry, self.blobs.read(entry.image_sha256)
            return self.with_pixel_data(entry), self.read_image(entry)

        return self._read_each(one, entries)

    def _read_each(self, read: Callable[[T], tuple[T, bytes]], entries: Sequence[T]) -> list[tuple[T, bytes]]:
        def chunk(part: Sequence[T]) -> list[tuple[T, bytes]]:
            return [read(entry) for entry in part]

        # A few sequential runs side by side: enough to overlap S3 round trips, few enough
        # that thread hand-offs do not cost more than the reads of small files.
        runs = min(self._read_threads, max(1, len(entries) // 8))
        if runs == 1:
            return chunk(entries)
        parts = [entries[i::runs] for i in range(runs)]
        loaded = list(self._readers.map(chunk, parts))
        out: list[tuple[T, bytes]] = [None] * len(entries)  # type: ignore[list-item]
        for i, part in enumerate(loaded):
            out[i::runs] = part
        return out

    def close(self) -> None:
        """Stop the blob reader threads (the engine and object store belong to the caller)."""
        self._readers.shutdown(wait=True, cancel_futures=True)

    def _item_query(
        self, conn: Connection, dataset_id: str, version: str | int | None, filter: str, columns: Sequence[Any] = ITEM_COLUMNS
    ) -> tuple[Row[Any], int | None, int, sa.Select[Any]]:
        dataset, seq, number = self._state(conn, dataset_id, version)
        # Only a filter can name categories: an unfiltered read (every page of a stream) skips that query.
        categories = self._categories(conn, dataset.id, seq) if filter.strip() else ()
        condition = queries.item_filter(filter, dataset.id, categories)
        statement = sa.select(*columns).where(items.c.dataset == dataset.id, queries.visible(items, seq), condition)
        return dataset, seq, number, statement

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
        """One page of items; the token is bound to the state, filter and order."""
        size = pagination.page_size_of(page_size)
        keys = queries.parse_order_by(order_by, ITEM_ORDER_COLUMNS, "item_id")
        with self.engine.connect() as conn:
            dataset, _, number, statement = self._item_query(conn, dataset_id, version, filter)
            page = PageRequest.parse(
                size, page_token,
                pagination.fingerprint(
                    rpc="ListItems", dataset=dataset_id, created=dataset.create_time, version=number, filter=filter,
                    order_by=[(k.name, k.descending) for k in keys],
                ),
                validate=pagination.values_of(*(_ITEM_ORDER_TYPES[k.name] for k in keys)),
            )
            if not page.first:
                statement = statement.where(queries.after(keys, page.cursor))
            rows = conn.execute(statement.order_by(*queries.order_clauses(keys)).limit(size + 1)).all()
            rows, token = page.finish(rows, lambda last: [getattr(last, k.name) for k in keys])
            records = self._records(conn, dataset_id, number, rows)
        if full:
            records = [self.with_pixel_data(r) for r in records]
        return Page(records, token)

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
        """Every item of a state in item_id order, read page by page (``version`` "latest" is resolved once)."""
        if version == "latest":
            version = self.resolve_version(dataset_id, "latest").version
        last = after_item_id
        while True:
            page = self.item_page(
                dataset_id, version, filter=filter, after_item_id=last, shard_index=shard_index,
                shard_count=shard_count, limit=page_size,
            )
            for record in page:
                yield self.with_pixel_data(record) if full else record
            if len(page) < page_size:
                return
            last = page[-1].item_id

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
        """Up to ``limit`` items after ``after_item_id`` in item_id order (pixel data not loaded)."""
        with self.engine.connect() as conn:
            number, rows = self._page_rows(conn, dataset_id, version, filter, after_item_id, shard_index, shard_count, limit, ITEM_COLUMNS)
            return self._records(conn, dataset_id, number, rows)

    def _page_rows(
        self, conn: Connection, dataset_id: str, version: str | int | None, filter: str,
        after_item_id: str, shard_index: int, shard_count: int, limit: int, columns: Sequence[Any],
    ) -> tuple[int, list[Row[Any]]]:
        """The version number read and up to ``limit`` rows after ``after_item_id`` of a shard, in item_id order."""
        _, _, number, statement = self._item_query(conn, dataset_id, version, filter, columns)
        if after_item_id:
            statement = statement.where(items.c.item_id > after_item_id)
        if shard_count > 1:
            statement = statement.where(items.c.shard_hash % shard_count == shard_index)
        return number, conn.execute(statement.order_by(items.c.item_id).limit(limit)).all()

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
        """``item_page`` for streams: the items whose rows hold a current encoding come as ``EncodedItem``
        (nothing decoded), the others (pixel maps, rows older than the encoding) as records."""
        with self.engine.connect() as conn:
            number, rows = self._page_rows(conn, dataset_id, version, filter, after_item_id, shard_index, shard_count, limit, _STREAM_COLUMNS)
            usable = convert.is_current_encoding
            others = [row.id for row in rows if not usable(row.encoded_item)]
            if not others:
                return [EncodedItem(*row[1:]) for row in rows]
            records: dict[int, ItemRecord] = {}
            for chunk in _chunks(others):
                full_rows = conn.execute(sa.select(*ITEM_COLUMNS).where(items.c.id.in_(chunk))).all()
                records.update(zip((row.id for row in full_rows), self._records(conn, dataset_id, number, full_rows)))
        return [records[row.id] if row.id in records else EncodedItem(*row[1:]) for row in rows]

    def count_items(self, dataset_id: str, version: str | int | None = None, filter: str = "") -> int:
        with self.engine.connect() as conn:
            _, _, _, statement = self._item_query(conn, dataset_id, version, filter)
            return int(conn.execute(sa.select(sa.func.count()).select_from(statement.subquery())).scalar_one())

    # ------------------------------------------------------------------
    # versions
    # ------------------------------------------------------------------
    def commit_version(self, dataset_id: str, description: str = "") -> tuple[VersionRecord, bool]:
        """Freeze the working state as the next version; ``(latest, False)`` when its content is the latest's.

        Refused (FAILED_PRECONDITION, IMPORT_IN_PROGRESS) while an import job
        of the dataset is unfinished: an import writes its chunks in separate
        transactions and removes them again if it stops, so a version made in
        between would freeze a partial import. The job row exists (QUEUED)
        from its creation and leaves the unfinished states only after the
        job's undo, and the check runs under this transaction's dataset lock,
        which every chunk write and every job creation also takes: no import
        can write or start between the check and the version row.
        """
        _check_text(description, "description", MAX_DESCRIPTION, multiline=True)
        with transaction(self.engine) as conn:
            dataset = self._dataset_row(conn, dataset_id, lock=True)
            self._check_no_import_running(conn, dataset)
            latest = None
            if dataset.latest_version:
                latest = self._version_row(conn, dataset, dataset.latest_version)
                if latest.seq == dataset.seq:
                    return version_of(dataset_id, latest), False
            digest = self._content_digest(conn, dataset.id, dataset.seq)
            if latest is not None and latest.content_sha256 == digest:
                # Written and undone again (an import that failed or was cancelled, an edit
                # reverted): the same content is the same version.
                return version_of(dataset_id, latest), False
            number = dataset.latest_version + 1
            values = {
                "dataset": dataset.id, "version": number, "seq": dataset.seq, "description": description,
                "create_time": utcnow(), "item_count": dataset.item_count,
                "annotation_count": dataset.annotation_count, "content_sha256": digest,
            }
            conn.execute(versions.insert().values(values))
            conn.execute(sa.update(datasets).where(datasets.c.id == dataset.id).values(latest_version=number))
            row = conn.execute(sa.select(versions).where(versions.c.dataset == dataset.id, versions.c.version == number)).one()
            return version_of(dataset_id, row), True

    @staticmethod
    def _check_no_import_running(conn: Connection, dataset: Row[Any]) -> None:
        # Imports never pause, so QUEUED, RUNNING and CANCELLING are the unfinished states. A job
        # whose runner died stays RUNNING until another runner takes it over and discards its writes.
        running = conn.execute(
            sa.select(jobs.c.job_id)
            .where(jobs.c.parent == f"datasets/{dataset.dataset_id}", jobs.c.kind == "import", jobs.c.state.in_(list(ACTIVE_JOB_STATES)))
            .order_by(jobs.c.create_time, jobs.c.job_id)
            .limit(1)
        ).scalar()
        if running is not None:
            job = f"datasets/{dataset.dataset_id}/importJobs/{running}"
            raise errors.FailedPrecondition(
                "IMPORT_IN_PROGRESS",
                f"dataset {dataset.dataset_id!r} has an unfinished import ({job}); a version made now could hold part "
                "of it: commit once the job has ended (WatchImportJob), or cancel it",
                {"dataset": f"datasets/{dataset.dataset_id}", "job": job},
            )

    def _content_digest(self, conn: Connection, dataset_pk: int, seq: int) -> str:
        """sha256 over the state's categories and (item id, item content digest) pairs, in order."""
        digest = hashlib.sha256(b"simulacra.annotation.version.v1\n")
        for category in self._categories(conn, dataset_pk, seq):
            digest.update(codec.canonical_json(category_json(category)) + b"\n")
        rows = conn.execute(
            sa.select(items.c.item_id, items.c.content_sha256)
            .where(items.c.dataset == dataset_pk, queries.visible(items, seq))
            .order_by(items.c.item_id)
        )
        for row in rows:
            digest.update(f"{row.item_id} {row.content_sha256}\n".encode())
        return digest.hexdigest()

    def resolve_version(self, dataset_id: str, version: str | int) -> VersionRecord:
        """A version by number or "latest"; VERSION_NOT_FOUND when absent."""
        with self.engine.connect() as conn:
            dataset = self._dataset_row(conn, dataset_id)
            return version_of(dataset_id, self._version_row(conn, dataset, version))

    get_version = resolve_version

    def list_versions(self, dataset_id: str, *, page_size: int = 0, page_token: str = "") -> Page:
        size = pagination.page_size_of(page_size)
        with self.engine.connect() as conn:
            dataset = self._dataset_row(conn, dataset_id)
            page = PageRequest.parse(
                size, page_token, pagination.fingerprint(rpc="ListVersions", dataset=dataset_id, created=dataset.create_time),
                validate=pagination.values_of(pagination.is_int),
            )
            statement = sa.select(versions).where(versions.c.dataset == dataset.id)
            if not page.first:
                statement = statement.where(versions.c.version < page.cursor[0])
            rows = conn.execute(statement.order_by(versions.c.version.desc()).limit(size + 1)).all()
        rows, token = page.finish(rows, lambda last: [last.version])
        return Page([version_of(dataset_id, row) for row in rows], token)

    # ------------------------------------------------------------------
    # statistics
    # ------------------------------------------------------------------
    def statistics(self, dataset_id: str, version: str | int | None = None, *, filter: str = "") -> Statistics:
        with self.engine.connect() as conn:
            dataset, seq, _, statement = self._item_query(conn, dataset_id, version, filter)
            return compute_statistics(conn, statement.subquery(), self._categories(conn, dataset.id, seq))


def _dataset_column(order_name: str) -> str:
    return "dataset_id" if order_name == "name" else order_name


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _check_text(value: str, field: str, limit: int, *, multiline: bool = False) -> None:
    text = value.replace("\n", "").replace("\t", "") if multiline else value
    if len(value) > limit or not text.isprintable():
        raise errors.InvalidArgument(
            "INVALID_TEXT",
            f"{field}: at most {limit} printable characters, got {len(value)}",
            {"field": field, "limit": limit, "length": len(value)},
        )


def _dataset_exists(dataset_id: str) -> errors.SimulacraError:
    return errors.AlreadyExists(
        "DATASET_ALREADY_EXISTS",
        f"dataset {dataset_id!r} already exists; choose another id or delete it first",
        {"dataset": f"datasets/{dataset_id}", "field": "dataset_id"},
    )


def _item_not_found(dataset_id: str, item_id: str, version: int) -> errors.SimulacraError:
    where = f"version {version} of dataset {dataset_id!r}" if version else f"the working state of dataset {dataset_id!r}"
    return errors.NotFound(
        "ITEM_NOT_FOUND",
        f"{where} has no item {item_id!r}",
        {"item": f"datasets/{dataset_id}/items/{item_id}", "version": version},
    )


def _etag_mismatch(dataset_id: str, item_id: str, given: str, current: str) -> errors.SimulacraError:
    return errors.Aborted(
        "ETAG_MISMATCH",
        f"item {item_id!r} changed since it was read (etag {given!r}, now {current!r}); read it again and reapply the change",
        {"item": f"datasets/{dataset_id}/items/{item_id}", "etag": current},
    )


def _check_categories_still_exist(annotations_: Iterable[Annotation], live: set[int], path: str) -> None:
    """Categories may be deleted between validation and the write transaction: look again inside it."""
    for index, annotation in enumerate(annotations_):
        if annotation.category_id and annotation.category_id not in live:
            raise errors.InvalidArgument(
                "UNKNOWN_CATEGORY",
                f"{path}[{index}].category_id: category {annotation.category_id} does not exist in the dataset (any more)",
                {"field": f"{path}[{index}].category_id", "category_id": annotation.category_id},
            )


def _assign_category_ids(wanted: Sequence[Category]) -> list[Category]:
    taken = {c.category_id for c in wanted if c.category_id}
    next_id = max(taken, default=0)
    out = []
    for category in wanted:
        if category.category_id == 0:
            next_id += 1
            while next_id in taken:
                next_id += 1
            category = dataclasses.replace(category, category_id=next_id)
        out.append(category)
    return out
