"""Validation of items' annotations, categories and identifiers.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from simulacra_services.annotation.domain import names
from simulacra_services.annotation.formats import rle
from simulacra_services.annotation.domain.model import (
    Annotation,
    AnnotationKind,
    Box,
    BoxBoundsPolicy,
    Category,
    ClassLabel,
    Cuboid3d,
    DType,
    ImageSize,
    Keypoints,
    Mask,
    PixelMap,
    PixelMapKind,
    Polygon,
    RotatedBox,
)
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

_ANNOTATION_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{0,64}")
_DATASET_ID = re.compile(names.DATASET_ID)
_ITEM_ID = re.compile(names.ITEM_ID)
_SPLIT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_KEY = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_PIXEL_MAP_DTYPES = {
    PixelMapKind.SEMANTIC_SEGMENTATION: (DType.UINT8, DType.INT32),
    PixelMapKind.INSTANCE_SEGMENTATION: (DType.UINT8, DType.INT32),
    PixelMapKind.DEPTH: (DType.FLOAT32,),
}
_KIND_FIELD = {kind: kind.value for kind in AnnotationKind}  # proto oneof field names


def _invalid(reason: str, field: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field, **metadata})


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise _invalid("NON_FINITE_NUMBER", field, f"must be a finite number, got {value}", value=value)
    return value


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
        raise _invalid(
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
                raise _invalid(
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
                raise _invalid(
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
        raise _invalid("INVALID_ANNOTATION_ID", f"{path}.id", "ids are 1-64 characters of A-Z a-z 0-9 . _ -", id=annotation.id)
    if not _INSTANCE_ID.fullmatch(annotation.instance_id):
        raise _invalid("INVALID_ANNOTATION_ID", f"{path}.instance_id", "instance ids are up to 64 characters of A-Z a-z 0-9 . _ -", id=annotation.instance_id)
    geometry = annotation.geometry
    category = _category_of(annotation, categories, path)
    if annotation.score is not None and not (math.isfinite(annotation.score) and 0.0 <= annotation.score <= 1.0):
        raise _invalid("INVALID_SCORE", f"{path}.score", f"must lie in [0, 1], got {annotation.score}", value=annotation.score)
    if annotation.area is not None and not (math.isfinite(annotation.area) and annotation.area >= 0.0):
        raise _invalid("INVALID_AREA", f"{path}.area", f"must be finite and >= 0, got {annotation.area}", value=annotation.area)
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
        raise _invalid("MISSING_CATEGORY", f"{path}.category_id", f"a {annotation.kind.value} annotation needs a category id")
    category = categories.get(annotation.category_id)
    if category is None:
        raise _invalid(
            "UNKNOWN_CATEGORY",
            f"{path}.category_id",
            f"category {annotation.category_id} does not exist in the dataset; create it first",
            category_id=annotation.category_id,
        )
    return category


def check_box(box: Box, image: ImageSize, policy: BoxBoundsPolicy, field: str) -> Box:
    """Check a box; under CLIP return it cut to the image."""
    for name in ("x", "y", "w", "h"):
        _finite(getattr(box, name), f"{field}.{name}")
    for name in ("w", "h"):
        if getattr(box, name) <= 0:
            raise _invalid("INVALID_BOX_SIZE", f"{field}.{name}", f"must be > 0, got {getattr(box, name)}", value=getattr(box, name))
    if policy is BoxBoundsPolicy.CLIP:
        x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
        x1, y1 = min(box.x + box.w, float(image.width)), min(box.y + box.h, float(image.height))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            raise _invalid(
                "BOX_OUT_OF_BOUNDS",
                field,
                f"box {box.x}, {box.y}, {box.w}, {box.h} has no area inside the {image.width}x{image.height} image",
                width=image.width,
                height=image.height,
            )
        if (x0, y0, x1, y1) == (box.x, box.y, box.x + box.w, box.y + box.h):
            return box
        return Box(x0, y0, x1 - x0, y1 - y0)
    edges = (
        ("x", box.x >= -BOUNDS_TOLERANCE, f"x = {box.x} lies left of the image"),
        ("y", box.y >= -BOUNDS_TOLERANCE, f"y = {box.y} lies above the image"),
        ("w", box.x + box.w <= image.width + BOUNDS_TOLERANCE, f"x + w = {box.x + box.w} exceeds the image width {image.width}"),
        ("h", box.y + box.h <= image.height + BOUNDS_TOLERANCE, f"y + h = {box.y + box.h} exceeds the image height {image.height}"),
    )
    for name, inside, message in edges:
        if not inside:
            raise _invalid(
                "BOX_OUT_OF_BOUNDS",
                f"{field}.{name}",
                f"{message} (choose the CLIP box bounds policy to cut boxes to the image)",
                width=image.width,
                height=image.height,
            )
    return box


def check_rotated_box(box: RotatedBox, image: ImageSize, field: str) -> None:
    for name in ("cx", "cy", "w", "h", "angle_degrees"):
        _finite(getattr(box, name), f"{field}.{name}")
    for name in ("w", "h"):
        if getattr(box, name) <= 0:
            raise _invalid("INVALID_ROTATED_BOX", f"{field}.{name}", f"must be > 0, got {getattr(box, name)}", value=getattr(box, name))
    if not -180.0 <= box.angle_degrees < 180.0:
        raise _invalid("INVALID_ROTATED_BOX", f"{field}.angle_degrees", f"must lie in [-180, 180), got {box.angle_degrees}", value=box.angle_degrees)
    if not (0.0 <= box.cx <= image.width and 0.0 <= box.cy <= image.height):
        raise _invalid(
            "BOX_OUT_OF_BOUNDS",
            f"{field}.cx",
            f"center ({box.cx}, {box.cy}) lies outside the {image.width}x{image.height} image",
            width=image.width,
            height=image.height,
        )


def check_polygon(polygon: Polygon, limits: Limits, field: str) -> None:
    if not polygon.parts:
        raise _invalid("INVALID_POLYGON", f"{field}.parts", "a polygon needs at least one part")
    if len(polygon.parts) > limits.max_polygon_parts:
        raise _invalid(
            "TOO_MANY_POINTS",
            f"{field}.parts",
            f"{len(polygon.parts)} parts, at most {limits.max_polygon_parts}",
            count=len(polygon.parts),
            limit=limits.max_polygon_parts,
        )
    for index, part in enumerate(polygon.parts):
        part_field = f"{field}.parts[{index}].coordinates"
        if len(part) % 2:
            raise _invalid("INVALID_POLYGON", part_field, f"needs x, y pairs: got an odd count of {len(part)} numbers", count=len(part))
        if len(part) < 6:
            raise _invalid("INVALID_POLYGON", part_field, f"needs at least 3 points, got {len(part) // 2}", count=len(part) // 2)
        if len(part) // 2 > limits.max_points_per_polygon_part:
            raise _invalid(
                "TOO_MANY_POINTS",
                part_field,
                f"{len(part) // 2} points, at most {limits.max_points_per_polygon_part}",
                count=len(part) // 2,
                limit=limits.max_points_per_polygon_part,
            )
        for position, value in enumerate(part):
            _finite(value, f"{part_field}[{position}]")


def check_mask(mask: Mask, image: ImageSize, limits: Limits, field: str) -> None:
    if (mask.height, mask.width) != (image.height, image.width):
        raise _invalid(
            "RLE_SIZE_MISMATCH",
            f"{field}.height",
            f"mask size {mask.height}x{mask.width} (h x w) differs from the image's {image.height}x{image.width}",
            mask_height=mask.height,
            mask_width=mask.width,
            height=image.height,
            width=image.width,
        )
    if isinstance(mask.counts, str):
        if len(mask.counts) > limits.max_compressed_rle_chars:
            raise _invalid(
                "INVALID_RLE",
                f"{field}.compressed",
                f"{len(mask.counts)} characters, at most {limits.max_compressed_rle_chars}",
                limit=limits.max_compressed_rle_chars,
            )
        rle.counts_of(mask.counts, mask.height, mask.width, f"{field}.compressed")
    else:
        if len(mask.counts) > mask.height * mask.width + 1:
            raise _invalid(
                "INVALID_RLE",
                f"{field}.uncompressed.counts",
                f"{len(mask.counts)} runs, more than the {mask.height * mask.width} pixels allow",
                count=len(mask.counts),
            )
        rle.check_counts(mask.counts, mask.height, mask.width, f"{field}.uncompressed.counts")


def check_keypoints(keypoints: Keypoints, category: Category, image: ImageSize, field: str) -> None:
    expected = len(category.keypoint_names)
    if len(keypoints.points) != expected:
        raise _invalid(
            "KEYPOINT_COUNT_MISMATCH",
            f"{field}.points",
            f"category {category.display_name!r} has {expected} keypoints, the annotation {len(keypoints.points)}",
            expected=expected,
            count=len(keypoints.points),
            category_id=category.category_id,
        )
    for index, point in enumerate(keypoints.points):
        point_field = f"{field}.points[{index}]"
        if point.visibility not in (0, 1, 2):
            raise _invalid(
                "INVALID_KEYPOINT_VISIBILITY",
                f"{point_field}.visibility",
                f"must be 0 (not labelled), 1 (hidden) or 2 (visible), got {point.visibility}",
                value=point.visibility,
            )
        _finite(point.x, f"{point_field}.x")
        _finite(point.y, f"{point_field}.y")
        if point.visibility == 2 and not (0.0 <= point.x <= image.width and 0.0 <= point.y <= image.height):
            raise _invalid(
                "KEYPOINT_OUT_OF_BOUNDS",
                point_field,
                f"visible keypoint ({point.x}, {point.y}) lies outside the {image.width}x{image.height} image",
                width=image.width,
                height=image.height,
            )


def check_cuboid(cuboid: Cuboid3d, limits: Limits, field: str) -> None:
    for name in ("x", "y", "z"):
        _finite(getattr(cuboid.center, name), f"{field}.center.{name}")
    for name in ("length", "width", "height"):
        value = _finite(getattr(cuboid.dimensions, name), f"{field}.dimensions.{name}")
        if value <= 0:
            raise _invalid("INVALID_CUBOID", f"{field}.dimensions.{name}", f"must be > 0, got {value}", value=value)
    q = cuboid.rotation
    for name in ("w", "x", "y", "z"):
        _finite(getattr(q, name), f"{field}.rotation.{name}")
    norm = math.sqrt(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z)
    if abs(norm - 1.0) > limits.quaternion_tolerance:
        raise _invalid(
            "QUATERNION_NOT_NORMALIZED",
            f"{field}.rotation",
            f"|q| = {norm:.6g}; a rotation needs a unit quaternion (within {limits.quaternion_tolerance})",
            norm=norm,
            tolerance=limits.quaternion_tolerance,
        )
    if not 1 <= len(cuboid.frame_id) <= limits.max_frame_id_chars or _CONTROL.search(cuboid.frame_id):
        raise _invalid(
            "INVALID_CUBOID",
            f"{field}.frame_id",
            f"needs 1-{limits.max_frame_id_chars} printable characters naming the coordinate frame",
            limit=limits.max_frame_id_chars,
        )
    if cuboid.intrinsics is not None:
        for name in ("fx", "fy", "cx", "cy"):
            value = _finite(getattr(cuboid.intrinsics, name), f"{field}.intrinsics.{name}")
            if name in ("fx", "fy") and value <= 0:
                raise _invalid("INVALID_CUBOID", f"{field}.intrinsics.{name}", f"focal length must be > 0, got {value}", value=value)
    if len(cuboid.projected_corners) not in (0, 8):
        raise _invalid(
            "INVALID_CUBOID",
            f"{field}.projected_corners",
            f"give all 8 projected corners or none, got {len(cuboid.projected_corners)}",
            count=len(cuboid.projected_corners),
        )
    for index, corner in enumerate(cuboid.projected_corners):
        _finite(corner.x, f"{field}.projected_corners[{index}].x")
        _finite(corner.y, f"{field}.projected_corners[{index}].y")


def check_pixel_map(pixel_map: PixelMap, image: ImageSize, categories: Mapping[int, Category], field: str) -> None:
    allowed = _PIXEL_MAP_DTYPES[pixel_map.map_kind]
    if pixel_map.dtype not in allowed:
        raise _invalid(
            "INVALID_PIXEL_MAP",
            f"{field}.tensor.dtype",
            f"a {pixel_map.map_kind.value} map holds {' or '.join(d.value for d in allowed)}, got {pixel_map.dtype.value}",
            dtype=pixel_map.dtype.value,
        )
    if tuple(pixel_map.shape) not in ((image.height, image.width), (image.height, image.width, 1)):
        raise _invalid(
            "PIXEL_MAP_SIZE_MISMATCH",
            f"{field}.tensor.shape",
            f"shape {list(pixel_map.shape)} differs from the image's [{image.height}, {image.width}]",
            shape=list(pixel_map.shape),
            height=image.height,
            width=image.width,
        )
    if pixel_map.data is None:
        if not pixel_map.sha256:
            raise _invalid("INVALID_PIXEL_MAP", f"{field}.tensor.data", "a pixel map needs its data (or a stored blob)")
        return
    expected = image.height * image.width * pixel_map.dtype.itemsize
    if len(pixel_map.data) != expected:
        raise _invalid(
            "INVALID_PIXEL_MAP",
            f"{field}.tensor.data",
            f"{len(pixel_map.data)} bytes, but shape and dtype need {expected}",
            size=len(pixel_map.data),
            expected=expected,
        )
    if pixel_map.map_kind is PixelMapKind.SEMANTIC_SEGMENTATION:
        values = np.unique(np.frombuffer(pixel_map.data, dtype=np.dtype(pixel_map.dtype.value).newbyteorder("<")))
        unknown = [int(v) for v in values if v != 0 and int(v) not in categories]
        if unknown:
            raise _invalid(
                "UNKNOWN_CATEGORY",
                f"{field}.tensor.data",
                f"the map holds category ids that do not exist: {unknown[:10]}",
                category_ids=unknown[:10],
            )


# ---------------------------------------------------------------------------
# Attributes, categories, identifiers
# ---------------------------------------------------------------------------


def validate_attributes(attributes: Mapping[str, str], path: str = "attributes", limits: Limits = DEFAULT_LIMITS) -> None:
    if len(attributes) > limits.max_attributes:
        raise _invalid("INVALID_ATTRIBUTES", path, f"{len(attributes)} entries, at most {limits.max_attributes}", count=len(attributes), limit=limits.max_attributes)
    for key, value in attributes.items():
        if not _KEY.fullmatch(key):
            raise _invalid("INVALID_ATTRIBUTES", f"{path}[{key!r}]", "keys are 1-64 characters of a-z 0-9 _, not starting with a digit", key=key)
        if len(value) > limits.max_attribute_value_chars:
            raise _invalid(
                "INVALID_ATTRIBUTES",
                f"{path}[{key!r}]",
                f"value of {len(value)} characters, at most {limits.max_attribute_value_chars}",
                key=key,
                limit=limits.max_attribute_value_chars,
            )


def _check_name(value: str, field: str, reason: str, limits: Limits, *, required: bool) -> None:
    if (required and not value) or len(value) > limits.max_name_chars or _CONTROL.search(value):
        need = "1" if required else "0"
        raise _invalid(reason, field, f"needs {need}-{limits.max_name_chars} printable characters", limit=limits.max_name_chars)


def validate_category(category: Category, path: str = "category", limits: Limits = DEFAULT_LIMITS) -> None:
    if not 1 <= category.category_id <= MAX_CATEGORY_ID:
        raise _invalid(
            "INVALID_CATEGORY",
            f"{path}.category_id",
            f"category ids run from 1 to {MAX_CATEGORY_ID}, got {category.category_id}",
            category_id=category.category_id,
        )
    _check_name(category.display_name, f"{path}.display_name", "INVALID_CATEGORY", limits, required=True)
    _check_name(category.supercategory, f"{path}.supercategory", "INVALID_CATEGORY", limits, required=False)
    names = category.keypoint_names
    if len(names) > limits.max_keypoints:
        raise _invalid("INVALID_CATEGORY", f"{path}.keypoint_names", f"{len(names)} keypoints, at most {limits.max_keypoints}", limit=limits.max_keypoints)
    for index, name in enumerate(names):
        _check_name(name, f"{path}.keypoint_names[{index}]", "INVALID_CATEGORY", limits, required=True)
        if name in names[:index]:
            raise _invalid("INVALID_CATEGORY", f"{path}.keypoint_names[{index}]", f"keypoint name {name!r} appears twice", name=name)
    for pairs_name, pairs in (("skeleton", category.skeleton), ("flip_pairs", category.flip_pairs)):
        for index, (first, second) in enumerate(pairs):
            pair_field = f"{path}.{pairs_name}[{index}]"
            if not (0 <= first < len(names) and 0 <= second < len(names)):
                raise _invalid(
                    "INVALID_CATEGORY",
                    pair_field,
                    f"indices ({first}, {second}) must be 0-based indices of the {len(names)} keypoint names",
                    count=len(names),
                )
            if first == second:
                raise _invalid("INVALID_CATEGORY", pair_field, f"pairs two different keypoints, got ({first}, {second})")
    flipped = [index for pair in category.flip_pairs for index in pair]
    if len(flipped) != len(set(flipped)):
        raise _invalid("INVALID_CATEGORY", f"{path}.flip_pairs", "each keypoint may belong to at most one flip pair")


def category_schema(category: Category) -> tuple[object, ...]:
    """What annotations of a category depend on: its name, supercategory and keypoint schema.

    Two categories with the same id agree when their schemas are equal. The
    import planner and ``store.ensure_categories`` both decide CATEGORY_CONFLICT
    with this one function, so a difference (a flip pair, say) is a conflict
    wherever it is found. Lists and tuples compare alike (rows hold JSON lists).
    """
    return (
        category.display_name,
        category.supercategory,
        tuple(category.keypoint_names),
        tuple((int(a), int(b)) for a, b in category.skeleton),
        tuple((int(a), int(b)) for a, b in category.flip_pairs),
    )


def categories_agree(first: Category, second: Category) -> bool:
    """The same id and the same schema (see ``category_schema``)."""
    return first.category_id == second.category_id and category_schema(first) == category_schema(second)


def validate_categories(categories: Iterable[Category], path: str = "categories", limits: Limits = DEFAULT_LIMITS) -> None:
    """Each category valid; ids and display names unique."""
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    for index, category in enumerate(categories):
        field = f"{path}[{index}]"
        validate_category(category, field, limits)
        if category.category_id in ids:
            raise _invalid(
                "DUPLICATE_CATEGORY",
                f"{field}.category_id",
                f"id {category.category_id} is already used by {path}[{ids[category.category_id]}]",
                category_id=category.category_id,
            )
        if category.display_name in names:
            raise _invalid(
                "DUPLICATE_CATEGORY",
                f"{field}.display_name",
                f"name {category.display_name!r} is already used by {path}[{names[category.display_name]}]",
                display_name=category.display_name,
            )
        ids[category.category_id] = index
        names[category.display_name] = index


def validate_dataset_id(dataset_id: str, field: str = "dataset_id") -> None:
    if not _DATASET_ID.fullmatch(dataset_id):
        raise _invalid(
            "INVALID_DATASET_ID",
            field,
            f"{dataset_id!r} is not a dataset id: 1-63 characters of a-z 0-9 -, starting with a letter",
            dataset_id=dataset_id,
        )


def validate_item_id(item_id: str, field: str = "item_id") -> None:
    if not _ITEM_ID.fullmatch(item_id) or ".." in item_id:
        raise _invalid(
            "INVALID_ITEM_ID",
            field,
            f"{item_id!r} is not an item id: 1-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit, no '..'",
            item_id=item_id,
        )


def normalize_split(split: str, field: str = "split") -> str:
    """The split to store: empty means "train"."""
    if not split:
        return "train"
    if not _SPLIT.fullmatch(split):
        raise _invalid("INVALID_SPLIT", field, f"{split!r} is not a split name: 1-32 characters of a-z 0-9 _ -", split=split)
    return split


def validate_relative_path(value: str, field: str = "path", limits: Limits = DEFAULT_LIMITS) -> None:
    """A file name or manifest path: relative, "/"-separated, no "..", no control characters."""
    parts = value.split("/")
    if (
        not value
        or len(value) > limits.max_path_chars
        or value.startswith("/")
        or "\\" in value
        or _CONTROL.search(value)
        or any(part in ("", ".", "..") for part in parts)
    ):
        raise _invalid(
            "INVALID_PATH",
            field,
            f"{errors.shown(value)!r} is not a relative path: 1-{limits.max_path_chars} characters, '/' separators, no '..', '.', empty parts, leading '/', backslashes or control characters",
            limit=limits.max_path_chars,
        )
