"""Statistics of a dataset state (optionally filtered), computed in the database.

Counts come from SQL aggregates over the state's item rows (and their
annotations); only box sizes need the boxes themselves, read as numbers.
What an object is, for class balance, is told in ``domain.statistics``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from simulacra_services.annotation.domain.model import AnnotationKind, Category
from simulacra_services.annotation.persistence import rows
from simulacra_services.annotation.persistence.item_reads import item_query
from simulacra_services.annotation.domain.statistics import (
    BOX_SIZE_EDGES,
    MEDIUM_AREA,
    SMALL_AREA,
    CategoryCount,
    Statistics,
    annotation_count_edges,
    histogram,
)
from simulacra_services.annotation.persistence.tables import annotations


class StatisticsRepository:
    """Aggregates over the items of a state (``compute_statistics``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def compute(self, dataset_id: str, version: str | int | None = None, *, filter: str = "") -> Statistics:
        with self.engine.connect() as conn:
            dataset, seq, _, statement = item_query(conn, dataset_id, version, filter)
            return compute_statistics(conn, statement.subquery(), rows.categories_at(conn, dataset.id, seq))


# Annotations that are a piece of a named instance (one object per distinct item row and instance id).
_GROUPED = sa.and_(annotations.c.instance_id != "", annotations.c.kind != AnnotationKind.CLASS_LABEL.value)
_INSTANCE_KEY = sa.cast(annotations.c.item_row, sa.String) + ":" + annotations.c.instance_id



def compute_statistics(conn: Connection, state_items: sa.Subquery, categories: Sequence[Category]) -> Statistics:
    """Statistics of the item rows selected by ``state_items`` (a subquery over the items table)."""
    row_ids = sa.select(state_items.c.id)
    per_count = conn.execute(
        sa.select(state_items.c.annotation_count, sa.func.count()).group_by(state_items.c.annotation_count)
    ).all()
    item_count = sum(int(n) for _, n in per_count)
    annotation_count = sum(int(a) * int(n) for a, n in per_count)
    maximum = max((int(a) for a, _ in per_count), default=0)
    per_item = histogram(((float(a), int(n)) for a, n in per_count), annotation_count_edges(maximum))

    splits = conn.execute(sa.select(state_items.c.split, sa.func.count()).group_by(state_items.c.split)).all()
    lineages = dict(conn.execute(sa.select(state_items.c.lineage_kind, sa.func.count()).group_by(state_items.c.lineage_kind)).all())

    in_state = annotations.c.item_row.in_(row_ids)
    per_category = {
        int(category_id): (int(count), int(items), int(grouped) + int(single or 0))
        for category_id, count, items, grouped, single in conn.execute(
            sa.select(
                annotations.c.category_id,
                sa.func.count(),
                sa.func.count(sa.distinct(annotations.c.item_row)),
                sa.func.count(sa.distinct(sa.case((_GROUPED, _INSTANCE_KEY), else_=None))),
                sa.func.sum(sa.case((_GROUPED, 0), else_=1)),
            )
            .where(in_state)
            .group_by(annotations.c.category_id)
        )
    }
    kinds = dict(conn.execute(sa.select(annotations.c.kind, sa.func.count()).where(in_state).group_by(annotations.c.kind)).all())
    boxes = conn.execute(sa.select(annotations.c.geometry).where(in_state, annotations.c.kind == "box")).scalars().all()

    category_counts = tuple(
        CategoryCount(c.category_id, c.display_name, *per_category.get(c.category_id, (0, 0, 0))) for c in categories
    )
    nonzero = [c.object_count for c in category_counts if c.object_count > 0]
    imbalance = max(nonzero) / min(nonzero) if len(nonzero) >= 2 else 1.0
    sizes = [(math.sqrt(float(b["w"]) * float(b["h"])), 1) for b in boxes]
    areas = [float(b["w"]) * float(b["h"]) for b in boxes]
    return Statistics(
        item_count=item_count,
        annotation_count=annotation_count,
        categories=category_counts,
        imbalance_ratio=imbalance,
        empty_category_ids=tuple(c.category_id for c in category_counts if c.annotation_count == 0),
        annotations_per_item=per_item,
        box_size=histogram(sizes, BOX_SIZE_EDGES),
        small_box_count=sum(1 for a in areas if a < SMALL_AREA),
        medium_box_count=sum(1 for a in areas if SMALL_AREA <= a < MEDIUM_AREA),
        large_box_count=sum(1 for a in areas if a >= MEDIUM_AREA),
        items_per_split={str(split): int(n) for split, n in splits},
        annotation_kinds=tuple((k.value, int(kinds[k.value])) for k in AnnotationKind if kinds.get(k.value)),
        lineage_kinds=tuple((k, int(lineages[k])) for k in ("real", "augmented", "synthetic") if lineages.get(k)),
    )
