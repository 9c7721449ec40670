"""Row-level helpers every repository of the annotation-store shares.

Each works inside a connection or transaction its caller opened: reading a
dataset's row (optionally under its write lock), taking its next sequence
number, resolving a version, the categories visible at a sequence, request
records, inserting item rows and the content digest of a state. Also the
errors and text checks more than one repository raises. No protobuf here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from simulacra_services.annotation.domain import codec
from simulacra_services.annotation.domain.model import Annotation, Category
from simulacra_services.annotation.persistence import queries
from simulacra_services.annotation.persistence.row_codec import category_json, category_of
from simulacra_services.annotation.persistence.tables import categories as categories_table
from simulacra_services.annotation.persistence.tables import datasets, items, request_scope, versions
from simulacra_services.core import errors
from simulacra_services.core.db import idempotency, utcnow

MAX_DISPLAY_NAME = 256
MAX_DESCRIPTION = 4096
CHUNK = 500  # rows per IN (...) list


def chunks(values: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def dataset_row(conn: Connection, dataset_id: str, *, lock: bool = False) -> Row[Any]:
    """The dataset's row (DATASET_NOT_FOUND when absent); ``lock``: under its row lock (PostgreSQL)."""
    statement = sa.select(datasets).where(datasets.c.dataset_id == dataset_id)
    if lock:
        statement = statement.with_for_update()
    row = conn.execute(statement).first()
    if row is None:
        raise dataset_not_found(dataset_id)
    return row


def bump(conn: Connection, dataset_pk: int) -> int:
    """Take the next sequence number of a dataset (and its write lock on PostgreSQL)."""
    conn.execute(sa.update(datasets).where(datasets.c.id == dataset_pk).values(seq=datasets.c.seq + 1, update_time=utcnow()))
    return int(conn.execute(sa.select(datasets.c.seq).where(datasets.c.id == dataset_pk)).scalar_one())


def version_row(conn: Connection, dataset: Row[Any], version: str | int) -> Row[Any]:
    """A version's row by number or "latest"; VERSION_NOT_FOUND when absent."""
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


def state(conn: Connection, dataset_id: str, version: str | int | None) -> tuple[Row[Any], int | None, int]:
    """The dataset row, the sequence to read at (None: working state) and the version number (0: working)."""
    dataset = dataset_row(conn, dataset_id)
    if version is None or version == 0:
        return dataset, None, 0
    row = version_row(conn, dataset, version)
    return dataset, int(row.seq), int(row.version)


def categories_at(conn: Connection, dataset_pk: int, seq: int | None) -> list[Category]:
    """The categories visible at ``seq`` (None: the working state), by category_id."""
    rows = conn.execute(
        sa.select(categories_table)
        .where(categories_table.c.dataset == dataset_pk, queries.visible(categories_table, seq))
        .order_by(categories_table.c.category_id)
    )
    return [category_of(row) for row in rows]


def record_request(conn: Connection, dataset: Row[Any], scope: str, request_id: str, digest: str, response: Any) -> None:
    idempotency.record_response(conn, request_scope(dataset.dataset_id, scope), request_id, digest, response)


def recorded(conn: Connection, dataset: Row[Any], scope: str, request_id: str, digest: str) -> Any | None:
    """The response first given to ``request_id``; REQUEST_ID_REUSED when the payload differs."""
    return idempotency.recorded_response(conn, request_scope(dataset.dataset_id, scope), request_id, digest)


def insert_items(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert item rows; their primary keys in the order given."""
    if not rows:
        return []
    result = conn.execute(items.insert().returning(items.c.id, sort_by_parameter_order=True), rows)
    return [int(pk) for pk in result.scalars().all()]


def content_digest(conn: Connection, dataset_pk: int, seq: int) -> str:
    """sha256 over the state's categories and (item id, item content digest) pairs, in order."""
    digest = hashlib.sha256(b"simulacra.annotation.version.v1\n")
    for category in categories_at(conn, dataset_pk, seq):
        digest.update(codec.canonical_json(category_json(category)) + b"\n")
    rows = conn.execute(
        sa.select(items.c.item_id, items.c.content_sha256)
        .where(items.c.dataset == dataset_pk, queries.visible(items, seq))
        .order_by(items.c.item_id)
    )
    for row in rows:
        digest.update(f"{row.item_id} {row.content_sha256}\n".encode())
    return digest.hexdigest()


def check_text(value: str, field: str, limit: int, *, multiline: bool = False) -> None:
    text = value.replace("\n", "").replace("\t", "") if multiline else value
    if len(value) > limit or not text.isprintable():
        raise errors.InvalidArgument(
            "INVALID_TEXT",
            f"{field}: at most {limit} printable characters, got {len(value)}",
            {"field": field, "limit": limit, "length": len(value)},
        )


def check_categories_still_exist(annotations_: Iterable[Annotation], live: set[int], path: str) -> None:
    """Categories may be deleted between validation and the write transaction: look again inside it."""
    for index, annotation in enumerate(annotations_):
        if annotation.category_id and annotation.category_id not in live:
            raise errors.InvalidArgument(
                "UNKNOWN_CATEGORY",
                f"{path}[{index}].category_id: category {annotation.category_id} does not exist in the dataset (any more)",
                {"field": f"{path}[{index}].category_id", "category_id": annotation.category_id},
            )


def dataset_not_found(dataset_id: str) -> errors.SimulacraError:
    return errors.NotFound(
        "DATASET_NOT_FOUND", f"dataset {dataset_id!r} does not exist", {"dataset": f"datasets/{dataset_id}"}
    )


def item_not_found(dataset_id: str, item_id: str, version: int) -> errors.SimulacraError:
    where = f"version {version} of dataset {dataset_id!r}" if version else f"the working state of dataset {dataset_id!r}"
    return errors.NotFound(
        "ITEM_NOT_FOUND",
        f"{where} has no item {item_id!r}",
        {"item": f"datasets/{dataset_id}/items/{item_id}", "version": version},
    )
