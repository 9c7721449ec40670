"""What a dataset job reads and writes, as plain data (the gateway in ``api/`` converts)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from simulacra_services.annotation.domain.model import Annotation
from simulacra_services.annotation.domain.records import Lineage


def object_counts(annotations: Sequence[Annotation]) -> Counter[int]:
    """Objects per category: annotations that share an instance_id are one object (as the store's class balance)."""
    counts: Counter[int] = Counter()
    seen: set[tuple[int, str]] = set()
    for a in annotations:
        if a.category_id <= 0 or a.kind.value == "pixel_map":
            continue
        if a.instance_id:
            if (a.category_id, a.instance_id) in seen:
                continue
            seen.add((a.category_id, a.instance_id))
        counts[a.category_id] += 1
    return counts


@dataclass(frozen=True)
class StoredItem:
    """An item read from a version: its name, pixels and annotations."""

    name: str
    split: str
    attributes: Mapping[str, str]
    image: np.ndarray
    annotations: tuple[Annotation, ...]
    lineage: Lineage
    encoded: bytes = b""
    image_sha256: str = ""


@dataclass(frozen=True)
class NewItem:
    """An item to write: the stored image ``image_sha256`` when given (a copied source item: no bytes
    travel), else ``encoded``, else ``image`` PNG-encoded on upload."""

    item_id: str
    split: str
    attributes: Mapping[str, str]
    annotations: Sequence[Annotation]
    lineage: Lineage
    image: np.ndarray | None = None
    encoded: bytes = b""
    image_sha256: str = ""
