"""Mixing ops: several items into one, with annotations that match the mixed pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from simulacra_services.annotation.domain.model import Annotation, Box, BoxBoundsPolicy, ImageSize, Keypoint, Keypoints, Mask
from simulacra_services.annotation.domain.validation import validate_annotations
from simulacra_services.annotation.formats import rle
from simulacra_services.augmentation.engine import Augmenter, Item, parse_spec
from tests.augmentation.support import CATEGORIES, fixed


def square_item(key: str, value: int, box: tuple[int, int, int, int], size: int = 64) -> Item:
    """A black image with one filled square of ``value`` and its box (id "b")."""
    image = np.zeros((size, size, 3), np.uint8)
    x, y, w, h = box
    image[y : y + h, x : x + w] = value
    return Item(image, (Annotation(Box(x, y, w, h), 2, id="b"),), key=key)


def run(ops: list, item: Item, seed: int = 0, **policy):  # noqa: ANN201
    return Augmenter(parse_spec({"ops": ops, "annotation_policy": policy}), CATEGORIES).run(item, seed)


def pixel_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def edges(box: Box) -> tuple[float, float, float, float]:
    return box.x, box.y, box.x + box.w, box.y + box.h


def test_without_partners_a_mixing_op_does_not_fire() -> None:
    item = square_item("a", 200, (10, 10, 20, 20))
    out = run([{"mixup": {}}, {"cutmix": {}}, {"mosaic": {}}, {"copy_paste": {}}], item)
    assert out.applied_paths == () and np.array_equal(out.image, item.image) and out.partner_keys == ()


def test_mixup_blends_and_keeps_both_annotation_sets() -> None:
    item = square_item("a", 200, (10, 10, 20, 20))
    partner = square_item("b", 100, (20, 20, 20, 20))
    out = run([{"mixup": {"weight": fixed(0.25)}}], Item(item.image, item.annotations, "a", partners=(partner,)))
    assert out.partner_keys == ("b",)
    assert out.image[15, 15, 0] == 150 and out.image[35, 35, 0] == 25 and out.image[25, 25, 0] == 175
    assert [a.id for a in out.annotations] == ["b", "p0.b"]
    assert out.annotations[1].attributes["mixup_weight"] == "0.2500"


def test_cutmix_boxes_follow_the_pixels_of_each_source() -> None:
    item = square_item("a", 200, (4, 4, 40, 40))
    partner = square_item("b", 100, (20, 20, 40, 40))
    for seed in range(10):
        out = run([{"cutmix": {"area": {"min": 0.2, "max": 0.5}}}], Item(item.image, item.annotations, "a", partners=(partner,)), seed)
        by_id = {a.id: a for a in out.annotations}
        for annotation_id, value in (("b", 200), ("p0.b", 100)):
            shown = out.image[:, :, 0] == value
            if annotation_id in by_id:
                assert edges(by_id[annotation_id].geometry) == pixel_box(shown)
            else:
                assert shown.sum() == 0 or annotation_id == "b" and out.dropped_annotations == 1


def test_mosaic_places_four_items_with_their_boxes() -> None:
    item = square_item("a", 50, (8, 8, 40, 40))
    partners = tuple(square_item(f"p{k}", 100 + 50 * k, (8, 8, 40, 40)) for k in range(3))
    for seed in range(5):
        out = run([{"mosaic": {"scale": fixed(0.5)}}], Item(item.image, item.annotations, "a", partners=partners), seed)
        assert out.image.shape == item.image.shape and len(out.partner_keys) == 3
        values = {"b": 50, **{f"p{n}.b": 100 + 50 * int(key[1]) for n, key in enumerate(out.partner_keys)}}
        for annotation in out.annotations:
            value = values[annotation.id]
            assert np.allclose(edges(annotation.geometry), pixel_box(out.image[:, :, 0] == value), atol=1.0)
        validate_annotations(out.annotations, ImageSize(64, 64), CATEGORIES, policy=BoxBoundsPolicy.REJECT)


def test_copy_paste_puts_rare_objects_into_a_scene_and_occludes_what_they_cover() -> None:
    scene = np.zeros((64, 64, 3), np.uint8)
    road = np.zeros((64, 64), np.uint8)
    road[20:50, 10:54] = 1  # a common object, category 2, mask + box
    scene[road.astype(bool)] = (90, 90, 90)
    annotations = (
        Annotation(Mask(64, 64, rle.compress(rle.encode(road))), 2, id="m", instance_id="car"),
        Annotation(Box(10, 20, 44, 30), 2, id="mb", instance_id="car"),
        Annotation(Keypoints((Keypoint(30.5, 30.5, 2), Keypoint(12.5, 22.5, 2), Keypoint(0, 0, 0))), 1, id="k"),
    )
    donor = np.zeros((64, 64, 3), np.uint8)
    rare = np.zeros((64, 64), np.uint8)
    cv2.circle(rare, (30, 30), 10, 1, -1)  # a rare object, category 1
    donor[rare.astype(bool)] = (250, 10, 10)
    other = np.zeros((64, 64), np.uint8)
    other[0:8, 0:8] = 1
    partner = Item(donor, (
        Annotation(Mask(64, 64, tuple(rle.encode(rare))), 1, id="r", instance_id="rare"),
        Annotation(Mask(64, 64, tuple(rle.encode(other))), 2, id="o", instance_id="other"),
    ), key="donor")
    out = run([{"copy_paste": {"category_ids": [1]}}], Item(scene, annotations, "scene", partners=(partner,)))
    assert out.partner_keys == ("donor",)
    by_id = {a.id: a for a in out.annotations}
    assert "p0.o" not in by_id  # category 2 was not asked for
    pasted = out.image[:, :, 0] == 250
    assert np.array_equal(rle.decode(list(by_id["p0.r"].geometry.counts), 64, 64).astype(bool), pasted)
    assert edges(by_id["p0.r.box"].geometry) == pixel_box(pasted)
    car = rle.decode(rle.counts_of(by_id["m"].geometry.counts, 64, 64), 64, 64).astype(bool)
    assert np.array_equal(car, out.image[:, :, 0] == 90)  # the car mask lost what the paste hides
    assert edges(by_id["mb"].geometry) == pixel_box(car)
    nose, hidden_free, _ = by_id["k"].geometry.points
    assert (nose.visibility, hidden_free.visibility) == (1, 2)  # under the pasted object: hidden
    validate_annotations(out.annotations, ImageSize(64, 64), CATEGORIES, policy=BoxBoundsPolicy.REJECT)


def test_mixing_is_deterministic_and_composes_with_geometry() -> None:
    item = square_item("a", 200, (4, 4, 30, 30))
    partners = tuple(square_item(f"p{k}", 60 + k, (20, 20, 30, 30)) for k in range(4))
    spec = [{"horizontal_flip": {}}, {"one_of": {"ops": [{"cutmix": {}}, {"mosaic": {}}, {"mixup": {}}]}}, {"rotate": {"angle_degrees": fixed(10)}}]
    first = run(spec, Item(item.image, item.annotations, "a", partners=partners), seed=4)
    again = run(spec, Item(item.image, item.annotations, "a", partners=partners), seed=4)
    assert first.image.tobytes() == again.image.tobytes() and first.annotations == again.annotations
    assert first.partner_keys == again.partner_keys


@pytest.mark.parametrize("op", [{"copy_paste": {"max_instances": 0}}, {"copy_paste": {"category_ids": [0]}}, {"mosaic": {"scale": fixed(0)}}])
def test_bad_mixing_parameters(op: dict) -> None:
    from simulacra_services.core import errors

    with pytest.raises(errors.InvalidArgument) as caught:
        parse_spec({"ops": [op]})
    assert caught.value.reason == "PARAM_OUT_OF_RANGE"
