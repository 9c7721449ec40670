"""The shape of a generator: what every network of a family is built from."""

from __future__ import annotations

import dataclasses
import math

from simulacra_services.training.loop.hyperparameters import MODEL_KINDS

__all__ = ["MODEL_KINDS", "ModelConfig"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Image shape, conditioning and width of a generator and its critic or encoder.

    ``num_classes`` 0 means unconditional: the networks still take ``labels`` (the fixed ONNX
    signature has the input) but map every label to one embedding. ``attribute_sizes[i]`` is the
    number of values of categorical attribute i (``weather``: clear/fog/rain -> 3).
    """

    latent_dim: int = 64
    channels: int = 1
    height: int = 28
    width: int = 28
    num_classes: int = 10
    attribute_sizes: tuple[int, ...] = ()
    base_width: int = 32
    embedding_dim: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.channels <= 4:
            raise ValueError("channels must be in [1, 4]")
        if not (8 <= self.height <= 128 and 8 <= self.width <= 128):
            raise ValueError("height and width must be in [8, 128]")
        if self.num_classes < 0 or any(size < 1 for size in self.attribute_sizes):
            raise ValueError("num_classes must be >= 0 and every attribute needs a value")

    @property
    def seed_height(self) -> int:
        """Height of the generator's first feature map: two x2 upsamplings reach ``height``."""
        return math.ceil(self.height / 4)

    @property
    def seed_width(self) -> int:
        return math.ceil(self.width / 4)

    @property
    def label_slots(self) -> int:
        """Rows of the class embedding: one shared row for an unconditional model."""
        return max(self.num_classes, 1)

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"attribute_sizes": list(self.attribute_sizes)}

    @classmethod
    def from_json(cls, data: dict) -> ModelConfig:
        return cls(**(data | {"attribute_sizes": tuple(data.get("attribute_sizes", ()))}))
