"""What the store takes and returns: plain frozen dataclasses, no gRPC.

The annotation geometry itself is ``model.Annotation``; these records add the
item, dataset, version and job around it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from simulacra_services.annotation.domain.model import Annotation

LINEAGE_KINDS = ("real", "augmented", "synthetic")


@dataclass(frozen=True)
class Lineage:
    """Where an item came from; ``kind`` "" means unset (a real item of unknown origin)."""

    kind: str = ""
    origin: str = ""  # real
    source_item: str = ""  # augmented: "datasets/{dataset}/items/{item}"
    pipeline_digest: str = ""  # augmented
    seed: int = 0  # augmented and synthetic
    generator: str = ""  # synthetic
    generator_version: int = 0  # synthetic
    sample_index: int = 0  # synthetic
    # augmented: every source (item name, version name), the first source_item's; and the copy index
    sources: tuple[tuple[str, str], ...] = ()
    copy_index: int = 0
    # synthetic: what the generator was conditioned on (None: no truncation)
    truncation: float | None = None
    attributes: tuple[int, ...] = ()
    label: int = 0

    def to_json(self) -> dict[str, object]:
        # The fields added later are left out while unset, so that items stored before keep their content digests.
        return {
            name: list(map(list, value)) if name == "sources" else list(value) if name == "attributes" else value
            for name in self.__dataclass_fields__
            if (value := getattr(self, name)) not in _LATER_DEFAULTS.get(name, ((),))
        }

    @classmethod
    def from_json(cls, value: Mapping[str, object]) -> Lineage:
        fields = {name: value[name] for name in cls.__dataclass_fields__ if name in value}
        if "sources" in fields:
            fields["sources"] = tuple((str(item), str(version)) for item, version in fields["sources"])  # type: ignore[union-attr]
        if "attributes" in fields:
            fields["attributes"] = tuple(int(v) for v in fields["attributes"])  # type: ignore[union-attr]
        return cls(**fields)  # type: ignore[arg-type]


_LATER_DEFAULTS: dict[str, tuple[object, ...]] = {"sources": ((),), "copy_index": (0,), "truncation": (None,), "attributes": ((),), "label": (0,)}


@dataclass(frozen=True)
class ImageInput:
    """An image to upload: its encoded bytes, or the sha256 of a blob uploaded before."""

    data: bytes | None = None
    sha256: str = ""


@dataclass(frozen=True)
class ImageInfo:
    sha256: str
    width: int
    height: int
    format: str  # "png" or "jpeg"
    channels: int
    size_bytes: int


@dataclass(frozen=True)
class NewItem:
    """An item to create. ``item_id`` "" is generated; ``split`` "" means "train"."""

    image: ImageInput
    item_id: str = ""
    split: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    lineage: Lineage = Lineage()
    annotations: tuple[Annotation, ...] = ()
    file_name: str = ""


@dataclass(frozen=True, kw_only=True)
class ItemBody:
    """What an item holds, whether about to be written (``prepare.PreparedItem``) or read (``ItemRecord``)."""

    image: ImageInfo
    split: str
    attributes: Mapping[str, str]
    lineage: Lineage
    annotations: tuple[Annotation, ...]
    file_name: str


@dataclass(frozen=True, kw_only=True)
class ItemRecord(ItemBody):
    """An item as stored, in the working state (``version`` 0) or in a committed version."""

    dataset_id: str
    item_id: str
    version: int
    create_time: dt.datetime
    update_time: dt.datetime
    etag: str


@dataclass(frozen=True)
class ItemChanges:
    """What UpdateItem changes; ``None`` leaves a field as it is."""

    split: str | None = None
    attributes: Mapping[str, str] | None = None
    file_name: str | None = None
    annotations: tuple[Annotation, ...] | None = None
    lineage: Lineage | None = None


@dataclass(frozen=True)
class DatasetRecord:
    dataset_id: str
    display_name: str
    description: str
    labels: Mapping[str, str]
    create_time: dt.datetime
    update_time: dt.datetime
    item_count: int
    annotation_count: int
    category_count: int
    latest_version: int
    seq: int


@dataclass(frozen=True)
class VersionRecord:
    dataset_id: str
    version: int
    description: str
    create_time: dt.datetime
    item_count: int
    annotation_count: int
    content_sha256: str
    seq: int
    derived_from_version: str = ""  # "datasets/{d}/versions/{v}" for a version derived from another, else ""
    derived_from_pipeline_digest: str = ""


@dataclass(frozen=True)
class BatchResult:
    item_ids: list[str]
    replayed: bool


@dataclass(frozen=True)
class Page:
    """One page of a listing and the token of the next one ("" on the last page)."""

    records: list
    next_page_token: str


@dataclass(frozen=True)
class ItemSlice:
    """Which items of a state a page reads: those the filter selects, of one shard, after ``after_item_id``."""

    filter: str = ""
    after_item_id: str = ""
    shard_index: int = 0
    shard_count: int = 0  # 0 or 1: no sharding
