"""COCO object-detection/keypoint JSON <-> domain objects, without storage.

Import (``parse_coco``) checks the document's structure and every annotation
(with ``validation``), so an import job can reject a file before it writes
anything; errors name the COCO record (``annotations[12].box.w``, reason
``INVALID_COCO`` for structure, the validation reasons otherwise).

Mapping, both ways:

- categories: ``id``, ``name`` -> display_name, ``supercategory``,
  ``keypoints`` -> keypoint_names, ``skeleton`` (1-based in COCO) -> 0-based
  pairs. COCO has no flip pairs: import pairs keypoints named ``left_X`` and
  ``right_X`` (the COCO person convention); export leaves them out.
- images: one ``CocoImage`` each (id, file_name, width, height).
- annotations: one COCO annotation becomes up to three of ours, sharing
  ``instance_id = str(coco id)``: ``bbox`` -> Box (id ``{coco id}-box``),
  ``segmentation`` -> Polygon or Mask (``-seg``; RLE kept compressed or not,
  as given), ``keypoints`` -> Keypoints (``-kp``, only when the category has
  keypoints and some point is labelled). ``iscrowd`` goes on each piece,
  ``area`` on the segmentation (else the first piece). ``num_keypoints``
  is derived, not stored.
- Export merges annotations with the same ``instance_id`` back into one COCO
  annotation; its id is the instance id when every instance id of the export
  is a distinct positive integer, else annotations are numbered 1..N. A
  missing bbox is derived from the mask, polygon or labelled keypoints; a
  missing area from the mask (pixel count), polygon (shoelace) or box.
  Kinds COCO cannot hold (class labels, rotated boxes, cuboids, pixel maps)
  are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from simulacra_services.annotation.domain import identifiers, validation
from simulacra_services.annotation.formats import rle
from simulacra_services.annotation.domain.model import (
    Annotation,
    AnnotationKind,
    Box,
    BoxBoundsPolicy,
    Category,
    ImageSize,
    Keypoint,
    Keypoints,
    Mask,
    Polygon,
)
from simulacra_services.core import errors

MAX_COCO_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True)
class CocoImage:
    """One COCO image with its annotations in our model."""

    image_id: int
    file_name: str
    width: int
    height: int
    annotations: tuple[Annotation, ...] = ()


@dataclass(frozen=True)
class CocoDataset:
    categories: tuple[Category, ...]
    images: tuple[CocoImage, ...]


@dataclass
class ExportCounts:
    annotations_exported: int = 0
    skipped: Counter[AnnotationKind] = field(default_factory=Counter)


def _invalid(path: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument("INVALID_COCO", f"{path}: {message}", {"field": path, **metadata})


def _int(record: Mapping[str, Any], key: str, path: str, *, minimum: int | None = None) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{path}.{key}", f"must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise _invalid(f"{path}.{key}", f"must be >= {minimum}, got {value}")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(path, f"must be a number, got {value!r}")
    return float(value)


def _list(record: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = record.get(key)
    if not isinstance(value, list):
        raise _invalid(f"{path}.{key}" if path else key, f"must be a list, got {type(value).__name__}")
    return value


def _record(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _invalid(path, f"must be an object, got {type(value).__name__}")
    return value


# ---------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------


def load_coco(data: bytes, *, policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT, max_bytes: int = MAX_COCO_BYTES) -> CocoDataset:
    """Parse COCO JSON bytes (at most ``max_bytes``)."""
    if len(data) > max_bytes:
        raise errors.InvalidArgument(
            "COCO_FILE_TOO_LARGE", f"the COCO file has {len(data)} bytes, at most {max_bytes}", {"size": len(data), "limit": max_bytes}
        )
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        position = getattr(error, "pos", getattr(error, "start", 0))
        raise errors.InvalidArgument("INVALID_COCO", f"the COCO file is not JSON: {error}", {"field": "", "position": position}) from None
    except RecursionError:
        # json's C parser recurses once per nesting level; COCO needs a handful.
        raise errors.InvalidArgument(
            "INVALID_COCO", "the COCO file nests arrays or objects too deeply to be a COCO document", {"field": ""}
        ) from None
    return parse_coco(_record(document, "document"), policy=policy)


def _flip_pairs(names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    index = {name: i for i, name in enumerate(names)}
    return tuple((i, index["right_" + name[5:]]) for i, name in enumerate(names) if name.startswith("left_") and "right_" + name[5:] in index)


def parse_category(record: Mapping[str, Any], path: str) -> Category:
    names = record.get("keypoints", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _invalid(f"{path}.keypoints", "must be a list of keypoint names")
    skeleton = []
    for index, edge in enumerate(record.get("skeleton", [])):
        if not (isinstance(edge, list) and len(edge) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in edge)):
            raise _invalid(f"{path}.skeleton[{index}]", f"must be a pair of 1-based keypoint numbers, got {edge!r}")
        skeleton.append((edge[0] - 1, edge[1] - 1))
    name = record.get("name")
    supercategory = record.get("supercategory", "")
    if not isinstance(name, str) or not isinstance(supercategory, str):
        raise _invalid(path, "name and supercategory must be strings")
    category = Category(
        category_id=_int(record, "id", path),
        display_name=name,
        supercategory=supercategory,
        keypoint_names=tuple(names),
        skeleton=tuple(skeleton),
        flip_pairs=_flip_pairs(names),
    )
    identifiers.validate_category(category, path)
    return category


def _segmentation(value: Any, path: str) -> Polygon | Mask:
    if isinstance(value, list):
        parts = []
        for index, part in enumerate(value):
            if not isinstance(part, list):
                raise _invalid(f"{path}[{index}]", "a polygon must be a list of numbers")
            parts.append(tuple(_number(v, f"{path}[{index}][{j}]") for j, v in enumerate(part)))
        return Polygon(tuple(parts))
    if isinstance(value, dict):
        size = value.get("size")
        counts = value.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
            raise _invalid(f"{path}.size", f"must be [height, width], got {size!r}")
        if isinstance(counts, str):
            return Mask(size[0], size[1], counts)
        if isinstance(counts, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            return Mask(size[0], size[1], tuple(counts))
        raise _invalid(f"{path}.counts", "must be a list of run lengths or a compressed RLE string")
    raise _invalid(path, "must be a list of polygons or an RLE object")


def _keypoints(value: Any, path: str) -> Keypoints:
    if not isinstance(value, list) or len(value) % 3:
        raise _invalid(path, "must be a flat list of x, y, visibility triples")
    points = []
    for i in range(0, len(value), 3):
        visibility = value[i + 2]
        if isinstance(visibility, float) and visibility.is_integer():
            visibility = int(visibility)
        if isinstance(visibility, bool) or not isinstance(visibility, int):
            raise _invalid(f"{path}[{i + 2}]", f"visibility must be 0, 1 or 2, got {visibility!r}")
        points.append(Keypoint(_number(value[i], f"{path}[{i}]"), _number(value[i + 1], f"{path}[{i + 1}]"), visibility))
    return Keypoints(tuple(points))


def parse_annotation(
    record: Mapping[str, Any], image: ImageSize, categories: Mapping[int, Category], path: str, policy: BoxBoundsPolicy
) -> list[Annotation]:
    """Our annotations (box, segmentation, keypoints) of one COCO annotation, validated."""
    coco_id = _int(record, "id", path, minimum=1)
    category_id = _int(record, "category_id", path)
    iscrowd_value = record.get("iscrowd", 0)
    if iscrowd_value not in (0, 1) or isinstance(iscrowd_value, float):
        raise _invalid(f"{path}.iscrowd", f"must be 0 or 1, got {iscrowd_value!r}")
    iscrowd = bool(iscrowd_value)
    area = _number(record["area"], f"{path}.area") if "area" in record else None
    common = dict(category_id=category_id, instance_id=str(coco_id), iscrowd=iscrowd)
    pieces: list[Annotation] = []
    segmentation = record.get("segmentation")
    has_segmentation = segmentation not in (None, [])
    if "bbox" in record:
        bbox = record["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise _invalid(f"{path}.bbox", f"must be [x, y, width, height], got {bbox!r}")
        box = Box(*(_number(v, f"{path}.bbox[{i}]") for i, v in enumerate(bbox)))
        pieces.append(Annotation(box, id=f"{coco_id}-box", **common))
    if has_segmentation:
        geometry = _segmentation(segmentation, f"{path}.segmentation")
        pieces.append(Annotation(geometry, id=f"{coco_id}-seg", **common))
    category = categories.get(category_id)
    if "keypoints" in record and category is not None and category.keypoint_names:
        keypoints = _keypoints(record["keypoints"], f"{path}.keypoints")
        if any(p.visibility for p in keypoints.points):
            pieces.append(Annotation(keypoints, id=f"{coco_id}-kp", **common))
    if not pieces:
        raise _invalid(path, "has no bbox, segmentation or keypoints")
    if area is not None:  # on the segmentation when there is one, else the first piece
        holder = 1 if has_segmentation and "bbox" in record else 0
        pieces[holder] = dataclasses.replace(pieces[holder], area=area)
    return [validation.validate_annotation(piece, image, categories, policy=policy, path=path) for piece in pieces]


def parse_coco(document: Mapping[str, Any], *, policy: BoxBoundsPolicy = BoxBoundsPolicy.REJECT) -> CocoDataset:
    """Categories and images (with validated annotations) of a COCO document."""
    categories: dict[int, Category] = {}
    raw_categories = _list(document, "categories", "")
    parsed_categories = [parse_category(_record(c, f"categories[{i}]"), f"categories[{i}]") for i, c in enumerate(raw_categories)]
    identifiers.validate_categories(parsed_categories)
    categories = {c.category_id: c for c in parsed_categories}

    images: dict[int, tuple[str, ImageSize]] = {}
    order: list[int] = []
    file_names: dict[str, int] = {}
    for index, raw in enumerate(_list(document, "images", "")):
        path = f"images[{index}]"
        record = _record(raw, path)
        image_id = _int(record, "id", path)
        file_name = record.get("file_name")
        if not isinstance(file_name, str):
            raise _invalid(f"{path}.file_name", "must be a string")
        identifiers.validate_relative_path(file_name, f"{path}.file_name")
        if image_id in images:
            raise _invalid(f"{path}.id", f"image id {image_id} appears twice", image_id=image_id)
        if file_name in file_names:
            raise _invalid(f"{path}.file_name", f"file name {file_name!r} is used by images[{file_names[file_name]}] too", file_name=file_name)
        file_names[file_name] = index
        images[image_id] = (file_name, ImageSize(_int(record, "width", path, minimum=1), _int(record, "height", path, minimum=1)))
        order.append(image_id)

    annotations: dict[int, list[Annotation]] = {image_id: [] for image_id in order}
    seen_ids: set[int] = set()
    for index, raw in enumerate(document.get("annotations", [])):
        path = f"annotations[{index}]"
        record = _record(raw, path)
        image_id = _int(record, "image_id", path)
        if image_id not in images:
            raise _invalid(f"{path}.image_id", f"image {image_id} is not in images", image_id=image_id)
        coco_id = _int(record, "id", path, minimum=1)
        if coco_id in seen_ids:
            raise _invalid(f"{path}.id", f"annotation id {coco_id} appears twice", annotation_id=coco_id)
        seen_ids.add(coco_id)
        annotations[image_id].extend(parse_annotation(record, images[image_id][1], categories, path, policy))

    return CocoDataset(
        categories=tuple(sorted(categories.values(), key=lambda c: c.category_id)),
        images=tuple(
            CocoImage(image_id, images[image_id][0], images[image_id][1].width, images[image_id][1].height, tuple(annotations[image_id]))
            for image_id in order
        ),
    )


# ---------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------

_COCO_KINDS = (AnnotationKind.BOX, AnnotationKind.POLYGON, AnnotationKind.MASK, AnnotationKind.KEYPOINTS)


def category_to_coco(category: Category) -> dict[str, Any]:
    record: dict[str, Any] = {"id": category.category_id, "name": category.display_name, "supercategory": category.supercategory}
    if category.keypoint_names:
        record["keypoints"] = list(category.keypoint_names)
        record["skeleton"] = [[a + 1, b + 1] for a, b in category.skeleton]
    return record


def _polygon_area(polygon: Polygon) -> float:
    total = 0.0
    for part in polygon.parts:
        xs, ys = part[0::2], part[1::2]
        total += abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2.0
    return total


def _bbox_of(geometry: Polygon | Mask | Keypoints) -> list[float]:
    if isinstance(geometry, Mask):
        counts = rle.counts_of(geometry.counts, geometry.height, geometry.width)
        return list(rle.to_bbox(counts, geometry.height))
    if isinstance(geometry, Polygon):
        xs = [x for part in geometry.parts for x in part[0::2]]
        ys = [y for part in geometry.parts for y in part[1::2]]
    else:
        xs = [p.x for p in geometry.points if p.visibility]
        ys = [p.y for p in geometry.points if p.visibility]
    if not xs:
        return [0.0, 0.0, 0.0, 0.0]
    return [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]


def _segmentation_to_coco(geometry: Polygon | Mask) -> Any:
    if isinstance(geometry, Polygon):
        return [list(part) for part in geometry.parts]
    counts = geometry.counts if isinstance(geometry.counts, str) else list(geometry.counts)
    return {"size": [geometry.height, geometry.width], "counts": counts}


def _instance_groups(annotations: Iterable[Annotation], counts: ExportCounts) -> list[list[Annotation]]:
    groups: dict[str, list[Annotation]] = {}
    alone: list[list[Annotation]] = []
    for annotation in annotations:
        if annotation.kind not in _COCO_KINDS:
            counts.skipped[annotation.kind] += 1
            continue
        if annotation.instance_id:
            groups.setdefault(annotation.instance_id, []).append(annotation)
        else:
            alone.append([annotation])
    return list(groups.values()) + alone


def _merge(group: list[Annotation], coco_id: int, image_id: int) -> dict[str, Any]:
    by_kind = {a.kind: a for a in group}
    box = by_kind.get(AnnotationKind.BOX)
    shape = by_kind.get(AnnotationKind.MASK) or by_kind.get(AnnotationKind.POLYGON)
    keypoints = by_kind.get(AnnotationKind.KEYPOINTS)
    first = group[0]
    record: dict[str, Any] = {"id": coco_id, "image_id": image_id, "category_id": first.category_id}
    record["iscrowd"] = int(any(a.iscrowd for a in group))
    if shape is not None:
        record["segmentation"] = _segmentation_to_coco(shape.geometry)  # type: ignore[arg-type]
    if box is not None:
        geometry = box.geometry
        record["bbox"] = [geometry.x, geometry.y, geometry.w, geometry.h]  # type: ignore[union-attr]
    else:
        record["bbox"] = _bbox_of((shape or keypoints).geometry)  # type: ignore[union-attr, arg-type]
    if keypoints is not None:
        points = keypoints.geometry.points  # type: ignore[union-attr]
        record["keypoints"] = [v for p in points for v in (p.x, p.y, p.visibility)]
        record["num_keypoints"] = sum(1 for p in points if p.visibility)
    record["area"] = _area(group, shape, box)
    return record


def _area(group: list[Annotation], shape: Annotation | None, box: Annotation | None) -> float:
    for annotation in group:
        if annotation.area is not None:
            return annotation.area
    if shape is not None:
        geometry = shape.geometry
        if isinstance(geometry, Mask):
            return float(rle.area(rle.counts_of(geometry.counts, geometry.height, geometry.width)))
        return _polygon_area(geometry)  # type: ignore[arg-type]
    if box is not None:
        return box.geometry.w * box.geometry.h  # type: ignore[union-attr]
    return 0.0


def to_coco(categories: Iterable[Category], images: Sequence[CocoImage]) -> tuple[dict[str, Any], ExportCounts]:
    """A COCO document (json.dumps-able) of the images, and what was exported or skipped."""
    counts = ExportCounts()
    grouped = [_instance_groups(image.annotations, counts) for image in images]
    instance_ids = [g[0].instance_id for groups in grouped for g in groups]
    keep_ids = all(re.fullmatch(r"[1-9][0-9]{0,17}", i) for i in instance_ids) and len(set(instance_ids)) == len(instance_ids)
    coco_annotations = []
    next_id = 1
    for image, groups in zip(images, grouped):
        for group in groups:
            coco_id = int(group[0].instance_id) if keep_ids else next_id
            next_id += 1
            coco_annotations.append(_merge(group, coco_id, image.image_id))
            counts.annotations_exported += len(group)
    document = {
        "images": [{"id": i.image_id, "file_name": i.file_name, "width": i.width, "height": i.height} for i in images],
        "annotations": coco_annotations,
        "categories": [category_to_coco(c) for c in sorted(categories, key=lambda c: c.category_id)],
    }
    return document, counts

