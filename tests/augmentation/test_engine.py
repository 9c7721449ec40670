"""The engine on real images and annotations: targets, rules, fusion, determinism."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from simulacra_services.annotation.formats import rle
from simulacra_services.annotation.domain.model import (
    Annotation,
    Box,
    BoxBoundsPolicy,
    CameraIntrinsics,
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
from simulacra_services.annotation.domain.validation import validate_annotations
from simulacra_services.augmentation.engine import Augmenter, Item, parse_spec
from simulacra_services.core import errors
from tests.augmentation.support import CATEGORIES, fixed, photo


def run(ops: list, image: np.ndarray, annotations=(), seed: int = 0, **policy) -> object:
    spec = parse_spec({"ops": ops, "annotation_policy": policy})
    return Augmenter(spec, CATEGORIES).run(Item(image, annotations, key="k"), seed)


def test_box_of_an_object_with_a_polygon_is_the_tight_box_of_the_rotated_polygon() -> None:
    diamond = (64.0, 28.0, 84.0, 48.0, 64.0, 68.0, 44.0, 48.0)
    annotations = [
        Annotation(Polygon((diamond,)), 2, id="p", instance_id="car1"),
        Annotation(Box(44, 28, 40, 40), 2, id="b", instance_id="car1"),
        Annotation(Box(44, 28, 40, 40), 2, id="alone"),
    ]
    out = run([{"rotate": {"angle_degrees": fixed(45)}}], photo(), annotations)
    polygon, tight, loose = out.annotations
    points = np.array(polygon.geometry.parts[0]).reshape(-1, 2)
    assert tight.geometry.x == pytest.approx(points[:, 0].min()) and tight.geometry.w == pytest.approx(np.ptp(points[:, 0]))
    # A diamond turned by 45 degrees is a square of side 20 * sqrt(2); the corner rule swells to 40 * sqrt(2).
    assert tight.geometry.w == pytest.approx(20 * np.sqrt(2), abs=1e-6)
    assert loose.geometry.w == pytest.approx(40 * np.sqrt(2), abs=1e-6)


def test_box_follows_the_mask_of_its_instance_and_masks_stay_binary() -> None:
    pixels = np.zeros((96, 128), np.uint8)
    cv2.circle(pixels, (60, 50), 15, 1, -1)
    mask = Mask(96, 128, rle.compress(rle.encode(pixels)))
    annotations = [Annotation(mask, 2, id="m", instance_id="c", area=float(pixels.sum())), Annotation(Box(45, 35, 31, 31), 2, id="b", instance_id="c")]
    out = run([{"affine": {"rotate_degrees": fixed(30), "scale": fixed(1.3)}}], photo(), annotations)
    moved, box = out.annotations
    assert isinstance(moved.geometry.counts, str)  # compressed in, compressed out
    decoded = rle.decode(rle.counts_of(moved.geometry.counts, 96, 128), 96, 128)
    assert set(np.unique(decoded)) <= {0, 1}
    assert moved.area == decoded.sum()
    ys, xs = np.nonzero(decoded)
    assert (box.geometry.x, box.geometry.y, box.geometry.w, box.geometry.h) == (xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1)
    # The disc scaled by 1.3: area about 1.69 times.
    assert moved.area == pytest.approx(pixels.sum() * 1.69, rel=0.05)


def test_horizontal_flip_swaps_left_and_right_keypoints() -> None:
    points = Keypoints((Keypoint(60, 20, 2), Keypoint(50, 18, 2), Keypoint(70, 18, 1)))
    out = run([{"horizontal_flip": {}}], photo(), [Annotation(points, 1, id="k")])
    nose, left, right = out.annotations[0].geometry.points
    assert (nose.x, nose.y) == (128 - 60, 20)
    # The point that was the right eye (x 70, hidden) is the left eye now, mirrored.
    assert (left.x, left.visibility, right.x, right.visibility) == (128 - 70, 1, 128 - 50, 2)
    # Two mirrors make a rotation by 180 degrees: no swap. A vertical flip or a transpose mirrors: swap.
    for ops, order in (
        ([{"horizontal_flip": {}}, {"vertical_flip": {}}], [2, 2, 1]),
        ([{"vertical_flip": {}}], [2, 1, 2]),
        ([{"transpose": {}}], [2, 1, 2]),
    ):
        moved = run(ops, photo(), [Annotation(points, 1, id="k")])
        assert [p.visibility for p in moved.annotations[0].geometry.points] == order


def test_keypoints_leaving_the_frame_become_unlabelled() -> None:
    points = Keypoints((Keypoint(5, 5, 2), Keypoint(50, 40, 2), Keypoint(0, 0, 0)))
    crop = [{"crop": {"x": 20, "y": 20, "width": 60, "height": 50}}]
    out = run(crop, photo(), [Annotation(points, 1, id="k")])
    assert [(p.x, p.y, p.visibility) for p in out.annotations[0].geometry.points] == [(0, 0, 0), (30, 20, 2), (0, 0, 0)]
    kept = run(crop, photo(), [Annotation(points, 1, id="k")], keep_outside_keypoints=True)
    assert [(p.x, p.y, p.visibility) for p in kept.annotations[0].geometry.points][0] == (-15, -15, 0)


def test_min_visibility_min_size_and_clipping() -> None:
    annotations = [
        Annotation(Box(0, 0, 40, 40), 2, id="mostly-out"),  # 5x5 of 40x40 left after the crop
        Annotation(Box(30, 30, 20, 20), 2, id="inside", area=400.0),
        Annotation(Box(50, 30, 40, 4), 2, id="thin"),
        Annotation(ClassLabel(), 2, id="label"),
    ]
    out = run([{"crop": {"x": 35, "y": 35, "width": 60, "height": 60}}], photo(), annotations, min_visibility=0.2, min_height=2)
    assert [a.id for a in out.annotations] == ["inside", "label"]
    assert out.dropped_annotations == 2
    inside = out.annotations[0]
    assert (inside.geometry.x, inside.geometry.y, inside.geometry.w, inside.geometry.h, inside.area) == (0, 0, 15, 15, 225)
    loose = run([{"crop": {"x": 35, "y": 35, "width": 60, "height": 60}}], photo(), annotations)
    assert [a.id for a in loose.annotations] == ["mostly-out", "inside", "label"]


def test_rotated_box_rotates_exactly() -> None:
    box = RotatedBox(64, 48, 30, 10, 10.0)
    out = run([{"rotate": {"angle_degrees": fixed(30)}}], photo(), [Annotation(box, 2, id="r")])
    moved = out.annotations[0].geometry
    # Counter-clockwise on screen turns the width axis from +x towards -y: the angle decreases.
    assert (moved.cx, moved.cy, moved.w, moved.h) == pytest.approx((64, 48, 30, 10))
    assert moved.angle_degrees == pytest.approx(-20.0)


def _project(cuboid: Cuboid3d) -> np.ndarray:
    """The 8 corners of a cuboid projected with its intrinsics (pinhole, camera x right, y down, z forward)."""
    q = cuboid.rotation
    rotation = np.array([
        [1 - 2 * (q.y**2 + q.z**2), 2 * (q.x * q.y - q.z * q.w), 2 * (q.x * q.z + q.y * q.w)],
        [2 * (q.x * q.y + q.z * q.w), 1 - 2 * (q.x**2 + q.z**2), 2 * (q.y * q.z - q.x * q.w)],
        [2 * (q.x * q.z - q.y * q.w), 2 * (q.y * q.z + q.x * q.w), 1 - 2 * (q.x**2 + q.y**2)],
    ])
    d = cuboid.dimensions
    offsets = np.array([[sx * d.length, sy * d.width, sz * d.height] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (-0.5, 0.5)])
    points = offsets @ rotation.T + np.array([cuboid.center.x, cuboid.center.y, cuboid.center.z])
    k = cuboid.intrinsics
    return np.stack([k.fx * points[:, 0] / points[:, 2] + k.cx, k.fy * points[:, 1] / points[:, 2] + k.cy], axis=1)


def test_cuboids_follow_crops_resizes_and_rotations_and_refuse_mirrors() -> None:
    base = Cuboid3d(Vector3(0.5, -0.2, 10), CuboidDimensions(4, 2, 1.5), Quaternion(0.9238795, 0, 0.3826834, 0), "camera", CameraIntrinsics(100, 100, 64, 48))
    cuboid = dataclasses.replace(base, projected_corners=tuple(Point2d(x, y) for x, y in _project(base)))
    out = run([{"crop": {"x": 10, "y": 10, "width": 100, "height": 80}}, {"resize": {"height": 40, "width": 50}}], photo(), [Annotation(cuboid, 2, id="c")])
    moved = out.annotations[0].geometry
    assert moved.intrinsics == pytest.approx(CameraIntrinsics(50, 50, 27, 19))
    # The moved projected corners are the projection of the moved cuboid with the new intrinsics.
    for ops in (
        [{"crop": {"x": 10, "y": 10, "width": 100, "height": 80}}, {"resize": {"height": 40, "width": 50}}],
        [{"rotate": {"angle_degrees": fixed(25)}}],
        [{"affine": {"rotate_degrees": fixed(-40), "scale": fixed(1.3), "translate_x": fixed(0.1)}}, {"pad": {"left": 7}}],
    ):
        moved = run(ops, photo(), [Annotation(cuboid, 2, id="c")]).annotations[0].geometry
        np.testing.assert_allclose(_project(moved), [(p.x, p.y) for p in moved.projected_corners], atol=1e-6)
        norm = math.sqrt(moved.rotation.w**2 + moved.rotation.x**2 + moved.rotation.y**2 + moved.rotation.z**2)
        assert norm == pytest.approx(1.0)
    for ops in ([{"horizontal_flip": {}}], [{"affine": {"shear_x_degrees": fixed(10)}}], [{"perspective": {}}]):
        with pytest.raises(errors.InvalidArgument) as caught:
            run(ops, photo(), [Annotation(cuboid, 2, id="c")])
        assert caught.value.reason == "ANNOTATION_NOT_TRANSFORMABLE"
        assert caught.value.metadata["field"] == "item.annotations[0].cuboid"
    dropped = run([{"horizontal_flip": {}}], photo(), [Annotation(cuboid, 2, id="c")], drop_untransformable=True)
    assert dropped.annotations == () and dropped.dropped_annotations == 1


def test_depth_map_is_resampled_nearest_with_values_unchanged() -> None:
    depth = np.random.default_rng(3).uniform(1, 50, (96, 128)).astype(np.float32)
    pixel_map = PixelMap(PixelMapKind.DEPTH, DType.FLOAT32, (96, 128), depth.astype("<f4").tobytes())
    out = run([{"affine": {"rotate_degrees": fixed(17), "scale": fixed(1.2)}}], photo(), [Annotation(pixel_map, 0, id="d")])
    moved = np.frombuffer(out.annotations[0].geometry.data, "<f4").reshape(96, 128)
    assert set(np.unique(moved)) - {0.0} <= set(np.unique(depth))


def test_geometric_ops_are_fused_into_one_resampling() -> None:
    image = photo()
    there_and_back = [{"rotate": {"angle_degrees": fixed(33)}}, {"rotate": {"angle_degrees": fixed(-33)}}]
    assert np.array_equal(run(there_and_back, image).image, image)
    # With a pixel op between them, each run is resampled on its own (and corners are lost).
    split = run([there_and_back[0], {"gamma": {}}, there_and_back[1]], image).image
    assert not np.array_equal(split, image)


def test_outputs_pass_the_annotation_store_validation() -> None:
    pixels = np.zeros((96, 128), np.uint8)
    pixels[30:60, 40:90] = 1
    annotations = [
        Annotation(Box(40, 30, 50, 30), 2, id="b", instance_id="x", area=1500.0),
        Annotation(Polygon(((40.0, 30.0, 90.0, 30.0, 90.0, 60.0, 40.0, 60.0),)), 2, id="p", instance_id="x"),
        Annotation(Mask(96, 128, tuple(rle.encode(pixels))), 2, id="m", instance_id="y"),
        Annotation(Keypoints((Keypoint(60, 40, 2), Keypoint(55, 38, 2), Keypoint(65, 38, 2))), 1, id="k"),
        Annotation(RotatedBox(64, 48, 30, 20, 5.0), 2, id="r"),
        Annotation(ClassLabel(), 2, id="l"),
    ]
    ops = [
        {"random_resized_crop": {"height": 80, "width": 80, "scale": {"min": 0.3, "max": 1}}},
        {"horizontal_flip": {}, "probability": 0.5},
        {"perspective": {}},
        {"affine": {"rotate_degrees": {"min": -40, "max": 40}, "translate_x": {"min": -0.3, "max": 0.3}}},
    ]
    augmenter = Augmenter(parse_spec({"ops": ops}), CATEGORIES)
    for seed in range(30):
        out = augmenter.run(Item(photo(), annotations, key="k"), seed)
        validate_annotations(out.annotations, ImageSize(out.image.shape[1], out.image.shape[0]), CATEGORIES, policy=BoxBoundsPolicy.REJECT)


def test_every_op_runs_on_uint8_and_float_gray_and_colour() -> None:
    ops = [
        {"rotate": {"angle_degrees": {"min": -10, "max": 10}, "border_mode": "BORDER_MODE_REFLECT"}},
        {"perspective": {}},
        {"random_crop": {"width": 60, "height": 50}},
        {"pad": {"top": 3, "left": 2, "border_mode": "BORDER_MODE_REPLICATE"}},
        {"resize": {"height": 64, "width": 64, "keep_aspect_ratio": True}},
        {"color_jitter": {"brightness": {"min": 0.8, "max": 1.2}, "contrast": {"min": 0.8, "max": 1.2}, "saturation": {"min": 0.5, "max": 1.5}, "hue": {"min": -0.1, "max": 0.1}}},
        {"hue_saturation_value": {"hue_shift_degrees": fixed(20), "saturation_shift": fixed(0.1), "value_shift": fixed(-0.1)}},
        {"gamma": {"gamma": {"min": 0.7, "max": 1.5}}},
        {"brightness_contrast": {"brightness": fixed(0.1)}},
        {"gaussian_blur": {"sigma": fixed(1.0)}},
        {"motion_blur": {}},
        {"gaussian_noise": {}},
        {"jpeg": {}},
        {"cutout": {"count": 2}},
        {"fog": {}},
        {"rain": {}},
        {"snow": {}},
        {"night": {}},
        {"shadow": {}},
        {"sun_flare": {}},
        {"grayscale": {}},
        {"elastic": {}},
    ]
    for image in (photo(), photo(channels=1), photo().astype(np.float32) / 255.0):
        for op in ops:
            out = run([op], image)
            assert out.image.dtype == image.dtype and out.image.shape[2] == image.shape[2], op
            if image.dtype == np.float32:
                assert 0.0 <= out.image.min() and out.image.max() <= 1.0, op
    normalized = run([{"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}], photo())
    assert normalized.image.dtype == np.float32 and normalized.image.min() >= -2.0 and normalized.image.max() <= 2.0


def test_same_bytes_whatever_the_batch_and_order() -> None:
    spec = parse_spec(
        {
            "ops": [
                {"random_resized_crop": {"height": 64, "width": 64}},
                {"one_of": {"ops": [{"rain": {}}, {"gaussian_noise": {}}, {"jpeg": {}}], "weights": [1, 2, 1]}},
                {"some_of": {"ops": [{"horizontal_flip": {}}, {"gamma": {"gamma": {"min": 0.5, "max": 2}}}, {"fog": {}}], "min_count": 1, "max_count": 3}},
                {"random_order": {"ops": [{"color_jitter": {"hue": {"min": -0.2, "max": 0.2}}}, {"rotate": {"angle_degrees": {"min": -20, "max": 20}}}]}, "probability": 0.7},
            ]
        }
    )
    items = [Item(photo(seed=i), [Annotation(Box(10, 10, 30, 30), 2, id="b")], key=f"datasets/d/items/{i}") for i in range(9)]
    alone = [Augmenter(spec).run_batch([item], request_seed=7)[0] for item in items]
    batch = Augmenter(spec).run_batch(items, request_seed=7)
    shuffled = Augmenter(spec).run_batch(items[::-1], request_seed=7)[::-1]
    for a, b, c in zip(alone, batch, shuffled):
        assert a.seed == b.seed == c.seed
        assert a.image.tobytes() == b.image.tobytes() == c.image.tobytes()
        assert a.annotations == b.annotations == c.annotations and a.applied_paths == b.applied_paths
    assert len({out.applied_paths for out in batch}) > 1  # the draws do differ between items
    other_seed = Augmenter(spec).run_batch(items, request_seed=8)
    assert any(a.image.tobytes() != b.image.tobytes() for a, b in zip(batch, other_seed))


def test_position_seed_policy_depends_on_position() -> None:
    spec = parse_spec({"ops": [{"gaussian_noise": {}}], "seed_policy": "SEED_POLICY_POSITION"})
    item = Item(photo(), key="same")
    first, second = Augmenter(spec).run_batch([item, item], request_seed=1)
    assert first.seed != second.seed
    assert Augmenter(spec).run_batch([item], request_seed=1, start_position=1)[0].image.tobytes() == second.image.tobytes()


def test_bad_images_and_crops_get_precise_errors() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        run([], np.zeros((4, 4, 2), np.uint8))
    assert caught.value.reason == "INVALID_IMAGE"
    with pytest.raises(errors.InvalidArgument) as caught:
        run([{"crop": {"width": 500, "height": 10}}], photo())
    assert caught.value.reason == "CROP_OUT_OF_IMAGE"
    with pytest.raises(errors.InvalidArgument) as caught:
        run([{"horizontal_flip": {}}], photo(), [Annotation(Keypoints((Keypoint(1, 1, 2),)), 9, id="k")])
    assert caught.value.reason == "CATEGORY_REQUIRED"


def test_probability_zero_never_fires_and_one_always() -> None:
    spec = parse_spec({"ops": [{"horizontal_flip": {}, "probability": 0.0}, {"vertical_flip": {}, "probability": 1.0}]})
    for seed in range(20):
        assert Augmenter(spec).run(Item(photo()), seed).applied_paths == ("1",)
    half = parse_spec({"ops": [{"horizontal_flip": {}, "probability": 0.5}]})
    fired = sum(bool(Augmenter(half).run(Item(photo(8, 8)), seed).applied_paths) for seed in range(400))
    assert 150 < fired < 250


_ = dataclasses


def test_elastic_moves_annotations_with_the_pixels() -> None:
    image = np.zeros((64, 64, 3), np.uint8)
    image[20:40, 10:30, 0] = 255
    pixels = np.zeros((64, 64), np.uint8)
    cv2.circle(pixels, (40, 40), 9, 1, -1)
    image[:, :, 1] = pixels * 255
    annotations = [
        Annotation(Box(10, 20, 20, 20), 2, id="b"),
        Annotation(Mask(64, 64, tuple(rle.encode(pixels))), 2, id="m"),
        Annotation(Keypoints((Keypoint(20.5, 30.5, 2), Keypoint(0, 0, 0), Keypoint(0, 0, 0))), 1, id="k"),
    ]
    spec = {"elastic": {"alpha": fixed(60), "sigma": fixed(6), "interpolation": "INTERPOLATION_NEAREST"}}
    for seed in range(5):
        out = run([spec], image, annotations, seed=seed)
        box, mask, points = out.annotations
        ys, xs = np.nonzero(out.image[:, :, 0])
        g = box.geometry
        assert np.allclose((g.x, g.y, g.x + g.w, g.y + g.h), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), atol=1.5)
        moved = rle.decode(list(mask.geometry.counts), 64, 64).astype(bool)
        assert np.array_equal(moved, out.image[:, :, 1] > 0)
        nose = points.geometry.points[0]
        assert out.image[int(nose.y), int(nose.x), 0] == 255  # still inside the drawn square
    cuboid = Cuboid3d(Vector3(0, 0, 10), CuboidDimensions(4, 2, 1.5), Quaternion(1, 0, 0, 0), "camera")
    with pytest.raises(errors.InvalidArgument) as caught:
        run([spec], image, [Annotation(cuboid, 2, id="c")])
    assert caught.value.reason == "ANNOTATION_NOT_TRANSFORMABLE"
