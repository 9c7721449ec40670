"""SQL building blocks of the store: visibility at a sequence, filters, ordering.

Page sizes and tokens are ``simulacra_services.core.api.pagination``'s: a
token's cursor is the sort key of the last row returned (``after`` below
turns it into the condition of the next page).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from simulacra_services.annotation.domain import filters
from simulacra_services.annotation.domain.filters import Comparison
from simulacra_services.annotation.domain.model import Category
from simulacra_services.annotation.persistence.tables import annotations, items
from simulacra_services.core import errors


def visible(table: sa.Table, seq: int | None) -> ColumnElement[bool]:
    """Rows of the working state (``seq`` None) or of the version committed at ``seq``."""
    if seq is None:
        return table.c.removed_seq.is_(None)
    return sa.and_(table.c.added_seq <= seq, sa.or_(table.c.removed_seq.is_(None), table.c.removed_seq > seq))


# ---------------------------------------------------------------------------
# Item filters
# ---------------------------------------------------------------------------


def item_filter(
    text: str, dataset_pk: int, categories: Sequence[Category], field: str = "filter"
) -> ColumnElement[bool]:
    """The condition on ``items`` of a ListItems filter, given the state's categories.

    ``category``, ``category_id`` and ``kind`` select items with at least one
    annotation that matches. Comparisons with an attribute the item lacks are
    false (so ``NOT attributes.weather = "fog"`` keeps items without weather).
    """
    node = filters.parse_filter(text, filters.ITEM_FILTER_FIELDS)

    def with_annotation(condition: ColumnElement[bool]) -> ColumnElement[bool]:
        # Correlated EXISTS: one probe of the (dataset, category_id, item_row) index per item
        # walked in order. "id IN (subquery)" would first collect every matching annotation
        # of the dataset, which costs milliseconds for a common category on every page.
        return sa.exists().where(annotations.c.dataset == dataset_pk, annotations.c.item_row == items.c.id, condition)

    def category(comparison: Comparison) -> ColumnElement[bool]:
        ids = [c.category_id for c in categories if filters.apply(comparison.op, c.display_name, comparison.value)]
        if not ids:
            return sa.false()
        return with_annotation(annotations.c.category_id.in_(ids))

    def category_id(comparison: Comparison) -> ColumnElement[bool]:
        return with_annotation(filters.compare(annotations.c.category_id, comparison.op, comparison.value))

    def kind(comparison: Comparison) -> ColumnElement[bool]:
        return with_annotation(filters.compare(annotations.c.kind, comparison.op, comparison.value))

    def attribute(comparison: Comparison) -> ColumnElement[bool]:
        value = items.c.attributes[comparison.key].as_string()
        if comparison.value is None:
            return value.is_not(None)
        return sa.and_(value.is_not(None), filters.compare(value, comparison.op, comparison.value))

    targets: Mapping[str, Any] = {
        "split": items.c.split,
        "category": category,
        "category_id": category_id,
        "kind": kind,
        "lineage": items.c.lineage_kind,
        "format": items.c.format,
        "width": items.c.width,
        "height": items.c.height,
        "channels": items.c.channels,
        "file_name": items.c.file_name,
        "sha256": items.c.image_sha256,
        "create_time": items.c.create_time,
        "attributes": attribute,
    }
    try:
        return filters.to_sqlalchemy(node, targets)
    except errors.SimulacraError as error:
        error.metadata.setdefault("field", field)
        raise


# ---------------------------------------------------------------------------
# Ordering
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SortKey:
    name: str
    column: ColumnElement[Any]
    descending: bool


def parse_order_by(
    text: str, columns: Mapping[str, ColumnElement[Any]], tie_breaker: str, field: str = "order_by"
) -> list[SortKey]:
    """``"a, b desc"`` into sort keys; ``tie_breaker`` is appended (ascending) unless named."""
    keys: list[SortKey] = []
    if text.strip():
        for part in text.split(","):
            words = part.split()
            if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")) or words[0] not in columns:
                raise errors.InvalidArgument(
                    "INVALID_ORDER_BY",
                    f"{field}: {part.strip()!r} is not a sort key; use comma-separated fields among "
                    f"{', '.join(columns)}, each optionally followed by ' desc'",
                    {"field": field, "order_by": errors.shown(text)},
                )
            if any(key.name == words[0] for key in keys):
                raise errors.InvalidArgument(
                    "INVALID_ORDER_BY", f"{field}: {words[0]!r} appears twice", {"field": field, "order_by": errors.shown(text)}
                )
            keys.append(SortKey(words[0], columns[words[0]], len(words) == 2 and words[1].lower() == "desc"))
    if not any(key.name == tie_breaker for key in keys):
        keys.append(SortKey(tie_breaker, columns[tie_breaker], False))
    return keys


def order_clauses(keys: Sequence[SortKey]) -> list[ColumnElement[Any]]:
    return [key.column.desc() if key.descending else key.column.asc() for key in keys]


def after(keys: Sequence[SortKey], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after the row with sort-key ``values`` in the order of ``keys``."""
    clauses = []
    for index, key in enumerate(keys):
        equal = [keys[j].column == values[j] for j in range(index)]
        step = key.column < values[index] if key.descending else key.column > values[index]
        clauses.append(sa.and_(*equal, step))
    return sa.or_(*clauses)
