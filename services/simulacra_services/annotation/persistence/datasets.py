"""Datasets: create, read, list (filter, order, pages) and delete with everything in them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import IntegrityError

from simulacra_services.annotation.domain import filters as filter_syntax
from simulacra_services.annotation.domain import identifiers
from simulacra_services.annotation.domain.model import Category
from simulacra_services.annotation.domain.records import DatasetRecord, Page
from simulacra_services.annotation.persistence import queries
from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.row_codec import category_row, dataset_of
from simulacra_services.annotation.persistence.rows import MAX_DESCRIPTION, MAX_DISPLAY_NAME
from simulacra_services.annotation.persistence.tables import annotations, datasets, items, jobs, request_scope, versions
from simulacra_services.annotation.persistence.tables import categories as categories_table
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.pagination import PageRequest
from simulacra_services.core.db import idempotency, transaction, utcnow

MAX_CATEGORIES_PER_CREATE = 10_000

DATASET_FILTER_FIELDS = {
    "display_name": filter_syntax.FieldSpec(filter_syntax.FieldType.STRING),
    "labels": filter_syntax.FieldSpec(filter_syntax.FieldType.MAP),
    "create_time": filter_syntax.FieldSpec(filter_syntax.FieldType.TIMESTAMP),
    "update_time": filter_syntax.FieldSpec(filter_syntax.FieldType.TIMESTAMP),
    "item_count": filter_syntax.FieldSpec(filter_syntax.FieldType.INTEGER),
    "latest_version": filter_syntax.FieldSpec(filter_syntax.FieldType.INTEGER),
}
DATASET_ORDER_COLUMNS = {"name": datasets.c.dataset_id, "create_time": datasets.c.create_time, "update_time": datasets.c.update_time}
_DATASET_ORDER_TYPES = {"name": pagination.is_str, "create_time": pagination.is_time, "update_time": pagination.is_time}


class DatasetRepository:
    """The rows of ``datasets`` and, on delete, everything that hangs off them."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(
        self,
        dataset_id: str,
        *,
        display_name: str = "",
        description: str = "",
        labels: Mapping[str, str] | None = None,
        categories: Sequence[Category] = (),
    ) -> DatasetRecord:
        identifiers.validate_dataset_id(dataset_id, "dataset_id")
        rows.check_text(display_name, "dataset.display_name", MAX_DISPLAY_NAME)
        rows.check_text(description, "dataset.description", MAX_DESCRIPTION, multiline=True)
        labels = dict(sorted((labels or {}).items()))
        identifiers.validate_attributes(labels, "dataset.labels")
        if len(categories) > MAX_CATEGORIES_PER_CREATE:
            raise errors.InvalidArgument(
                "TOO_MANY_CATEGORIES",
                f"categories: {len(categories)} given, at most {MAX_CATEGORIES_PER_CREATE}",
                {"field": "categories", "limit": MAX_CATEGORIES_PER_CREATE},
            )
        assigned = _assign_category_ids(categories)
        identifiers.validate_categories(assigned, "categories")
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
                return _records(conn, [rows.dataset_row(conn, dataset_id)])[0]
        except IntegrityError:
            raise _dataset_exists(dataset_id) from None

    def get(self, dataset_id: str) -> DatasetRecord:
        with self.engine.connect() as conn:
            return _records(conn, [rows.dataset_row(conn, dataset_id)])[0]

    def list(self, *, page_size: int = 0, page_token: str = "", filter: str = "", order_by: str = "") -> Page:
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
            found, token = page.finish(conn.execute(statement).all(), lambda last: [getattr(last, _dataset_column(k.name)) for k in keys])
            records = _records(conn, found)
        return Page(records, token)

    def delete(self, dataset_id: str, *, force: bool = False) -> None:
        with transaction(self.engine) as conn:
            dataset = rows.dataset_row(conn, dataset_id, lock=True)
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


def _records(conn: Connection, found: Sequence[Row[Any]]) -> list[DatasetRecord]:
    """Records of dataset rows, with their live category counts (one query for all)."""
    counts: dict[int, int] = {}
    if found:
        counts = dict(
            conn.execute(
                sa.select(categories_table.c.dataset, sa.func.count())
                .where(categories_table.c.dataset.in_([row.id for row in found]), categories_table.c.removed_seq.is_(None))
                .group_by(categories_table.c.dataset)
            ).all()
        )
    return [dataset_of(row, int(counts.get(row.id, 0))) for row in found]


def _dataset_column(order_name: str) -> str:
    return "dataset_id" if order_name == "name" else order_name


def _dataset_exists(dataset_id: str) -> errors.SimulacraError:
    return errors.AlreadyExists(
        "DATASET_ALREADY_EXISTS",
        f"dataset {dataset_id!r} already exists; choose another id or delete it first",
        {"dataset": f"datasets/{dataset_id}", "field": "dataset_id"},
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
