"""Table rows to records and back: what the annotation-store writes and reads in SQL.

Rows are immutable once written (see tables.py), so these functions are the
whole story of how a record is stored. JSON columns are read as text and
decoded here (``decode_json``): the generic JSON type costs more than the
query on a page of annotations; psycopg hands back decoded values for json
columns, which pass through unchanged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, NamedTuple, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Row

from simulacra_services.annotation.domain import codec
from simulacra_services.annotation.domain.model import Annotation, Category
from simulacra_services.annotation.domain.prepare import PreparedItem
from simulacra_services.annotation.domain.records import DatasetRecord, ImageInfo, ItemRecord, Lineage, VersionRecord
from simulacra_services.annotation.persistence.tables import annotations, items


def category_json(category: Category) -> dict[str, Any]:
    return {
        "category_id": category.category_id,
        "display_name": category.display_name,
        "supercategory": category.supercategory,
        "keypoint_names": list(category.keypoint_names),
        "skeleton": [list(p) for p in category.skeleton],
        "flip_pairs": [list(p) for p in category.flip_pairs],
    }


def category_row(dataset_pk: int, category: Category, seq: int) -> dict[str, Any]:
    return {
        "dataset": dataset_pk,
        **category_json(category),
        "added_seq": seq,
        "removed_seq": None,
    }


def category_of(row: Row[Any]) -> Category:
    return Category(
        category_id=int(row.category_id),
        display_name=row.display_name,
        supercategory=row.supercategory,
        keypoint_names=tuple(row.keypoint_names),
        skeleton=tuple((int(a), int(b)) for a, b in row.skeleton),
        flip_pairs=tuple((int(a), int(b)) for a, b in row.flip_pairs),
    )


def dataset_of(row: Row[Any], category_count: int) -> DatasetRecord:
    return DatasetRecord(
        dataset_id=row.dataset_id,
        display_name=row.display_name,
        description=row.description,
        labels=dict(row.labels),
        create_time=row.create_time,
        update_time=row.update_time,
        item_count=int(row.item_count),
        annotation_count=int(row.annotation_count),
        category_count=category_count,
        latest_version=int(row.latest_version),
        seq=int(row.seq),
    )


def version_of(dataset_id: str, row: Row[Any]) -> VersionRecord:
    return VersionRecord(
        dataset_id=dataset_id,
        version=int(row.version),
        description=row.description,
        create_time=row.create_time,
        item_count=int(row.item_count),
        annotation_count=int(row.annotation_count),
        content_sha256=row.content_sha256,
        seq=int(row.seq),
        derived_from_version=row.derived_from_version,
        derived_from_pipeline_digest=row.derived_from_pipeline_digest,
    )


def shard_hash(item_id: str) -> int:
    """Stable 31-bit hash of an item id (the shard of a sharded stream is this modulo shard_count)."""
    return int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


def item_row(dataset_pk: int, item: PreparedItem, seq: int, create_time: dt.datetime, update_time: dt.datetime) -> dict[str, Any]:
    return {
        "dataset": dataset_pk,
        "item_id": item.item_id,
        "added_seq": seq,
        "removed_seq": None,
        "shard_hash": shard_hash(item.item_id),
        "image_sha256": item.image.sha256,
        "width": item.image.width,
        "height": item.image.height,
        "format": item.image.format,
        "channels": item.image.channels,
        "size_bytes": item.image.size_bytes,
        "split": item.split,
        "attributes": dict(item.attributes),
        "lineage_kind": item.lineage.kind or "real",
        "lineage": item.lineage.to_json(),
        "file_name": item.file_name,
        "annotation_count": len(item.annotations),
        "content_sha256": item.content_sha256,
        "create_time": create_time,
        "update_time": update_time,
    }


def annotation_rows(dataset_pk: int, item_pk: int, annotations_: Sequence[Annotation]) -> list[dict[str, Any]]:
    return [
        {
            "item_row": item_pk,
            "dataset": dataset_pk,
            "position": position,
            "annotation_id": a.id,
            "kind": a.kind.value,
            "category_id": a.category_id,
            "instance_id": a.instance_id,
            "iscrowd": a.iscrowd,
            "score": a.score,
            "area": a.area,
            "attributes": dict(sorted(a.attributes.items())),
            "geometry": codec.geometry_to_json(a.geometry),
        }
        for position, a in enumerate(annotations_)
    ]


ANNOTATION_COLUMNS = [
    *(annotations.c[name] for name in (
        "item_row", "annotation_id", "kind", "category_id", "instance_id", "iscrowd", "score", "area",
    )),
    sa.type_coerce(annotations.c.attributes, sa.Text).label("attributes"),
    sa.type_coerce(annotations.c.geometry, sa.Text).label("geometry"),
]


ITEM_COLUMNS = [
    *(c for c in items.columns if c.name not in ("attributes", "lineage", "encoded_item")),
    sa.type_coerce(items.c.attributes, sa.Text).label("attributes"),
    sa.type_coerce(items.c.lineage, sa.Text).label("lineage"),
]


def decode_json(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    return {} if value == "{}" else json.loads(value)


def annotation_of(row: Row[Any]) -> Annotation:
    return Annotation(
        geometry=codec.geometry_from_json(row.kind, decode_json(row.geometry)),
        category_id=int(row.category_id),
        id=row.annotation_id,
        instance_id=row.instance_id,
        iscrowd=row.iscrowd,
        score=row.score,
        area=row.area,
        attributes=decode_json(row.attributes),
    )


_NO_LINEAGE = Lineage()


def lineage_of(value: Mapping[str, Any]) -> Lineage:
    return _NO_LINEAGE if not value.get("kind") else Lineage.from_json(value)


def row_etag(row: Row[Any]) -> str:
    return f"{row.added_seq:x}-{row.content_sha256[:16]}"


def item_of(dataset_id: str, version: int, row: Row[Any], annotations_: tuple[Annotation, ...]) -> ItemRecord:
    return ItemRecord(
        dataset_id=dataset_id,
        item_id=row.item_id,
        version=version,
        image=ImageInfo(row.image_sha256, int(row.width), int(row.height), row.format, int(row.channels), int(row.size_bytes)),
        split=row.split,
        attributes=decode_json(row.attributes),
        lineage=lineage_of(decode_json(row.lineage)),
        annotations=annotations_,
        file_name=row.file_name,
        create_time=row.create_time,
        update_time=row.update_time,
        etag=row_etag(row),
    )


class ItemEncoding(Protocol):
    """How an item's message is stored with its row (``items.encoded_item``) for streams to send as it is.

    The encoding is the API's: the service passes ``api.convert.ITEM_ENCODING``
    (protobuf) to the store, so that persistence stores bytes it does not make.
    """

    def encode(self, record: ItemRecord) -> bytes | None:
        """The stored encoding of ``record`` (None: this item is not sent from an encoding)."""
        ...

    def is_current(self, encoded: bytes | None) -> bool:
        """Whether a stored encoding may be sent (NULL or written in an older format: no)."""
        ...


class NoEncoding:
    """Rows without an encoding: every streamed item is decoded and converted (a store without an API)."""

    def encode(self, record: ItemRecord) -> bytes | None:
        return None

    def is_current(self, encoded: bytes | None) -> bool:
        return False


NO_ENCODING = NoEncoding()


def encoded_item(dataset_id: str, item: Mapping[str, Any], annotations_: Sequence[Mapping[str, Any]], encoding: ItemEncoding) -> bytes | None:
    """The ``encoded_item`` of a row about to be written, from its row and annotation rows.

    The record is decoded from the rows by the functions that decode them when
    read back (``item_of``, ``annotation_of``), so the encoding is the message
    a read of the stored row gives.
    """
    annotations_of_item = tuple(annotation_of(SimpleNamespace(**row)) for row in annotations_)  # type: ignore[arg-type]
    return encoding.encode(item_of(dataset_id, 0, SimpleNamespace(**item), annotations_of_item))  # type: ignore[arg-type]


class EncodedItem(NamedTuple):
    """An item of a stream that is sent from its stored encoding (see ``ItemEncoding``).

    A tuple, not a dataclass: streams make one per item, and a tuple is made fastest.
    """

    item_id: str
    image_sha256: str
    image_size: int
    encoded: bytes
