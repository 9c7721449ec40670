"""The checks of one shape each: boxes, rotated boxes, polygons, masks, keypoints, cuboids, pixel maps.

``validation.validate_annotation`` calls the one of an annotation's kind; the
decisions (what may reach past the image, tolerances) are in ``validation``'s docstring.
Each raises ``errors.InvalidArgument`` with a stable reason and metadata ``field``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from simulacra_services.annotation.domain.checks import BOUNDS_TOLERANCE, CONTROL, Limits, finite, invalid
from simulacra_services.annotation.domain.model import (
    Box,
    BoxBoundsPolicy,
    Category,
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
from simulacra_services.annotation.formats import rle

_PIXEL_MAP_DTYPES = {
    PixelMapKind.SEMANTIC_SEGMENTATION: (DType.UINT8, DType.INT32),
    PixelMapKind.INSTANCE_SEGMENTATION: (DType.UINT8, DType.INT32),
    PixelMapKind.DEPTH: (DType.FLOAT32,),
}


def check_box(box: Box, image: ImageSize, policy: BoxBoundsPolicy, field: str) -> Box:
    """Check a box; under CLIP return it cut to the image."""
    for name in ("x", "y", "w", "h"):
        finite(getattr(box, name), f"{field}.{name}")
    for name in ("w", "h"):
        if getattr(box, name) <= 0:
            raise invalid("INVALID_BOX_SIZE", f"{field}.{name}", f"must be > 0, got {getattr(box, name)}", value=getattr(box, name))
    if policy is BoxBoundsPolicy.CLIP:
        x0, y0 = max(box.x, 0.0), max(box.y, 0.0)
        x1, y1 = min(box.x + box.w, float(image.width)), min(box.y + box.h, float(image.height))
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            raise invalid(
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
            raise invalid(
                "BOX_OUT_OF_BOUNDS",
                f"{field}.{name}",
                f"{message} (choose the CLIP box bounds policy to cut boxes to the image)",
                width=image.width,
                height=image.height,
            )
    return box


def check_rotated_box(box: RotatedBox, image: ImageSize, field: str) -> None:
    for name in ("cx", "cy", "w", "h", "angle_degrees"):
        finite(getattr(box, name), f"{field}.{name}")
    for name in ("w", "h"):
        if getattr(box, name) <= 0:
            raise invalid("INVALID_ROTATED_BOX", f"{field}.{name}", f"must be > 0, got {getattr(box, name)}", value=getattr(box, name))
    if not -180.0 <= box.angle_degrees < 180.0:
        raise invalid("INVALID_ROTATED_BOX", f"{field}.angle_degrees", f"must lie in [-180, 180), got {box.angle_degrees}", value=box.angle_degrees)
    if not (0.0 <= box.cx <= image.width and 0.0 <= box.cy <= image.height):
        raise invalid(
            "BOX_OUT_OF_BOUNDS",
            f"{field}.cx",
            f"center ({box.cx}, {box.cy}) lies outside the {image.width}x{image.height} image",
            width=image.width,
            height=image.height,
        )


def check_polygon(polygon: Polygon, limits: Limits, field: str) -> None:
    if not polygon.parts:
        raise invalid("INVALID_POLYGON", f"{field}.parts", "a polygon needs at least one part")
    if len(polygon.parts) > limits.max_polygon_parts:
        raise invalid(
            "TOO_MANY_POINTS",
            f"{field}.parts",
            f"{len(polygon.parts)} parts, at most {limits.max_polygon_parts}",
            count=len(polygon.parts),
            limit=limits.max_polygon_parts,
        )
    for index, part in enumerate(polygon.parts):
        part_field = f"{field}.parts[{index}].coordinates"
        if len(part) % 2:
            raise invalid("INVALID_POLYGON", part_field, f"needs x, y pairs: got an odd count of {len(part)} numbers", count=len(part))
        if len(part) < 6:
            raise invalid("INVALID_POLYGON", part_field, f"needs at least 3 points, got {len(part) // 2}", count=len(part) // 2)
        if len(part) // 2 > limits.max_points_per_polygon_part:
            raise invalid(
                "TOO_MANY_POINTS",
                part_field,
                f"{len(part) // 2} points, at most {limits.max_points_per_polygon_part}",
                count=len(part) // 2,
                limit=limits.max_points_per_polygon_part,
            )
        for position, value in enumerate(part):
            finite(value, f"{part_field}[{position}]")


def check_mask(mask: Mask, image: ImageSize, limits: Limits, field: str) -> None:
    if (mask.height, mask.width) != (image.height, image.width):
        raise invalid(
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
            raise invalid(
                "INVALID_RLE",
                f"{field}.compressed",
                f"{len(mask.counts)} characters, at most {limits.max_compressed_rle_chars}",
                limit=limits.max_compressed_rle_chars,
            )
        rle.counts_of(mask.counts, mask.height, mask.width, f"{field}.compressed")
    else:
        if len(mask.counts) > mask.height * mask.width + 1:
            raise invalid(
                "INVALID_RLE",
                f"{field}.uncompressed.counts",
                f"{len(mask.counts)} runs, more than the {mask.height * mask.width} pixels allow",
                count=len(mask.counts),
            )
        rle.check_counts(mask.counts, mask.height, mask.width, f"{field}.uncompressed.counts")


def check_keypoints(keypoints: Keypoints, category: Category, image: ImageSize, field: str) -> None:
    expected = len(category.keypoint_names)
    if len(keypoints.points) != expected:
        raise invalid(
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
            raise invalid(
                "INVALID_KEYPOINT_VISIBILITY",
                f"{point_field}.visibility",
                f"must be 0 (not labelled), 1 (hidden) or 2 (visible), got {point.visibility}",
                value=point.visibility,
            )
        finite(point.x, f"{point_field}.x")
        finite(point.y, f"{point_field}.y")
        if point.visibility == 2 and not (0.0 <= point.x <= image.width and 0.0 <= point.y <= image.height):
            raise invalid(
                "KEYPOINT_OUT_OF_BOUNDS",
                point_field,
                f"visible keypoint ({point.x}, {point.y}) lies outside the {image.width}x{image.height} image",
                width=image.width,
                height=image.height,
            )


def check_cuboid(cuboid: Cuboid3d, limits: Limits, field: str) -> None:
    for name in ("x", "y", "z"):
        finite(getattr(cuboid.center, name), f"{field}.center.{name}")
    for name in ("length", "width", "height"):
        value = finite(getattr(cuboid.dimensions, name), f"{field}.dimensions.{name}")
        if value <= 0:
            raise invalid("INVALID_CUBOID", f"{field}.dimensions.{name}", f"must be > 0, got {value}", value=value)
    q = cuboid.rotation
    for name in ("w", "x", "y", "z"):
        finite(getattr(q, name), f"{field}.rotation.{name}")
    norm = math.sqrt(q.w * q.w + q.x * q.x + q.y * q.y + q.z * q.z)
    if abs(norm - 1.0) > limits.quaternion_tolerance:
        raise invalid(
            "QUATERNION_NOT_NORMALIZED",
            f"{field}.rotation",
            f"|q| = {norm:.6g}; a rotation needs a unit quaternion (within {limits.quaternion_tolerance})",
            norm=norm,
            tolerance=limits.quaternion_tolerance,
        )
    if not 1 <= len(cuboid.frame_id) <= limits.max_frame_id_chars or CONTROL.search(cuboid.frame_id):
        raise invalid(
            "INVALID_CUBOID",
            f"{field}.frame_id",
            f"needs 1-{limits.max_frame_id_chars} printable characters naming the coordinate frame",
            limit=limits.max_frame_id_chars,
        )
    if cuboid.intrinsics is not None:
        for name in ("fx", "fy", "cx", "cy"):
            value = finite(getattr(cuboid.intrinsics, name), f"{field}.intrinsics.{name}")
            if name in ("fx", "fy") and value <= 0:
                raise invalid("INVALID_CUBOID", f"{field}.intrinsics.{name}", f"focal length must be > 0, got {value}", value=value)
    if len(cuboid.projected_corners) not in (0, 8):
        raise invalid(
            "INVALID_CUBOID",
            f"{field}.projected_corners",
            f"give all 8 projected corners or none, got {len(cuboid.projected_corners)}",
            count=len(cuboid.projected_corners),
        )
    for index, corner in enumerate(cuboid.projected_corners):
        finite(corner.x, f"{field}.projected_corners[{index}].x")
        finite(corner.y, f"{field}.projected_corners[{index}].y")


def check_pixel_map(pixel_map: PixelMap, image: ImageSize, categories: Mapping[int, Category], field: str) -> None:
    allowed = _PIXEL_MAP_DTYPES[pixel_map.map_kind]
    if pixel_map.dtype not in allowed:
        raise invalid(
            "INVALID_PIXEL_MAP",
            f"{field}.tensor.dtype",
            f"a {pixel_map.map_kind.value} map holds {' or '.join(d.value for d in allowed)}, got {pixel_map.dtype.value}",
            dtype=pixel_map.dtype.value,
        )
    if tuple(pixel_map.shape) not in ((image.height, image.width), (image.height, image.width, 1)):
        raise invalid(
            "PIXEL_MAP_SIZE_MISMATCH",
            f"{field}.tensor.shape",
            f"shape {list(pixel_map.shape)} differs from the image's [{image.height}, {image.width}]",
            shape=list(pixel_map.shape),
            height=image.height,
            width=image.width,
        )
    if pixel_map.data is None:
        if not pixel_map.sha256:
            raise invalid("INVALID_PIXEL_MAP", f"{field}.tensor.data", "a pixel map needs its data (or a stored blob)")
        return
    expected = image.height * image.width * pixel_map.dtype.itemsize
    if len(pixel_map.data) != expected:
        raise invalid(
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
            raise invalid(
                "UNKNOWN_CATEGORY",
                f"{field}.tensor.data",
                f"the map holds category ids that do not exist: {unknown[:10]}",
                category_ids=unknown[:10],
            )
