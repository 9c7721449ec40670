"""Items read at any state: one item, pages (ListItems order and tokens), item_id pages, stream pages, counts."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row

from simulacra_services.annotation.domain.model import Annotation
from simulacra_services.annotation.domain.records import ItemRecord, ItemSlice, Page
from simulacra_services.annotation.persistence import queries
from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.content import ItemContent
from simulacra_services.annotation.persistence.row_codec import (
    ANNOTATION_COLUMNS,
    ITEM_COLUMNS,
    NO_ENCODING,
    EncodedItem,
    ItemEncoding,
    annotation_of,
    item_of,
)
from simulacra_services.annotation.persistence.tables import annotations, items
from simulacra_services.core.api import pagination
from simulacra_services.core.api.pagination import PageRequest

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
# The row id, then the fields of an EncodedItem in their order.
_STREAM_COLUMNS = (items.c.id, items.c.item_id, items.c.image_sha256, items.c.size_bytes, items.c.encoded_item)


class ItemReader:
    """Reads of ``items`` and their ``annotations``; pixel data and images come from ``content``.

    ``encoding``: what the stored item encodings are (the API's; see ``row_codec.ItemEncoding``),
    used by stream pages and, through the writer, by every write.
    """

    def __init__(self, engine: Engine, content: ItemContent, *, encoding: ItemEncoding = NO_ENCODING) -> None:
        self.engine = engine
        self.content = content
        self.encoding = encoding

    def get(self, dataset_id: str, item_id: str, *, version: str | int | None = None, full: bool = True) -> ItemRecord:
        with self.engine.connect() as conn:
            dataset, seq, number = rows.state(conn, dataset_id, version)
            row = conn.execute(
                sa.select(*ITEM_COLUMNS).where(items.c.dataset == dataset.id, items.c.item_id == item_id, queries.visible(items, seq))
            ).first()
            if row is None:
                raise rows.item_not_found(dataset_id, item_id, number)
            (record,) = records_of(conn, dataset_id, number, [row])
        return self.content.with_pixel_data(record) if full else record

    def list(
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
            dataset, _, number, statement = item_query(conn, dataset_id, version, filter)
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
            found = conn.execute(statement.order_by(*queries.order_clauses(keys)).limit(size + 1)).all()
            found, token = page.finish(found, lambda last: [getattr(last, k.name) for k in keys])
            records = records_of(conn, dataset_id, number, found)
        if full:
            records = [self.content.with_pixel_data(r) for r in records]
        return Page(records, token)

    def iter(
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
            with self.engine.connect() as conn:
                version = int(rows.version_row(conn, rows.dataset_row(conn, dataset_id), "latest").version)
        where = ItemSlice(filter, after_item_id, shard_index, shard_count)
        while True:
            page = self.page(dataset_id, version, where, limit=page_size)
            for record in page:
                yield self.content.with_pixel_data(record) if full else record
            if len(page) < page_size:
                return
            where = dataclasses.replace(where, after_item_id=page[-1].item_id)

    def page(self, dataset_id: str, version: str | int | None, where: ItemSlice, *, limit: int = 256) -> list[ItemRecord]:
        """Up to ``limit`` items of the slice, in item_id order (pixel data not loaded)."""
        with self.engine.connect() as conn:
            number, found = _page_rows(conn, dataset_id, version, where, limit, ITEM_COLUMNS)
            return records_of(conn, dataset_id, number, found)

    def stream_page(self, dataset_id: str, version: str | int | None, where: ItemSlice, *, limit: int = 256) -> list[EncodedItem | ItemRecord]:
        """``page`` for streams: the items whose rows hold a current encoding come as ``EncodedItem``
        (nothing decoded), the others (pixel maps, rows older than the encoding) as records."""
        with self.engine.connect() as conn:
            number, found = _page_rows(conn, dataset_id, version, where, limit, _STREAM_COLUMNS)
            usable = self.encoding.is_current
            others = [row.id for row in found if not usable(row.encoded_item)]
            if not others:
                return [EncodedItem(*row[1:]) for row in found]
            records: dict[int, ItemRecord] = {}
            for chunk in rows.chunks(others):
                full_rows = conn.execute(sa.select(*ITEM_COLUMNS).where(items.c.id.in_(chunk))).all()
                records.update(zip((row.id for row in full_rows), records_of(conn, dataset_id, number, full_rows)))
        return [records[row.id] if row.id in records else EncodedItem(*row[1:]) for row in found]

    def count(self, dataset_id: str, version: str | int | None = None, filter: str = "") -> int:
        with self.engine.connect() as conn:
            _, _, _, statement = item_query(conn, dataset_id, version, filter)
            return int(conn.execute(sa.select(sa.func.count()).select_from(statement.subquery())).scalar_one())


def item_query(
    conn: Connection, dataset_id: str, version: str | int | None, filter: str, columns: Sequence[Any] = ITEM_COLUMNS
) -> tuple[Row[Any], int | None, int, sa.Select[Any]]:
    """The dataset row, the sequence and version number read, and the select of the state's items matching ``filter``."""
    dataset, seq, number = rows.state(conn, dataset_id, version)
    # Only a filter can name categories: an unfiltered read (every page of a stream) skips that query.
    categories = rows.categories_at(conn, dataset.id, seq) if filter.strip() else ()
    condition = queries.item_filter(filter, dataset.id, categories)
    statement = sa.select(*columns).where(items.c.dataset == dataset.id, queries.visible(items, seq), condition)
    return dataset, seq, number, statement


def records_of(conn: Connection, dataset_id: str, version: int, found: Sequence[Row[Any]]) -> list[ItemRecord]:
    """Records of item rows with their annotations (pixel data not loaded)."""
    by_row: dict[int, list[Annotation]] = {row.id: [] for row in found}
    for chunk in rows.chunks([row.id for row in found if row.annotation_count]):
        result = conn.execute(
            sa.select(*ANNOTATION_COLUMNS)
            .where(annotations.c.item_row.in_(chunk))
            .order_by(annotations.c.item_row, annotations.c.position)
        )
        for a in result:
            by_row[a.item_row].append(annotation_of(a))
    return [item_of(dataset_id, version, row, tuple(by_row[row.id])) for row in found]


def _page_rows(
    conn: Connection, dataset_id: str, version: str | int | None, where: ItemSlice, limit: int, columns: Sequence[Any]
) -> tuple[int, list[Row[Any]]]:
    """The version number read and up to ``limit`` rows of the slice, in item_id order."""
    _, _, number, statement = item_query(conn, dataset_id, version, where.filter, columns)
    if where.after_item_id:
        statement = statement.where(items.c.item_id > where.after_item_id)
    if where.shard_count > 1:
        statement = statement.where(items.c.shard_hash % where.shard_count == where.shard_index)
    return number, list(conn.execute(statement.order_by(items.c.item_id).limit(limit)).all())
