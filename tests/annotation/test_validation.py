"""Validation of annotations, categories and identifiers: reasons and field paths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from simulacra_services.annotation.formats import rle
from simulacra_services.annotation.domain.model import (
    Annotation,
    Box,
    BoxBoundsPolicy,
    CameraIntrinsics,
    Category,
    ClassLabel,
    Cuboid3d,
    CuboidDimensions,
    DType,
    ImageSize,
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
from simulacra_services.annotation.domain.checks import Limits
from simulacra_services.annotation.domain.identifiers import (
    normalize_split,
    validate_attributes,
    validate_categories,
    validate_category,
    validate_dataset_id,
    validate_item_id,
    validate_relative_path,
)
from simulacra_services.annotation.domain.validation import assign_annotation_ids, validate_annotation, validate_annotations
from simulacra_services.core import errors

IMAGE = ImageSize(width=640, height=480)
PERSON = Category(3, "person", "human", ("nose", "left_eye", "right_eye"), ((0, 1), (0, 2)), ((1, 2),))
CATEGORIES = {1: Category(1, "car"), 2: Category(2, "dog"), 3: PERSON}


def cuboid(**changes) -> Cuboid3d:
    base = dict(
        center=Vector3(1.0, 2.0, 10.0),
        dimensions=CuboidDimensions(4.5, 1.8, 1.5),
        rotation=Quaternion(math.cos(0.3), 0.0, 0.0, math.sin(0.3)),
        frame_id="camera",
        intrinsics=CameraIntrinsics(500.0, 500.0, 320.0, 240.0),
        projected_corners=tuple(Point2d(float(i), float(i)) for i in range(8)),
    )
    base.update(changes)
    return Cuboid3d(**base)


def semantic_map(values: np.ndarray, dtype: DType = DType.UINT8) -> PixelMap:
    return PixelMap(PixelMapKind.SEMANTIC_SEGMENTATION, dtype, values.shape, values.astype(dtype.value).tobytes())


def full_mask() -> Mask:
    mask = np.zeros((IMAGE.height, IMAGE.width), bool)
    mask[100:200, 50:150] = True
    return Mask(IMAGE.height, IMAGE.width, tuple(rle.encode(mask)))


VALID = [
    Annotation(ClassLabel(), category_id=1),
    Annotation(Box(0, 0, 640, 480), category_id=1, id="b1", instance_id="7", iscrowd=False, score=0.9, area=12.5),
    Annotation(Box(423.1, 10, 216.9, 20), category_id=1),  # sums past 640 only by rounding
    Annotation(RotatedBox(320, 240, 50, 20, -180.0), category_id=2),
    Annotation(Polygon(((0, 0, 10, 0, 10, 10), (20, 20, 30, 20, 30, 30, 20, 30))), category_id=2),
    Annotation(Polygon(((-5, -5, 700, 0, 10, 500),)), category_id=2),  # polygons may leave the image
    Annotation(full_mask(), category_id=1),
    Annotation(Mask(IMAGE.height, IMAGE.width, rle.compress(full_mask().counts)), category_id=1),
    Annotation(Keypoints((Keypoint(10, 10, 2), Keypoint(0, 0, 0), Keypoint(-20, 5, 1))), category_id=3),
    Annotation(cuboid(), category_id=1),
    Annotation(cuboid(intrinsics=None, projected_corners=()), category_id=1),
    Annotation(semantic_map(np.array([[0, 1], [2, 3]]).repeat(240, 0).repeat(320, 1))),
    Annotation(PixelMap(PixelMapKind.DEPTH, DType.FLOAT32, (480, 640, 1), np.ones((480, 640), "<f4").tobytes())),
    Annotation(PixelMap(PixelMapKind.INSTANCE_SEGMENTATION, DType.INT32, (480, 640), None, "ab" * 32), category_id=2),
    Annotation(ClassLabel(), category_id=2, attributes={"occluded": "true", "source_2": "x" * 1024}),
]


def test_valid_annotations_pass_unchanged() -> None:
    assert validate_annotations(VALID, IMAGE, CATEGORIES) == VALID


def rejected(annotation: Annotation, **kwargs) -> errors.SimulacraError:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_annotations([VALID[0], annotation], IMAGE, CATEGORIES, path="items[4].annotations", **kwargs)
    return caught.value


KP = Keypoint(1, 1, 2)


@pytest.mark.parametrize(
    ("annotation", "reason", "field"),
    [
        (Annotation(Box(1, 1, 10, 10)), "MISSING_CATEGORY", "category_id"),
        (Annotation(Box(1, 1, 10, 10), category_id=9), "UNKNOWN_CATEGORY", "category_id"),
        (Annotation(ClassLabel(), category_id=1, id="a b"), "INVALID_ANNOTATION_ID", "id"),
        (Annotation(ClassLabel(), category_id=1, instance_id="x" * 65), "INVALID_ANNOTATION_ID", "instance_id"),
        (Annotation(ClassLabel(), category_id=1, score=1.5), "INVALID_SCORE", "score"),
        (Annotation(ClassLabel(), category_id=1, score=math.nan), "INVALID_SCORE", "score"),
        (Annotation(ClassLabel(), category_id=1, area=-1.0), "INVALID_AREA", "area"),
        (Annotation(ClassLabel(), category_id=1, attributes={"Bad": "x"}), "INVALID_ATTRIBUTES", "attributes['Bad']"),
        (Annotation(Box(1, 1, 0, 10), category_id=1), "INVALID_BOX_SIZE", "box.w"),
        (Annotation(Box(1, 1, 10, -2), category_id=1), "INVALID_BOX_SIZE", "box.h"),
        (Annotation(Box(math.inf, 1, 10, 10), category_id=1), "NON_FINITE_NUMBER", "box.x"),
        (Annotation(Box(1, math.nan, 10, 10), category_id=1), "NON_FINITE_NUMBER", "box.y"),
        (Annotation(Box(-1, 1, 10, 10), category_id=1), "BOX_OUT_OF_BOUNDS", "box.x"),
        (Annotation(Box(1, -0.5, 10, 10), category_id=1), "BOX_OUT_OF_BOUNDS", "box.y"),
        (Annotation(Box(631, 1, 10, 10), category_id=1), "BOX_OUT_OF_BOUNDS", "box.w"),
        (Annotation(Box(1, 471, 10, 10), category_id=1), "BOX_OUT_OF_BOUNDS", "box.h"),
        (Annotation(RotatedBox(10, 10, 0, 5, 0), category_id=1), "INVALID_ROTATED_BOX", "rotated_box.w"),
        (Annotation(RotatedBox(10, 10, 5, 5, 180.0), category_id=1), "INVALID_ROTATED_BOX", "rotated_box.angle_degrees"),
        (Annotation(RotatedBox(700, 10, 5, 5, 0), category_id=1), "BOX_OUT_OF_BOUNDS", "rotated_box.cx"),
        (Annotation(Polygon(()), category_id=1), "INVALID_POLYGON", "polygon.parts"),
        (Annotation(Polygon(((0, 0, 1, 1),)), category_id=1), "INVALID_POLYGON", "polygon.parts[0].coordinates"),
        (Annotation(Polygon(((0, 0, 1, 1, 2, 2), (0, 0, 1, 1, 2))), category_id=1), "INVALID_POLYGON", "polygon.parts[1].coordinates"),
        (Annotation(Polygon(((0, 0, 1, math.inf, 2, 2),)), category_id=1), "NON_FINITE_NUMBER", "polygon.parts[0].coordinates[3]"),
        (Annotation(Polygon(((0, 0, 1, 1, 2, 2),) * 65), category_id=1), "TOO_MANY_POINTS", "polygon.parts"),
        (Annotation(Polygon(((0.0,) * 20002,)), category_id=1), "TOO_MANY_POINTS", "polygon.parts[0].coordinates"),
        (Annotation(Mask(480, 641, (480 * 641,)), category_id=1), "RLE_SIZE_MISMATCH", "mask.height"),
        (Annotation(Mask(480, 640, (5, 5)), category_id=1), "INVALID_RLE", "mask.uncompressed.counts"),
        (Annotation(Mask(480, 640, (480 * 640 + 5, -5)), category_id=1), "INVALID_RLE", "mask.uncompressed.counts"),
        (Annotation(Mask(480, 640, "0 "), category_id=1), "INVALID_RLE", "mask.compressed"),
        (Annotation(Mask(480, 640, rle.compress([5, 5])), category_id=1), "INVALID_RLE", "mask.compressed"),
        (Annotation(Keypoints((KP, KP)), category_id=3), "KEYPOINT_COUNT_MISMATCH", "keypoints.points"),
        (Annotation(Keypoints((KP,)), category_id=1), "KEYPOINT_COUNT_MISMATCH", "keypoints.points"),
        (Annotation(Keypoints((KP, Keypoint(1, 1, 3), KP)), category_id=3), "INVALID_KEYPOINT_VISIBILITY", "keypoints.points[1].visibility"),
        (Annotation(Keypoints((KP, KP, Keypoint(641, 1, 2))), category_id=3), "KEYPOINT_OUT_OF_BOUNDS", "keypoints.points[2]"),
        (Annotation(Keypoints((KP, Keypoint(math.nan, 1, 1), KP)), category_id=3), "NON_FINITE_NUMBER", "keypoints.points[1].x"),
        (Annotation(cuboid(rotation=Quaternion(1, 0.1, 0, 0)), category_id=1), "QUATERNION_NOT_NORMALIZED", "cuboid.rotation"),
        (Annotation(cuboid(rotation=Quaternion(0, 0, 0, 0)), category_id=1), "QUATERNION_NOT_NORMALIZED", "cuboid.rotation"),
        (Annotation(cuboid(dimensions=CuboidDimensions(4, 0, 1)), category_id=1), "INVALID_CUBOID", "cuboid.dimensions.width"),
        (Annotation(cuboid(center=Vector3(0, math.inf, 0)), category_id=1), "NON_FINITE_NUMBER", "cuboid.center.y"),
        (Annotation(cuboid(frame_id=""), category_id=1), "INVALID_CUBOID", "cuboid.frame_id"),
        (Annotation(cuboid(intrinsics=CameraIntrinsics(0, 1, 1, 1)), category_id=1), "INVALID_CUBOID", "cuboid.intrinsics.fx"),
        (Annotation(cuboid(projected_corners=(Point2d(0, 0),) * 4), category_id=1), "INVALID_CUBOID", "cuboid.projected_corners"),
        (Annotation(semantic_map(np.zeros((480, 640)), DType.FLOAT32)), "INVALID_PIXEL_MAP", "pixel_map.tensor.dtype"),
        (Annotation(semantic_map(np.zeros((240, 640)))), "PIXEL_MAP_SIZE_MISMATCH", "pixel_map.tensor.shape"),
        (Annotation(semantic_map(np.full((480, 640), 7))), "UNKNOWN_CATEGORY", "pixel_map.tensor.data"),
        (Annotation(PixelMap(PixelMapKind.DEPTH, DType.FLOAT32, (480, 640), b"\0" * 16)), "INVALID_PIXEL_MAP", "pixel_map.tensor.data"),
        (Annotation(PixelMap(PixelMapKind.DEPTH, DType.FLOAT32, (480, 640))), "INVALID_PIXEL_MAP", "pixel_map.tensor.data"),
        (Annotation(PixelMap(PixelMapKind.DEPTH, DType.FLOAT32, (480, 640), None, "ab"), category_id=8), "UNKNOWN_CATEGORY", "category_id"),
    ],
)
def test_each_bad_annotation_has_a_reason_and_a_field_path(annotation: Annotation, reason: str, field: str) -> None:
    error = rejected(annotation)
    assert (error.reason, error.metadata["field"]) == (reason, f"items[4].annotations[1].{field}")
    assert error.message.startswith(f"items[4].annotations[1].{field}: ")


def test_messages_carry_the_numbers() -> None:
    error = rejected(Annotation(Keypoints((KP,)), category_id=3))
    assert error.metadata["expected"] == "3" and error.metadata["count"] == "1"
    assert "'person' has 3 keypoints" in error.message
    error = rejected(Annotation(cuboid(rotation=Quaternion(2, 0, 0, 0)), category_id=1))
    assert float(error.metadata["norm"]) == 2.0


def test_quaternion_within_tolerance_is_accepted_as_sent() -> None:
    q = Quaternion(1.0009, 0, 0, 0)
    annotation = Annotation(cuboid(rotation=q), category_id=1)
    assert validate_annotation(annotation, IMAGE, CATEGORIES) == annotation


def test_clip_policy_cuts_boxes_to_the_image() -> None:
    boxes = [
        Annotation(Box(-10, -5, 50, 50), category_id=1),
        Annotation(Box(600, 400, 100, 100), category_id=1),
        Annotation(Box(10, 10, 20, 20), category_id=1),
    ]
    clipped = validate_annotations(boxes, IMAGE, CATEGORIES, policy=BoxBoundsPolicy.CLIP)
    assert [a.geometry for a in clipped] == [Box(0, 0, 40, 45), Box(600, 400, 40, 80), Box(10, 10, 20, 20)]
    assert clipped[2] is boxes[2]


def test_clip_policy_still_rejects_a_box_entirely_outside() -> None:
    error = rejected(Annotation(Box(700, 10, 10, 10), category_id=1), policy=BoxBoundsPolicy.CLIP)
    assert error.reason == "BOX_OUT_OF_BOUNDS"
    assert error.metadata["field"] == "items[4].annotations[1].box"


def test_duplicate_annotation_ids() -> None:
    annotations = [Annotation(ClassLabel(), category_id=1, id="a"), Annotation(ClassLabel(), category_id=2, id="a")]
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_annotations(annotations, IMAGE, CATEGORIES)
    assert caught.value.reason == "DUPLICATE_ANNOTATION_ID"
    assert caught.value.metadata["field"] == "annotations[1].id"


def test_an_instance_holds_at_most_one_annotation_of_each_kind() -> None:
    box = Box(1, 1, 10, 10)
    pieces = [
        Annotation(box, category_id=1, instance_id="7"),
        Annotation(Polygon(((1.0, 1.0, 9.0, 1.0, 9.0, 9.0),)), category_id=1, instance_id="7"),
        Annotation(box, category_id=1, instance_id="8"),  # another object
        Annotation(box, category_id=1),  # no instance: never grouped
        Annotation(box, category_id=1),
    ]
    assert len(validate_annotations(pieces, IMAGE, CATEGORIES)) == 5
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_annotations([*pieces, Annotation(Box(2, 2, 5, 5), category_id=1, instance_id="7")], IMAGE, CATEGORIES, path="items[3].annotations")
    assert caught.value.reason == "DUPLICATE_INSTANCE_KIND"
    assert caught.value.metadata == {"field": "items[3].annotations[5].instance_id", "instance_id": "7", "kind": "box"}
    assert "items[3].annotations[0]" in caught.value.message


def test_annotation_count_limit() -> None:
    annotations = [Annotation(ClassLabel(), category_id=1)] * 4
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_annotations(annotations, IMAGE, CATEGORIES, limits=Limits(max_annotations_per_item=3))
    assert caught.value.reason == "TOO_MANY_ANNOTATIONS"
    assert caught.value.metadata == {"field": "annotations", "count": "4", "limit": "3"}


def test_compressed_rle_length_limit() -> None:
    mask = Mask(480, 640, rle.compress(full_mask().counts))
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_annotation(Annotation(mask, category_id=1), IMAGE, CATEGORIES, limits=Limits(max_compressed_rle_chars=3))
    assert caught.value.reason == "INVALID_RLE"


def test_assign_annotation_ids_skips_taken_ids() -> None:
    annotations = [Annotation(ClassLabel(), category_id=1), Annotation(ClassLabel(), category_id=1, id="1"), Annotation(ClassLabel(), category_id=1)]
    assert [a.id for a in assign_annotation_ids(annotations)] == ["2", "1", "3"]


# ---- categories ---------------------------------------------------------------


def test_valid_categories() -> None:
    validate_categories(CATEGORIES.values())


@pytest.mark.parametrize(
    ("category", "field"),
    [
        (Category(0, "x"), "category_id"),
        (Category(2**31, "x"), "category_id"),
        (Category(1, ""), "display_name"),
        (Category(1, "a\nb"), "display_name"),
        (Category(1, "x", "s" * 257), "supercategory"),
        (Category(1, "x", keypoint_names=("a", "a")), "keypoint_names[1]"),
        (Category(1, "x", keypoint_names=("a", "b"), skeleton=((0, 2),)), "skeleton[0]"),
        (Category(1, "x", keypoint_names=("a", "b"), skeleton=((1, 1),)), "skeleton[0]"),
        (Category(1, "x", keypoint_names=("a", "b", "c"), flip_pairs=((0, 1), (1, 2))), "flip_pairs"),
    ],
)
def test_bad_category(category: Category, field: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_category(category, "categories[0]")
    assert caught.value.reason == "INVALID_CATEGORY"
    assert caught.value.metadata["field"] == f"categories[0].{field}"


def test_duplicate_categories() -> None:
    for categories, field in (
        ([Category(1, "a"), Category(1, "b")], "categories[1].category_id"),
        ([Category(1, "a"), Category(2, "a")], "categories[1].display_name"),
    ):
        with pytest.raises(errors.InvalidArgument) as caught:
            validate_categories(categories)
        assert (caught.value.reason, caught.value.metadata["field"]) == ("DUPLICATE_CATEGORY", field)


# ---- identifiers and attributes ---------------------------------------------------


@pytest.mark.parametrize("good", ["mnist", "coco-val-2017", "a" * 63])
def test_good_dataset_ids(good: str) -> None:
    validate_dataset_id(good)


@pytest.mark.parametrize("bad", ["", "Mnist", "1abc", "a_b", "a" * 64, "a/b", "../x"])
def test_bad_dataset_ids(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_dataset_id(bad)
    assert caught.value.reason == "INVALID_DATASET_ID"


@pytest.mark.parametrize("good", ["000000397133.jpg", "img_1", "A-b.c"])
def test_good_item_ids(good: str) -> None:
    validate_item_id(good)


@pytest.mark.parametrize("bad", ["", ".hidden", "a..b", "a/b", "x" * 129, "a b"])
def test_bad_item_ids(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_item_id(bad)
    assert caught.value.reason == "INVALID_ITEM_ID"


def test_splits() -> None:
    assert normalize_split("") == "train"
    assert normalize_split("val") == "val"
    with pytest.raises(errors.InvalidArgument) as caught:
        normalize_split("Val")
    assert caught.value.reason == "INVALID_SPLIT"


@pytest.mark.parametrize("good", ["a.jpg", "images/train/0001.jpg", "x" * 1024])
def test_good_relative_paths(good: str) -> None:
    validate_relative_path(good)


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../b", "a//b", "a/./b", "a\\b", "a\x00b", "x" * 1025, "dir/"])
def test_bad_relative_paths(bad: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        validate_relative_path(bad, "files[3].path")
    assert caught.value.reason == "INVALID_PATH"
    assert caught.value.metadata["field"] == "files[3].path"


def test_attribute_limits() -> None:
    validate_attributes({f"k{i}": "v" for i in range(64)})
    for attributes in ({f"k{i}": "v" for i in range(65)}, {"k": "v" * 1025}, {"1k": "v"}, {"": "v"}):
        with pytest.raises(errors.InvalidArgument) as caught:
            validate_attributes(attributes)
        assert caught.value.reason == "INVALID_ATTRIBUTES"
