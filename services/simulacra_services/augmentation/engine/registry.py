"""Op types: what each op's parameters are, how it draws them, and what it does.

Parameter sampling is separated from execution (Albumentations' ``get_params``
/ ``apply`` split): ``sample`` draws everything random for one item from the
op's own counter-based stream, and then either

- a ``GeometricOp`` returns a ``Warp`` (a 3x3 matrix from input to output pixel
  coordinates and the output size), which the executor composes with its
  neighbours and applies once to the image and every annotation; or
- an ``ImageOp`` changes the pixels only (annotations unchanged).

Coordinates are continuous pixel coordinates with the origin at the top-left
corner of the top-left pixel (the annotation-store's convention): pixel (i, j)
covers [j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from simulacra_services.augmentation.engine.params import Param


@dataclass(frozen=True)
class Warp:
    """One geometric step: ``matrix`` maps input (x, y, 1) to output coordinates."""

    matrix: np.ndarray
    height: int
    width: int
    interpolation: str = "INTERPOLATION_BILINEAR"
    border_mode: str = "BORDER_MODE_CONSTANT"
    fill_value: float = 0.0


class OpType:
    """Base of every op: a name (the proto oneof field), parameters, a sampler."""

    name: ClassVar[str]
    params: ClassVar[Mapping[str, Param]] = {}

    def check(self, values: Mapping[str, Any], field: str) -> None:
        """Cross-parameter checks beyond each parameter's own (raise params.invalid)."""

    def sample(self, values: Mapping[str, Any], rng: np.random.Generator, height: int, width: int) -> Any:
        """Everything random for one item; the default draws nothing."""
        return None


class GeometricOp(OpType):
    def warp(self, values: Mapping[str, Any], sampled: Any, height: int, width: int) -> Warp:  # pragma: no cover
        raise NotImplementedError


class FieldOp(OpType):
    """A non-affine warp: a displacement field (see ``field.Field``); never fused with matrices."""

    def field(self, values: Mapping[str, Any], sampled: Any, height: int, width: int) -> Any:  # pragma: no cover
        raise NotImplementedError


class MixOp(OpType):
    """Several items into one: draws partners from ``Item.partners`` (see ``ops/mixing.py``)."""

    partners_needed = 1

    def partners_wanted(self, values: Mapping[str, Any]) -> int:
        return self.partners_needed

    def mix(self, values: Mapping[str, Any], rng: Any, image: np.ndarray, annotations: list, sources: list, policy: Any, path: str) -> tuple:  # pragma: no cover
        raise NotImplementedError


class ImageOp(OpType):
    def apply(self, image: np.ndarray, values: Mapping[str, Any], sampled: Any) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


REGISTRY: dict[str, OpType] = {}


def register(cls: type[OpType]) -> type[OpType]:
    REGISTRY[cls.name] = cls()
    return cls


def uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low if low == high else float(rng.uniform(low, high))
