"""Protobuf messages <-> domain objects, both ways, field by field.

The only module of the annotation-store that knows both the generated code
and the domain model. Incoming messages are checked for what the type
system cannot say (a oneof left unset, an UNSPECIFIED enum); everything else
is validated by the domain layer. Error field paths follow the proto field
names, prefixed by the caller's ``path``.
"""

from __future__ import annotations

import datetime as dt
import math

from google.protobuf.timestamp_pb2 import Timestamp

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.common.v1 import common_pb2
from simulacra_services.annotation.domain import names
from simulacra_services.annotation.domain.model import (
    Annotation,
    AnnotationKind,
    Box,
    BoxBoundsPolicy,
    CameraIntrinsics,
    Category,
    ClassLabel,
    Cuboid3d,
    CuboidDimensions,
    DType,
    Geometry,
    Keypoint,
    Keypoints,
    Mask,
    PixelMap,
    PixelMapKind,
    Point2d,
    Polygon,
    Quaternion,
    RotatedBox,
    Vector3,
)
from simulacra_services.annotation.domain.records import (
    DatasetRecord,
    ImageInput,
    ItemRecord,
    Lineage,
    NewItem,
    VersionRecord,
)
from simulacra_services.annotation.domain.statistics import Histogram, Statistics
from simulacra_services.core import errors
from simulacra_services.core.api.enums import known_enum

_DTYPE_TO_PB = {d: common_pb2.DataType.Value(f"DATA_TYPE_{d.name}") for d in DType}
_DTYPE_FROM_PB = {v: k for k, v in _DTYPE_TO_PB.items()}
_PIXEL_KIND_TO_PB = {k: pb.PixelMapKind.Value(f"PIXEL_MAP_KIND_{k.name}") for k in PixelMapKind}
_PIXEL_KIND_FROM_PB = {v: k for k, v in _PIXEL_KIND_TO_PB.items()}
_ANNOTATION_KIND_TO_PB = {k: pb.AnnotationKind.Value(f"ANNOTATION_KIND_{k.name}") for k in AnnotationKind}
_FORMAT_TO_PB = {"png": pb.IMAGE_FORMAT_PNG, "jpeg": pb.IMAGE_FORMAT_JPEG}
_LINEAGE_KIND_TO_PB = {
    "real": common_pb2.LINEAGE_KIND_REAL,
    "augmented": common_pb2.LINEAGE_KIND_AUGMENTED,
    "synthetic": common_pb2.LINEAGE_KIND_SYNTHETIC,
}


def _invalid(reason: str, field: str, message: str) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field})


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def timestamp(value: dt.datetime | None) -> Timestamp:
    """An aware datetime as a Timestamp (exact to the microsecond)."""
    if value is None:
        return Timestamp()
    delta = value - _EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    return Timestamp(seconds=seconds, nanos=delta.microseconds * 1000)


def box_bounds_policy(value: int, field: str = "box_bounds_policy") -> BoxBoundsPolicy:
    """UNSPECIFIED means REJECT; a number the contract does not define is refused."""
    known_enum(value, pb.BoxBoundsPolicy, field, reason="INVALID_BOX_BOUNDS_POLICY")
    return BoxBoundsPolicy.CLIP if value == pb.BOX_BOUNDS_POLICY_CLIP else BoxBoundsPolicy.REJECT


def full_view(view: int, default: int, field: str = "view") -> bool:
    """Whether ``view`` (UNSPECIFIED: ``default``) asks for image bytes and pixel-map data."""
    return (known_enum(view, pb.ItemView, field) or default) == pb.ITEM_VIEW_FULL


# ---------------------------------------------------------------------------
# categories
# ---------------------------------------------------------------------------


def category_from_proto(message: pb.Category) -> Category:
    return Category(
        category_id=int(message.category_id),
        display_name=message.display_name,
        supercategory=message.supercategory,
        keypoint_names=tuple(message.keypoint_names),
        skeleton=tuple((p.first, p.second) for p in message.skeleton),
        flip_pairs=tuple((p.first, p.second) for p in message.flip_pairs),
    )


def category_to_proto(dataset_id: str, category: Category) -> pb.Category:
    message = category_message(category)
    message.name = names.category_name(dataset_id, category.category_id)
    return message


def category_message(category: Category) -> pb.Category:
    """The category as a message without its resource name (what a create request carries)."""
    return pb.Category(
        category_id=category.category_id,
        display_name=category.display_name,
        supercategory=category.supercategory,
        keypoint_names=list(category.keypoint_names),
        skeleton=[pb.KeypointPair(first=a, second=b) for a, b in category.skeleton],
        flip_pairs=[pb.KeypointPair(first=a, second=b) for a, b in category.flip_pairs],
    )


# ---------------------------------------------------------------------------
# annotations
# ---------------------------------------------------------------------------


def _geometry_from_proto(message: pb.Annotation, path: str) -> Geometry:
    which = message.WhichOneof("kind")
    if which is None:
        raise _invalid(
            "MISSING_ANNOTATION_KIND",
            path,
            "set exactly one annotation kind (class_label, box, rotated_box, polygon, mask, keypoints, cuboid, pixel_map)",
        )
    field = f"{path}.{which}"
    if which == "class_label":
        return ClassLabel()
    if which == "box":
        b = message.box
        return Box(b.x, b.y, b.w, b.h)
    if which == "rotated_box":
        r = message.rotated_box
        return RotatedBox(r.cx, r.cy, r.w, r.h, r.angle_degrees)
    if which == "polygon":
        return Polygon(tuple(tuple(part.coordinates) for part in message.polygon.parts))
    if which == "mask":
        m = message.mask
        counts_kind = m.WhichOneof("counts")
        if counts_kind is None:
            raise _invalid("INVALID_RLE", field, "set the counts, uncompressed or compressed")
        counts: tuple[int, ...] | str = m.compressed if counts_kind == "compressed" else tuple(m.uncompressed.counts)
        return Mask(m.height, m.width, counts)
    if which == "keypoints":
        return Keypoints(tuple(Keypoint(p.x, p.y, p.visibility) for p in message.keypoints.points))
    if which == "cuboid":
        c = message.cuboid
        return Cuboid3d(
            center=Vector3(c.center.x, c.center.y, c.center.z),
            dimensions=CuboidDimensions(c.dimensions.length, c.dimensions.width, c.dimensions.height),
            rotation=Quaternion(c.rotation.w, c.rotation.x, c.rotation.y, c.rotation.z),
            frame_id=c.frame_id,
            intrinsics=CameraIntrinsics(c.intrinsics.fx, c.intrinsics.fy, c.intrinsics.cx, c.intrinsics.cy)
            if c.HasField("intrinsics")
            else None,
            projected_corners=tuple(Point2d(p.x, p.y) for p in c.projected_corners),
        )
    p = message.pixel_map
    if p.kind not in _PIXEL_KIND_FROM_PB:
        raise _invalid("INVALID_PIXEL_MAP", f"{field}.kind", "set the pixel map kind (semantic, instance or depth)")
    if not p.HasField("tensor") and p.blob.sha256:
        # A reference to a stored map (as a BASIC read returns it); the store checks the blob.
        if p.blob.dtype not in _DTYPE_FROM_PB:
            raise _invalid("INVALID_PIXEL_MAP", f"{field}.blob.dtype", "set the blob's dtype")
        return PixelMap(
            map_kind=_PIXEL_KIND_FROM_PB[p.kind], dtype=_DTYPE_FROM_PB[p.blob.dtype], shape=tuple(p.blob.shape), sha256=p.blob.sha256
        )
    if p.tensor.dtype not in _DTYPE_FROM_PB:
        raise _invalid("INVALID_PIXEL_MAP", f"{field}.tensor.dtype", "set the tensor's dtype")
    return PixelMap(
        map_kind=_PIXEL_KIND_FROM_PB[p.kind],
        dtype=_DTYPE_FROM_PB[p.tensor.dtype],
        shape=tuple(p.tensor.shape),
        data=bytes(p.tensor.data),
    )


def annotation_from_proto(message: pb.Annotation, path: str) -> Annotation:
    return Annotation(
        geometry=_geometry_from_proto(message, path),
        category_id=int(message.category_id),
        id=message.id,
        instance_id=message.instance_id,
        iscrowd=message.iscrowd if message.HasField("iscrowd") else None,
        score=message.score if message.HasField("score") else None,
        area=message.area if message.HasField("area") else None,
        attributes=dict(message.attributes),
    )


def _pixel_map_to_proto(geometry: PixelMap) -> pb.PixelMap:
    size = math.prod(geometry.shape) * geometry.dtype.itemsize
    message = pb.PixelMap(
        kind=_PIXEL_KIND_TO_PB[geometry.map_kind],
        blob=pb.BlobReference(sha256=geometry.sha256, size_bytes=size, dtype=_DTYPE_TO_PB[geometry.dtype], shape=list(geometry.shape)),
    )
    if geometry.data is not None:
        message.tensor.CopyFrom(common_pb2.Tensor(dtype=_DTYPE_TO_PB[geometry.dtype], shape=list(geometry.shape), data=geometry.data))
    return message


def annotation_to_proto(annotation: Annotation, message: pb.Annotation | None = None) -> pb.Annotation:
    """The message of an annotation, filled into ``message`` when given (e.g. ``item.annotations.add()``).

    Fields are set in place rather than built as sub-messages and copied:
    listing pages convert thousands of annotations.
    """
    message = pb.Annotation() if message is None else message
    message.id = annotation.id
    message.category_id = annotation.category_id
    message.instance_id = annotation.instance_id
    if annotation.attributes:
        message.attributes.update(annotation.attributes)
    if annotation.iscrowd is not None:
        message.iscrowd = annotation.iscrowd
    if annotation.score is not None:
        message.score = annotation.score
    if annotation.area is not None:
        message.area = annotation.area
    g = annotation.geometry
    if isinstance(g, Box):
        box = message.box
        box.x, box.y, box.w, box.h = g.x, g.y, g.w, g.h
    elif isinstance(g, ClassLabel):
        message.class_label.SetInParent()
    elif isinstance(g, RotatedBox):
        r = message.rotated_box
        r.cx, r.cy, r.w, r.h, r.angle_degrees = g.cx, g.cy, g.w, g.h, g.angle_degrees
    elif isinstance(g, Polygon):
        parts = message.polygon.parts
        for part in g.parts:
            parts.add().coordinates.extend(part)
    elif isinstance(g, Mask):
        mask = message.mask
        mask.height, mask.width = g.height, g.width
        if isinstance(g.counts, str):
            mask.compressed = g.counts
        else:
            mask.uncompressed.counts.extend(g.counts)
    elif isinstance(g, Keypoints):
        points = message.keypoints.points
        for p in g.points:
            point = points.add()
            point.x, point.y, point.visibility = p.x, p.y, p.visibility
    elif isinstance(g, Cuboid3d):
        c = message.cuboid
        c.center.x, c.center.y, c.center.z = g.center.x, g.center.y, g.center.z
        c.dimensions.length, c.dimensions.width, c.dimensions.height = g.dimensions.length, g.dimensions.width, g.dimensions.height
        c.rotation.w, c.rotation.x, c.rotation.y, c.rotation.z = g.rotation.w, g.rotation.x, g.rotation.y, g.rotation.z
        c.frame_id = g.frame_id
        if g.intrinsics is not None:
            i = g.intrinsics
            c.intrinsics.fx, c.intrinsics.fy, c.intrinsics.cx, c.intrinsics.cy = i.fx, i.fy, i.cx, i.cy
        for p in g.projected_corners:
            corner = c.projected_corners.add()
            corner.x, corner.y = p.x, p.y
    elif isinstance(g, PixelMap):
        message.pixel_map.CopyFrom(_pixel_map_to_proto(g))
    return message


# ---------------------------------------------------------------------------
# items
# ---------------------------------------------------------------------------


def lineage_from_proto(message: common_pb2.Lineage) -> Lineage:
    which = message.WhichOneof("source")
    if which == "real":
        return Lineage(kind="real", origin=message.real.origin)
    if which == "augmented":
        a = message.augmented
        return Lineage(
            kind="augmented", source_item=a.source_item, pipeline_digest=a.pipeline_digest, seed=a.seed,
            sources=tuple((v.item, v.version) for v in a.sources), copy_index=a.copy_index,
        )
    if which == "synthetic":
        s = message.synthetic
        return Lineage(
            kind="synthetic", generator=s.generator, generator_version=s.generator_version, seed=s.seed, sample_index=s.sample_index,
            truncation=s.truncation if s.HasField("truncation") else None, attributes=tuple(s.attributes), label=s.label,
        )
    return Lineage()


def lineage_to_proto(lineage: Lineage) -> common_pb2.Lineage | None:
    if lineage.kind == "real":
        return common_pb2.Lineage(real=common_pb2.RealSource(origin=lineage.origin))
    if lineage.kind == "augmented":
        return common_pb2.Lineage(
            augmented=common_pb2.AugmentedSource(
                source_item=lineage.source_item, pipeline_digest=lineage.pipeline_digest, seed=lineage.seed,
                sources=[common_pb2.VersionedItem(item=item, version=version) for item, version in lineage.sources],
                copy_index=lineage.copy_index,
            )
        )
    if lineage.kind == "synthetic":
        return common_pb2.Lineage(
            synthetic=common_pb2.SyntheticSource(
                generator=lineage.generator,
                generator_version=lineage.generator_version,
                seed=lineage.seed,
                sample_index=lineage.sample_index,
                truncation=lineage.truncation,
                attributes=lineage.attributes,
                label=lineage.label,
            )
        )
    return None


def annotations_from_proto(messages: object, path: str) -> tuple[Annotation, ...]:
    return tuple(annotation_from_proto(a, f"{path}[{i}]") for i, a in enumerate(messages))  # type: ignore[arg-type]


def new_item_from_proto(upload: object, path: str) -> NewItem:
    """An ``UploadItemsRequest.ItemUpload`` as a ``NewItem``; ``path`` is e.g. "items[3]"."""
    item = upload.item  # type: ignore[attr-defined]
    return NewItem(
        image=ImageInput(data=bytes(item.image.data) or None, sha256=item.image.sha256),
        item_id=upload.item_id,  # type: ignore[attr-defined]
        split=item.split,
        attributes=dict(item.attributes),
        lineage=lineage_from_proto(item.lineage) if item.HasField("lineage") else Lineage(),
        annotations=annotations_from_proto(item.annotations, f"{path}.annotations"),
        file_name=item.file_name,
    )


def item_to_proto(record: ItemRecord, image_data: bytes | None = None) -> pb.Item:
    """An item; ``image_data`` fills image.data (FULL view); pixel maps carry data when the record has it."""
    image = record.image
    message = pb.Item(
        name=names.item_name(record.dataset_id, record.item_id),
        image=pb.Image(
            data=image_data or b"",
            sha256=image.sha256,
            width=image.width,
            height=image.height,
            format=_FORMAT_TO_PB[image.format],
            channels=image.channels,
            size_bytes=image.size_bytes,
        ),
        split=record.split,
        attributes=dict(record.attributes),
        file_name=record.file_name,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=record.etag,
        version=record.version,
    )
    for annotation in record.annotations:
        annotation_to_proto(annotation, message.annotations.add())
    lineage = lineage_to_proto(record.lineage)
    if lineage is not None:
        message.lineage.CopyFrom(lineage)
    return message


ENCODED_ITEM_FORMAT = 1
"""First byte of every ``encode_item`` output. Bump it whenever ``item_to_proto`` changes what it
sends: stored encodings of another format are then ignored and their items read the slow way."""
_ENCODED_ITEM_PREFIX = bytes([ENCODED_ITEM_FORMAT])


def encode_item(record: ItemRecord) -> bytes | None:
    """The item's message without ``version`` and image bytes, serialized, behind the format byte.

    None when the item cannot be sent from this encoding: a pixel map's data,
    which a FULL read inlines, sits inside its annotation and cannot be merged
    in afterwards.
    """
    if any(isinstance(a.geometry, PixelMap) for a in record.annotations):
        return None
    return _ENCODED_ITEM_PREFIX + item_to_proto(record).SerializeToString()


def is_current_encoding(encoded: bytes | None) -> bool:
    """Whether ``merge_encoded_item`` may use a stored encoding (NULL or an older format: no)."""
    return bool(encoded) and encoded[0] == ENCODED_ITEM_FORMAT  # type: ignore[index]


class ProtobufItemEncoding:
    """The stored item encoding (``row_codec.ItemEncoding``) the service gives its store: ``encode_item``."""

    def encode(self, record: ItemRecord) -> bytes | None:
        return encode_item(record)

    def is_current(self, encoded: bytes | None) -> bool:
        return is_current_encoding(encoded)


ITEM_ENCODING = ProtobufItemEncoding()


def merge_encoded_item(message: pb.Item, encoded: bytes, version: int, image_data: bytes | None) -> None:
    """Fill an empty ``message`` from ``encode_item`` output: equal to ``item_to_proto`` of the same row.

    Parsing and setting two fields run in the protobuf runtime, without a
    Python object per annotation, which is what makes streams cheap.
    """
    message.MergeFromString(encoded[1:])
    message.version = version
    if image_data:
        message.image.data = image_data


# ---------------------------------------------------------------------------
# datasets, versions, statistics
# ---------------------------------------------------------------------------


def dataset_to_proto(record: DatasetRecord) -> pb.Dataset:
    return pb.Dataset(
        name=names.dataset_name(record.dataset_id),
        display_name=record.display_name,
        description=record.description,
        labels=dict(record.labels),
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        item_count=record.item_count,
        latest_version=record.latest_version,
        category_count=record.category_count,
    )


def version_to_proto(record: VersionRecord) -> pb.DatasetVersion:
    return pb.DatasetVersion(
        name=names.version_name(record.dataset_id, record.version),
        version=record.version,
        description=record.description,
        create_time=timestamp(record.create_time),
        item_count=record.item_count,
        annotation_count=record.annotation_count,
        content_sha256=record.content_sha256,
        derived_from=pb.DerivedFrom(
            source_version=record.derived_from_version, pipeline_digest=record.derived_from_pipeline_digest
        ) if record.derived_from_version else None,
    )


def _histogram_to_proto(histogram: Histogram) -> pb.Histogram:
    return pb.Histogram(
        buckets=[pb.HistogramBucket(lower=b.lower, upper=b.upper, count=b.count) for b in histogram.buckets],
        count=histogram.count,
        mean=histogram.mean,
        min=histogram.min,
        max=histogram.max,
    )


def statistics_to_proto(stats: Statistics) -> pb.DatasetStatistics:
    return pb.DatasetStatistics(
        item_count=stats.item_count,
        annotation_count=stats.annotation_count,
        categories=[
            pb.CategoryCount(
                category_id=c.category_id,
                display_name=c.display_name,
                annotation_count=c.annotation_count,
                item_count=c.item_count,
                object_count=c.object_count,
            )
            for c in stats.categories
        ],
        imbalance_ratio=stats.imbalance_ratio,
        empty_category_ids=list(stats.empty_category_ids),
        annotations_per_item=_histogram_to_proto(stats.annotations_per_item),
        box_size=_histogram_to_proto(stats.box_size),
        small_box_count=stats.small_box_count,
        medium_box_count=stats.medium_box_count,
        large_box_count=stats.large_box_count,
        items_per_split=dict(stats.items_per_split),
        annotation_kinds=[
            pb.AnnotationKindCount(kind=_ANNOTATION_KIND_TO_PB[AnnotationKind(kind)], annotation_count=count)
            for kind, count in stats.annotation_kinds
        ],
        lineage_kinds=[pb.LineageKindCount(kind=_LINEAGE_KIND_TO_PB[kind], item_count=count) for kind, count in stats.lineage_kinds],
    )


