"""Statistics of a dataset state: class balance, annotations per item, box sizes.

The figures and how they are bucketed; ``persistence.statistics`` computes
them with SQL aggregates over the state's item rows (and their annotations).

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
