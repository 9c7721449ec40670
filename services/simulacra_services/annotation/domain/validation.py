"""Validation of items' annotations; the rules of the annotation-store's validators.

This module checks an item's annotations as a whole (ids, instances, categories,
the shape of each kind); the check of each shape is in ``shapes``, those of
attributes, categories, ids, splits and paths in ``identifiers``, the limits and
the error constructor they share in ``checks``. The decisions and reasons below
cover all four.

Every check raises ``errors.InvalidArgument`` with a stable reason and
metadata ``field`` holding the path of the offending value, built from the
``path`` the caller passes (``items[2].annotations[3].box.w`` when the upload
code passes ``items[2].annotations``), plus the values and limits involved.
The first problem found is reported: a batch is rejected as a whole anyway.

Decisions:

- Axis-aligned boxes must lie within the image unless the caller chooses
  ``BoxBoundsPolicy.CLIP``: then they are cut to the image, and a box left
  without area is still rejected. A tolerance of ``BOUNDS_TOLERANCE`` pixels
  absorbs float rounding (423.1 + 216.9 > 640.0 in binary floating point).
- Rotated boxes need their center inside the image; polygons and cuboid
  projections may reach past the border (objects cut by the frame; COCO's
  rasterization clips them). Visible keypoints (visibility 2) must be inside
  the image; hidden ones (1) may be guessed outside it; unlabelled ones (0)
  are not checked.
- Quaternions must be normalized to within ``Limits.quaternion_tolerance``;
  they are never renormalized silently (what is stored is what was sent).
- Category id 0 ("none") is allowed for pixel maps only; semantic maps must
  hold only 0 (background) and ids of existing categories.

- Annotations of one item that share a non-empty ``instance_id`` are pieces
  of one object, at most one of each kind (DUPLICATE_INSTANCE_KIND).

Reasons: TOO_MANY_ANNOTATIONS, INVALID_ANNOTATION_ID, DUPLICATE_ANNOTATION_ID, DUPLICATE_INSTANCE_KIND,
MISSING_CATEGORY, UNKNOWN_CATEGORY, NON_FINITE_NUMBER, INVALID_SCORE,
INVALID_AREA, INVALID_BOX_SIZE, BOX_OUT_OF_BOUNDS, INVALID_ROTATED_BOX,
INVALID_POLYGON, TOO_MANY_POINTS, RLE_SIZE_MISMATCH, INVALID_RLE,
KEYPOINT_COUNT_MISMATCH, INVALID_KEYPOINT_VISIBILITY, KEYPOINT_OUT_OF_BOUNDS,
INVALID_CUBOID, QUATERNION_NOT_NORMALIZED, INVALID_PIXEL_MAP,
PIXEL_MAP_SIZE_MISMATCH, INVALID_ATTRIBUTES, INVALID_CATEGORY,
DUPLICATE_CATEGORY, INVALID_DATASET_ID, INVALID_ITEM_ID, INVALID_SPLIT,
INVALID_PATH.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence

from simulacra_services.annotation.domain.checks import DEFAULT_LIMITS, Limits, invalid
from simulacra_services.annotation.domain.shapes import (
    check_box,
    check_cuboid,
    check_keypoints,
    check_mask,
    check_pixel_map,
    check_polygon,
    check_rotated_box,
)
from simulacra_services.annotation.domain.identifiers import validate_attributes
from simulacra_services.annotation.domain.model import (
    Annotation,
    AnnotationKind,
    Box,
    BoxBoundsPolicy,
    Category,
    ClassLabel,
    Cuboid3d,
    ImageSize,
    Keypoints,
    Mask,
    PixelMap,
    Polygon,
    RotatedBox,
)

_ANNOTATION_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{0,64}")
_KIND_FIELD = {kind: kind.value for kind in AnnotationKind}  # proto oneof field names


# ---------------------------------------------------------------------------
# Annotations
# ---------------------------------------------------------------------------


def validate_annotations(
    annotations: Sequence[Annotation],
    image: ImageSize,
    categories: Mapping[int, Category],
    *,
    policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT,
    limits: Limits = DEFAULT_LIMITS,
    path: str = "annotations",
) -> list[Annotation]:
    """Check the annotations of one item; return them with boxes clipped (CLIP policy)."""
    if len(annotations) > limits.max_annotations_per_item:
        raise invalid(
            "TOO_MANY_ANNOTATIONS",
            path,
            f"{len(annotations)} annotations, at most {limits.max_annotations_per_item} per item",
            count=len(annotations),
            limit=limits.max_annotations_per_item,
        )
    seen: dict[str, int] = {}
    instance_kinds: dict[tuple[str, AnnotationKind], int] = {}
    checked = []
    for index, annotation in enumerate(annotations):
        field = f"{path}[{index}]"
        if annotation.id:
            if annotation.id in seen:
                raise invalid(
                    "DUPLICATE_ANNOTATION_ID",
                    f"{field}.id",
                    f"id {annotation.id!r} is already used by {path}[{seen[annotation.id]}]",
                    id=annotation.id,
                )
            seen[annotation.id] = index
        checked.append(validate_annotation(annotation, image, categories, policy=policy, limits=limits, path=field))
        if annotation.instance_id:
            # One object has at most one box, one mask, ... : COCO export merges an instance's
            # pieces into one annotation and would silently keep only one of two of a kind.
            key = (annotation.instance_id, annotation.kind)
            if key in instance_kinds:
                raise invalid(
                    "DUPLICATE_INSTANCE_KIND",
                    f"{field}.instance_id",
                    f"instance {annotation.instance_id!r} already has a {annotation.kind.value} annotation "
                    f"({path}[{instance_kinds[key]}]); an instance holds at most one annotation of each kind",
                    instance_id=annotation.instance_id,
                    kind=annotation.kind.value,
                )
            instance_kinds[key] = index
    return checked


def assign_annotation_ids(annotations: Sequence[Annotation]) -> list[Annotation]:
    """Give annotations without an id the next free decimal id ("1", "2", ...)."""
    taken = {a.id for a in annotations if a.id}
    counter = 0
    out = []
    for annotation in annotations:
        if not annotation.id:
            counter += 1
            while str(counter) in taken:
                counter += 1
            annotation = dataclasses.replace(annotation, id=str(counter))
        out.append(annotation)
    return out


def validate_annotation(
    annotation: Annotation,
    image: ImageSize,
    categories: Mapping[int, Category],
    *,
    policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT,
    limits: Limits = DEFAULT_LIMITS,
    path: str = "annotation",
) -> Annotation:
    """Check one annotation; return it (with its box clipped under CLIP)."""
    if annotation.id and not _ANNOTATION_ID.fullmatch(annotation.id):
        raise invalid("INVALID_ANNOTATION_ID", f"{path}.id", "ids are 1-64 characters of A-Z a-z 0-9 . _ -", id=annotation.id)
    if not _INSTANCE_ID.fullmatch(annotation.instance_id):
        raise invalid("INVALID_ANNOTATION_ID", f"{path}.instance_id", "instance ids are up to 64 characters of A-Z a-z 0-9 . _ -", id=annotation.instance_id)
    geometry = annotation.geometry
    category = _category_of(annotation, categories, path)
    if annotation.score is not None and not (math.isfinite(annotation.score) and 0.0 <= annotation.score <= 1.0):
        raise invalid("INVALID_SCORE", f"{path}.score", f"must lie in [0, 1], got {annotation.score}", value=annotation.score)
    if annotation.area is not None and not (math.isfinite(annotation.area) and annotation.area >= 0.0):
        raise invalid("INVALID_AREA", f"{path}.area", f"must be finite and >= 0, got {annotation.area}", value=annotation.area)
    validate_attributes(annotation.attributes, f"{path}.attributes", limits)
    field = f"{path}.{_KIND_FIELD[geometry.kind]}"
    if isinstance(geometry, Box):
        clipped = check_box(geometry, image, policy, field)
        if clipped != geometry:
            return dataclasses.replace(annotation, geometry=clipped)
    elif isinstance(geometry, RotatedBox):
        check_rotated_box(geometry, image, field)
    elif isinstance(geometry, Polygon):
        check_polygon(geometry, limits, field)
    elif isinstance(geometry, Mask):
        check_mask(geometry, image, limits, field)
    elif isinstance(geometry, Keypoints):
        assert category is not None  # _category_of requires one for every kind but pixel maps
        check_keypoints(geometry, category, image, field)
    elif isinstance(geometry, Cuboid3d):
        check_cuboid(geometry, limits, field)
    elif isinstance(geometry, PixelMap):
        check_pixel_map(geometry, image, categories, field)
    elif not isinstance(geometry, ClassLabel):
        raise TypeError(f"unknown annotation geometry {type(geometry).__name__}")
    return annotation


def _category_of(annotation: Annotation, categories: Mapping[int, Category], path: str) -> Category | None:
    if annotation.category_id == 0:
        if annotation.kind is AnnotationKind.PIXEL_MAP:
            return None
        raise invalid("MISSING_CATEGORY", f"{path}.category_id", f"a {annotation.kind.value} annotation needs a category id")
    category = categories.get(annotation.category_id)
    if category is None:
        raise invalid(
            "UNKNOWN_CATEGORY",
            f"{path}.category_id",
            f"category {annotation.category_id} does not exist in the dataset; create it first",
            category_id=annotation.category_id,
        )
    return category
