"""What the annotation-store's validators share: size limits, tolerances, patterns, the error they raise.

``validation`` (annotations), ``shapes`` (one check per kind of shape) and
``identifiers`` (attributes, categories, ids, splits, paths) build on these.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from simulacra_services.core import errors

BOUNDS_TOLERANCE = 1e-6
MAX_CATEGORY_ID = 2**31 - 1


@dataclass(frozen=True)
class Limits:
    """Size limits; the defaults are the ones the contract documents."""

    max_annotations_per_item: int = 10_000
    max_polygon_parts: int = 64
    max_points_per_polygon_part: int = 10_000
    max_keypoints: int = 256
    max_compressed_rle_chars: int = 16 * 1024 * 1024
    max_attributes: int = 64
    max_attribute_value_chars: int = 1024
    max_name_chars: int = 256
    max_frame_id_chars: int = 128
    max_path_chars: int = 1024
    quaternion_tolerance: float = 1e-3


DEFAULT_LIMITS = Limits()

KEY = re.compile(r"[a-z_][a-z0-9_]{0,63}")
"""An attribute key or a keypoint name."""
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
"""A control character: refused in names, frame ids and paths."""


def invalid(reason: str, field: str, message: str, **metadata: object) -> errors.SimulacraError:
    """``InvalidArgument`` with ``reason``, the message prefixed by ``field`` and metadata ``field``."""
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field, **metadata})


def finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise invalid("NON_FINITE_NUMBER", field, f"must be a finite number, got {value}", value=value)
    return value
