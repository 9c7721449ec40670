"""Items written to the working state: prepared batches (all or none), replays, updates and deletes.

Every write runs in one transaction that first takes the dataset's row lock
and next sequence number (``rows.bump``); replaced and deleted rows get a
``removed_seq``, so committed versions keep reading them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from simulacra_services.annotation.domain import identifiers
from simulacra_services.annotation.domain.model import BoxBoundsPolicy, Category
from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.blobs import BlobStore
from simulacra_services.annotation.persistence.categories import create_missing
from simulacra_services.annotation.persistence.item_reads import ItemReader
from simulacra_services.annotation.domain.prepare import (
    MAX_ITEMS_PER_BATCH,
    PreparedItem,
    check_annotations,
    check_lineage,
    check_request_id,
    content_digest,
    prepare,
    store_blobs,
)
from simulacra_services.annotation.domain.records import BatchResult, ItemChanges, ItemRecord, NewItem
from simulacra_services.annotation.persistence.row_codec import annotation_rows, encoded_item, item_row, row_etag
from simulacra_services.annotation.persistence.tables import annotations, datasets, items
from simulacra_services.core import errors
from simulacra_services.core.budget import PixelBudget
from simulacra_services.core.db import transaction, utcnow


class ItemWriter:
    """Writes of ``items`` and their ``annotations`` (blobs are stored before the transaction)."""

    def __init__(
        self, engine: Engine, blobs: BlobStore, reader: ItemReader, *, max_image_pixels: int, decode_budget: PixelBudget | None
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.reader = reader
        # The server's image size limit (setting max_image_pixels): every image written is checked against it.
        self.max_image_pixels = max_image_pixels
        # Pixels decoded at once by all uploads and imports (setting decode_budget_pixels).
        self.decode_budget = decode_budget

    def prepare(
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
        categories just before it commits); ``commit`` checks again that
        every category used exists by then. Prepared items hold no image bytes.
        """
        with self.engine.connect() as conn:
            dataset = rows.dataset_row(conn, dataset_id)
            known = {c.category_id: c for c in rows.categories_at(conn, dataset.id, None)}
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
            dataset = rows.dataset_row(conn, dataset_id)
            response = rows.recorded(conn, dataset, scope, request_id, payload_digest)
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
        prepared = self.prepare_batch(dataset_id, new_items, policy=policy, path=path)
        return self.commit(dataset_id, prepared, request_id=request_id, payload_digest=payload_digest)

    def prepare_batch(
        self,
        dataset_id: str,
        new_items: Sequence[NewItem],
        *,
        policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT,
        path: str = "items",
        extra_categories: Sequence[Category] = (),
    ) -> list[PreparedItem]:
        """``prepare`` of one uploaded batch (of the working state or of a staging, whose categories
        are ``extra_categories``): at most ``MAX_ITEMS_PER_BATCH`` items (TOO_MANY_ITEMS)."""
        if len(new_items) > MAX_ITEMS_PER_BATCH:
            raise errors.InvalidArgument(
                "TOO_MANY_ITEMS",
                f"{path}: {len(new_items)} items in one batch, at most {MAX_ITEMS_PER_BATCH}",
                {"field": path, "count": len(new_items), "limit": MAX_ITEMS_PER_BATCH},
            )
        return self.prepare(dataset_id, new_items, policy=policy, path=path, extra_categories=extra_categories)

    def commit(
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
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
            if request_id:
                response = rows.recorded(conn, dataset, scope, request_id, payload_digest)
                if response is not None:
                    return BatchResult(list(response["item_ids"]), True)
            created = [c.category_id for c in create_missing(conn, dataset, categories)] if categories else []
            if not prepared:  # no items: no new sequence number unless categories were created
                if request_id:
                    rows.record_request(
                        conn, dataset, scope, request_id, payload_digest, {"item_ids": [], "category_ids": created}
                    )
                return BatchResult([], False)
            live_categories = {c.category_id for c in rows.categories_at(conn, dataset.id, None)}
            for item in prepared:
                rows.check_categories_still_exist(item.annotations, live_categories, f"{item.path}.annotations")
            _check_new_ids(conn, dataset, prepared)
            seq = rows.bump(conn, dataset.id)
            item_rows = [item_row(dataset.id, item, seq, now, now) for item in prepared]
            rows_per_item = [annotation_rows(dataset.id, 0, item.annotations) for item in prepared]
            for row, rows_of_item in zip(item_rows, rows_per_item):
                row["encoded_item"] = encoded_item(dataset_id, row, rows_of_item, self.reader.encoding)
            pks = rows.insert_items(conn, item_rows)
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
                rows.record_request(
                    conn, dataset, scope, request_id, payload_digest, {"item_ids": item_ids, "category_ids": created}
                )
            return BatchResult(item_ids, False)

    def update(
        self,
        dataset_id: str,
        item_id: str,
        changes: ItemChanges,
        *,
        etag: str = "",
        policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT,
    ) -> ItemRecord:
        """Replace the item's row by a changed copy; committed versions keep the old row."""
        current = self.reader.get(dataset_id, item_id, full=False)
        if etag and etag != current.etag:
            raise _etag_mismatch(dataset_id, item_id, etag, current.etag)
        split = current.split if changes.split is None else identifiers.normalize_split(changes.split, "item.split")
        attributes = current.attributes
        if changes.attributes is not None:
            identifiers.validate_attributes(changes.attributes, "item.attributes")
            attributes = dict(sorted(changes.attributes.items()))
        file_name = current.file_name
        if changes.file_name is not None:
            if changes.file_name:
                identifiers.validate_relative_path(changes.file_name, "item.file_name")
            file_name = changes.file_name
        lineage = current.lineage if changes.lineage is None else check_lineage(changes.lineage, "item.lineage")
        new_annotations = current.annotations
        if changes.annotations is not None:
            with self.engine.connect() as conn:
                dataset, _, _ = rows.state(conn, dataset_id, None)
                known = {c.category_id: c for c in rows.categories_at(conn, dataset.id, None)}
            pending: dict[str, bytes] = {}
            new_annotations = check_annotations(
                changes.annotations, current.image, known, policy, "item.annotations", pending, self.blobs
            )
            store_blobs(self.blobs, list(pending.values()))
        digest = content_digest(item_id, current.image, split, attributes, lineage, new_annotations, file_name)
        now = utcnow()
        with transaction(self.engine) as conn:
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
            old = _live_item_row(conn, dataset, item_id)
            if row_etag(old) != current.etag:  # changed since we read it
                if etag:
                    raise _etag_mismatch(dataset_id, item_id, etag, row_etag(old))
                raise errors.Aborted(
                    "CONCURRENT_UPDATE",
                    f"item {item_id!r} changed while this update was being prepared; retry",
                    {"item": f"datasets/{dataset_id}/items/{item_id}"},
                )
            if changes.annotations is not None:
                live_categories = {c.category_id for c in rows.categories_at(conn, dataset.id, None)}
                rows.check_categories_still_exist(new_annotations, live_categories, "item.annotations")
            seq = rows.bump(conn, dataset.id)
            conn.execute(sa.update(items).where(items.c.id == old.id).values(removed_seq=seq))
            row = item_row(
                dataset.id,
                PreparedItem(
                    index=0, path="item", item_id=item_id, image=current.image, split=split, attributes=attributes,
                    lineage=lineage, annotations=new_annotations, file_name=file_name, content_sha256=digest,
                ),
                seq,
                old.create_time,
                now,
            )
            new_rows = annotation_rows(dataset.id, 0, new_annotations)
            row["encoded_item"] = encoded_item(dataset_id, row, new_rows, self.reader.encoding)
            (pk,) = rows.insert_items(conn, [row])
            if changes.annotations is None:
                columns = [c.name for c in annotations.columns if c.name not in ("id", "item_row")]
                copy = sa.select(sa.literal(pk).label("item_row"), *(annotations.c[name] for name in columns)).where(
                    annotations.c.item_row == old.id
                )
                conn.execute(sa.insert(annotations).from_select(["item_row", *columns], copy))
            else:
                for annotation_row in new_rows:
                    annotation_row["item_row"] = pk
                if new_rows:
                    conn.execute(annotations.insert(), new_rows)
                conn.execute(
                    sa.update(datasets).where(datasets.c.id == dataset.id).values(
                        annotation_count=datasets.c.annotation_count - old.annotation_count + len(new_rows)
                    )
                )
        return self.reader.get(dataset_id, item_id, full=False)

    def delete(self, dataset_id: str, item_id: str) -> None:
        with transaction(self.engine) as conn:
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
            old = _live_item_row(conn, dataset, item_id)
            seq = rows.bump(conn, dataset.id)
            conn.execute(sa.update(items).where(items.c.id == old.id).values(removed_seq=seq))
            conn.execute(
                sa.update(datasets).where(datasets.c.id == dataset.id).values(
                    item_count=datasets.c.item_count - 1, annotation_count=datasets.c.annotation_count - old.annotation_count
                )
            )

    def delete_many(self, dataset_id: str, item_ids: Sequence[str]) -> int:
        """Remove items from the working state in one transaction; ids not there are ignored. How many went."""
        with transaction(self.engine) as conn:
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
            found: list[Row[Any]] = []
            for chunk in rows.chunks(list(dict.fromkeys(item_ids))):
                found.extend(
                    conn.execute(
                        sa.select(items.c.id, items.c.annotation_count).where(
                            items.c.dataset == dataset.id, items.c.removed_seq.is_(None), items.c.item_id.in_(chunk)
                        )
                    ).all()
                )
            if not found:
                return 0
            seq = rows.bump(conn, dataset.id)
            for chunk in rows.chunks([row.id for row in found]):
                conn.execute(sa.update(items).where(items.c.id.in_(chunk)).values(removed_seq=seq))
            conn.execute(
                sa.update(datasets).where(datasets.c.id == dataset.id).values(
                    item_count=datasets.c.item_count - len(found),
                    annotation_count=datasets.c.annotation_count - sum(int(row.annotation_count) for row in found),
                )
            )
            return len(found)


def _check_new_ids(conn: Connection, dataset: Row[Any], prepared: Sequence[PreparedItem]) -> None:
    by_id = {item.item_id: item for item in prepared}
    for chunk in rows.chunks(list(by_id)):
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


def _live_item_row(conn: Connection, dataset: Row[Any], item_id: str) -> Row[Any]:
    row = conn.execute(
        sa.select(items).where(items.c.dataset == dataset.id, items.c.item_id == item_id, items.c.removed_seq.is_(None))
    ).first()
    if row is None:
        raise rows.item_not_found(dataset.dataset_id, item_id, 0)
    return row


def _etag_mismatch(dataset_id: str, item_id: str, given: str, current: str) -> errors.SimulacraError:
    return errors.Aborted(
        "ETAG_MISMATCH",
        f"item {item_id!r} changed since it was read (etag {given!r}, now {current!r}); read it again and reapply the change",
        {"item": f"datasets/{dataset_id}/items/{item_id}", "etag": current},
    )
