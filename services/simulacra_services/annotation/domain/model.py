"""Domain objects of the annotation-store: plain, immutable dataclasses.

They mirror the messages of ``protos/simulacra/annotation/v1/annotation.proto``
one to one (same field names, same units, same conventions), so that
``to_proto``/``from_proto`` are mechanical and the domain code (validation,
COCO/YOLO conversion, statistics) never touches generated code.

Conventions repeated here because the code depends on them:

- Pixel coordinates: origin at the top-left corner of the top-left pixel,
  x to the right, y down.
- ``Box`` is COCO's ``bbox``: top-left corner and size.
- ``RotatedBox.angle_degrees`` turns the width axis from +x towards +y
  (clockwise on screen), range [-180, 180).
- ``Mask`` is COCO RLE, column-major; ``counts`` is a tuple of run lengths
  (uncompressed) or the compressed string, kept in the form it was given.
- ``Keypoint.visibility`` is COCO's 0 (not labelled), 1 (labelled, hidden),
  2 (labelled, visible).
- Category ids are >= 1; ``category_id == 0`` means "no category" and is
  only meaningful for pixel maps.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union


class AnnotationKind(enum.Enum):
    """Annotation kinds; the value is the name filters use (``kind = "box"``)."""

    CLASS_LABEL = "class_label"
    BOX = "box"
    ROTATED_BOX = "rotated_box"
    POLYGON = "polygon"
    MASK = "mask"
    KEYPOINTS = "keypoints"
    CUBOID = "cuboid"
    PIXEL_MAP = "pixel_map"


class BoxBoundsPolicy(enum.Enum):
    """What happens to an axis-aligned box reaching outside the image."""

    REJECT = "reject"
    CLIP = "clip"


class PixelMapKind(enum.Enum):
    SEMANTIC_SEGMENTATION = "semantic_segmentation"
    INSTANCE_SEGMENTATION = "instance_segmentation"
    DEPTH = "depth"


class DType(enum.Enum):
    """Tensor element types (``simulacra.common.v1.DataType``); value = numpy name."""

    FLOAT32 = "float32"
    UINT8 = "uint8"
    FLOAT16 = "float16"
    FLOAT64 = "float64"
    INT32 = "int32"
    INT64 = "int64"
    BOOL = "bool"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]


_ITEMSIZE = {
    DType.FLOAT32: 4,
    DType.UINT8: 1,
    DType.FLOAT16: 2,
    DType.FLOAT64: 8,
    DType.INT32: 4,
    DType.INT64: 8,
    DType.BOOL: 1,
}


@dataclass(frozen=True)
class ClassLabel:
    """The whole image belongs to the annotation's category."""

    kind = AnnotationKind.CLASS_LABEL


@dataclass(frozen=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    kind = AnnotationKind.BOX


@dataclass(frozen=True)
class RotatedBox:
    cx: float
    cy: float
    w: float
    h: float
    angle_degrees: float

    kind = AnnotationKind.ROTATED_BOX


@dataclass(frozen=True)
class Polygon:
    """One or more closed polygons; each part is flat ``(x0, y0, x1, y1, ...)``."""

    parts: tuple[tuple[float, ...], ...]

    kind = AnnotationKind.POLYGON


@dataclass(frozen=True)
class Mask:
    """COCO RLE of a binary mask, ``height`` x ``width`` (COCO ``size`` = [h, w])."""

    height: int
    width: int
    counts: tuple[int, ...] | str

    kind = AnnotationKind.MASK

    @property
    def compressed(self) -> bool:
        return isinstance(self.counts, str)


@dataclass(frozen=True)
class Keypoint:
    x: float
    y: float
    visibility: int


@dataclass(frozen=True)
class Keypoints:
    """Points in the order of the category's ``keypoint_names``."""

    points: tuple[Keypoint, ...]

    kind = AnnotationKind.KEYPOINTS


@dataclass(frozen=True)
class Vector3:
    x: float
    y: float
    z: float


@dataclass(frozen=True)
class Quaternion:
    w: float
    x: float
    y: float
    z: float


@dataclass(frozen=True)
class CuboidDimensions:
    length: float
    width: float
    height: float


@dataclass(frozen=True)
class CameraIntrinsics:
    fx: float
    fy: float
    cx: float
    cy: float


@dataclass(frozen=True)
class Point2d:
    x: float
    y: float


@dataclass(frozen=True)
class Cuboid3d:
    center: Vector3
    dimensions: CuboidDimensions
    rotation: Quaternion
    frame_id: str
    intrinsics: CameraIntrinsics | None = None
    projected_corners: tuple[Point2d, ...] = ()

    kind = AnnotationKind.CUBOID


@dataclass(frozen=True)
class PixelMap:
    """A per-pixel map. ``data`` holds the raw little-endian bytes when inline
    (upload, full view); ``sha256`` names the stored blob once written."""

    map_kind: PixelMapKind  # proto field `kind`; renamed: `kind` is the annotation kind here
    dtype: DType
    shape: tuple[int, ...]
    data: bytes | None = None
    sha256: str = ""

    kind = AnnotationKind.PIXEL_MAP


Geometry = Union[ClassLabel, Box, RotatedBox, Polygon, Mask, Keypoints, Cuboid3d, PixelMap]
"""The ``oneof kind`` of an annotation."""


@dataclass(frozen=True)
class Annotation:
    geometry: Geometry
    category_id: int = 0
    id: str = ""
    instance_id: str = ""
    iscrowd: bool | None = None
    score: float | None = None
    area: float | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> AnnotationKind:
        return self.geometry.kind


@dataclass(frozen=True)
class Category:
    category_id: int
    display_name: str
    supercategory: str = ""
    keypoint_names: tuple[str, ...] = ()
    # 0-based keypoint index pairs.
    skeleton: tuple[tuple[int, int], ...] = ()
    flip_pairs: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class ImageSize:
    width: int
    height: int
