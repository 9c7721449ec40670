"""Annotations to and from the JSON stored in the database, and canonical digests.

The stored form is exact: Python writes floats as the shortest text that
reads back as the same double, compressed RLE strings are kept as given and
uncompressed counts as integers, so what is read equals what was written.
Pixel maps store a reference to their blob (sha256, dtype, shape), never
the pixels.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from simulacra_services.annotation.domain import model


def geometry_to_json(geometry: model.Geometry) -> dict[str, Any]:
    """The JSON object stored for a geometry (pixel maps: the blob reference only)."""
    if isinstance(geometry, model.ClassLabel):
        return {}
    if isinstance(geometry, model.Box):
        return {"x": geometry.x, "y": geometry.y, "w": geometry.w, "h": geometry.h}
    if isinstance(geometry, model.RotatedBox):
        return {"cx": geometry.cx, "cy": geometry.cy, "w": geometry.w, "h": geometry.h, "angle_degrees": geometry.angle_degrees}
    if isinstance(geometry, model.Polygon):
        return {"parts": [list(part) for part in geometry.parts]}
    if isinstance(geometry, model.Mask):
        counts: Any = geometry.counts if isinstance(geometry.counts, str) else list(geometry.counts)
        return {"height": geometry.height, "width": geometry.width, "counts": counts}
    if isinstance(geometry, model.Keypoints):
        return {"points": [[p.x, p.y, p.visibility] for p in geometry.points]}
    if isinstance(geometry, model.Cuboid3d):
        value: dict[str, Any] = {
            "center": [geometry.center.x, geometry.center.y, geometry.center.z],
            "dimensions": [geometry.dimensions.length, geometry.dimensions.width, geometry.dimensions.height],
            "rotation": [geometry.rotation.w, geometry.rotation.x, geometry.rotation.y, geometry.rotation.z],
            "frame_id": geometry.frame_id,
            "corners": [[c.x, c.y] for c in geometry.projected_corners],
        }
        if geometry.intrinsics is not None:
            i = geometry.intrinsics
            value["intrinsics"] = [i.fx, i.fy, i.cx, i.cy]
        return value
    if isinstance(geometry, model.PixelMap):
        if not geometry.sha256:
            raise ValueError("a pixel map is stored by its blob: write the blob first")
        return {"map_kind": geometry.map_kind.value, "dtype": geometry.dtype.value, "shape": list(geometry.shape), "sha256": geometry.sha256}
    raise TypeError(f"unknown geometry {type(geometry).__name__}")


def geometry_from_json(kind: str, value: Mapping[str, Any]) -> model.Geometry:
    """The geometry of a stored annotation of ``kind`` (an ``model.AnnotationKind`` value)."""
    k = model.AnnotationKind(kind)
    if k is model.AnnotationKind.CLASS_LABEL:
        return model.ClassLabel()
    if k is model.AnnotationKind.BOX:
        return model.Box(value["x"], value["y"], value["w"], value["h"])
    if k is model.AnnotationKind.ROTATED_BOX:
        return model.RotatedBox(value["cx"], value["cy"], value["w"], value["h"], value["angle_degrees"])
    if k is model.AnnotationKind.POLYGON:
        return model.Polygon(tuple(tuple(float(c) for c in part) for part in value["parts"]))
    if k is model.AnnotationKind.MASK:
        counts = value["counts"]
        return model.Mask(value["height"], value["width"], counts if isinstance(counts, str) else tuple(counts))
    if k is model.AnnotationKind.KEYPOINTS:
        return model.Keypoints(tuple(model.Keypoint(float(x), float(y), int(v)) for x, y, v in value["points"]))
    if k is model.AnnotationKind.CUBOID:
        intrinsics = value.get("intrinsics")
        return model.Cuboid3d(
            center=model.Vector3(*(float(c) for c in value["center"])),
            dimensions=model.CuboidDimensions(*(float(c) for c in value["dimensions"])),
            rotation=model.Quaternion(*(float(c) for c in value["rotation"])),
            frame_id=value["frame_id"],
            intrinsics=model.CameraIntrinsics(*(float(c) for c in intrinsics)) if intrinsics is not None else None,
            projected_corners=tuple(model.Point2d(float(x), float(y)) for x, y in value["corners"]),
        )
    return model.PixelMap(
        map_kind=model.PixelMapKind(value["map_kind"]),
        dtype=model.DType(value["dtype"]),
        shape=tuple(int(n) for n in value["shape"]),
        sha256=value["sha256"],
    )


def annotation_to_json(annotation: model.Annotation) -> dict[str, Any]:
    """Every field of an annotation, for digests (the table keeps the same fields in columns)."""
    return {
        "id": annotation.id,
        "kind": annotation.kind.value,
        "category_id": annotation.category_id,
        "instance_id": annotation.instance_id,
        "iscrowd": annotation.iscrowd,
        "score": annotation.score,
        "area": annotation.area,
        "attributes": dict(sorted(annotation.attributes.items())),
        "geometry": geometry_to_json(annotation.geometry),
    }


def canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, shortest float text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
