"""What a job trains on, as plain values: the data spec and the loaded tensors (no protobuf here)."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the server builds DataSpecs without torch; only the worker loads tensors
    from simulacra_services.training.loop.run import TrainingData

DEFAULT_HOLDOUT_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """Which items of which dataset version, and how they become training examples.

    ``crop_categories``: train on the crops of these categories' boxes (object-level generation)
    instead of whole images; the class of a crop is its box's category. ``attributes``: item
    attribute names to condition on (each becomes one categorical input).
    """

    dataset_version: str
    filter: str = ""
    train_split: str = "train"
    holdout_split: str = ""
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION
    crop_categories: tuple[int, ...] = ()
    attributes: tuple[str, ...] = ()
    max_items: int = 0

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {
            "crop_categories": list(self.crop_categories), "attributes": list(self.attributes)
        }

    @classmethod
    def from_json(cls, data: dict) -> DataSpec:
        return cls(**(data | {
            "crop_categories": tuple(data.get("crop_categories", ())), "attributes": tuple(data.get("attributes", ()))
        }))


@dataclasses.dataclass
class LoadedData:
    train: TrainingData
    holdout: TrainingData
    class_names: tuple[str, ...]
    category_ids: tuple[int, ...]
    attribute_values: tuple[tuple[str, tuple[str, ...]], ...]
    skipped: int

    @property
    def attribute_sizes(self) -> tuple[int, ...]:
        return tuple(len(values) for _, values in self.attribute_values)


def in_holdout(item_name: str, fraction: float) -> bool:
    """A stable draw per item: the same items are held out on every attempt and every machine."""
    digest = int.from_bytes(hashlib.sha256(item_name.encode()).digest()[:8], "big")
    return digest / 2**64 < fraction
