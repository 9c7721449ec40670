"""Statistics of a dataset state: class balance, annotations per item, box sizes.

Counts come from SQL aggregates over the state's item rows (and their
annotations); only box sizes need the boxes themselves, read as numbers.

Class balance counts objects, not annotations: a COCO person with a box, a
mask and keypoints is three annotations sharing one ``instance_id``, but one
person. Per category, the annotations of one item that share a non-empty
instance id are one object, and every other annotation (no instance id, or a
class label, which names the whole image) is an object of its own. The
imbalance ratio is the largest object count over the smallest non-zero one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from simulacra_services.annotation.model import AnnotationKind, Category
from simulacra_services.annotation.tables import annotations

BOX_SIZE_EDGES = (0.0, 8.0, 16.0, 32.0, 64.0, 96.0, 128.0, 256.0, 512.0)
SMALL_AREA = 32.0**2
MEDIUM_AREA = 96.0**2


@dataclass(frozen=True)
class Bucket:
    lower: float
    upper: float  # math.inf for the last bucket
    count: int


@dataclass(frozen=True)
class Histogram:
    buckets: tuple[Bucket, ...]
    count: int
    mean: float
    min: float
    max: float


@dataclass(frozen=True)
class CategoryCount:
    category_id: int
    display_name: str
    annotation_count: int
    item_count: int
    # Objects (instances) of the category: see the module docstring.
    object_count: int = 0


@dataclass(frozen=True)
class Statistics:
    item_count: int
    annotation_count: int
    categories: tuple[CategoryCount, ...]
    imbalance_ratio: float
    empty_category_ids: tuple[int, ...]
    annotations_per_item: Histogram
    box_size: Histogram
    small_box_count: int
    medium_box_count: int
    large_box_count: int
    items_per_split: dict[str, int] = field(default_factory=dict)
    # (kind value, count), kinds with annotations only, in the order of AnnotationKind.
    annotation_kinds: tuple[tuple[str, int], ...] = ()
    # (lineage kind, item count), real / augmented / synthetic with items only.
    lineage_kinds: tuple[tuple[str, int], ...] = ()


# Annotations that are a piece of a named instance (one object per distinct item row and instance id).
_GROUPED = sa.and_(annotations.c.instance_id != "", annotations.c.kind != AnnotationKind.CLASS_LABEL.value)
_INSTANCE_KEY = sa.cast(annotations.c.item_row, sa.String) + ":" + annotations.c.instance_id


def annotation_count_edges(maximum: int) -> list[float]:
    """Bucket lower bounds 0, 1, 2, 3, 5, 9, 17, ... (buckets 0, 1, 2, 3-4, 5-8, 9-16, ...) up to
    the first bound above ``maximum``, whose open-ended bucket stays empty."""
    edges = [0.0, 1.0]
    while edges[-1] <= maximum:
        edges.append(edges[-1] + 1 if edges[-1] < 2 else 2 * edges[-1] - 1)
    return edges


def histogram(values_with_counts: Iterable[tuple[float, int]], edges: Sequence[float]) -> Histogram:
    """Histogram of (value, multiplicity) pairs over buckets [edges[i], edges[i+1]), the last open-ended."""
    counts = [0] * len(edges)
    total = 0
    weighted = 0.0
    low, high = math.inf, -math.inf
    for value, count in values_with_counts:
        if count <= 0:
            continue
        index = max(i for i, edge in enumerate(edges) if value >= edge) if value >= edges[0] else 0
        counts[index] += count
        total += count
        weighted += value * count
        low, high = min(low, value), max(high, value)
    buckets = tuple(
        Bucket(edges[i], edges[i + 1] if i + 1 < len(edges) else math.inf, counts[i]) for i in range(len(edges))
    )
    if total == 0:
        return Histogram(buckets, 0, 0.0, 0.0, 0.0)
    return Histogram(buckets, total, weighted / total, low, high)


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
