"""YOLO label files <-> pixel boxes: exact round trips and precise errors."""

from __future__ import annotations

import math

import pytest

from simulacra_services.annotation.domain.model import Box, Category, ImageSize
from simulacra_services.annotation.formats import yolo
from simulacra_services.core import errors

IMAGE = ImageSize(640, 480)


def test_a_label_line_becomes_a_pixel_box_with_top_left_corner() -> None:
    boxes = yolo.parse_labels(b"1 0.5 0.25 0.25 0.5\n", IMAGE, class_count=3)
    assert boxes == [yolo.YoloBox(1, Box(240.0, 0.0, 160.0, 240.0))]


def test_blank_lines_comments_and_a_score_column_are_understood() -> None:
    text = b"# predictions\n\n0 0.5 0.5 0.1 0.1 0.75\n   \n2 0.1 0.1 0.2 0.2\n"
    boxes = yolo.parse_labels(text, IMAGE, class_count=3)
    assert [(b.class_index, b.score) for b in boxes] == [(0, 0.75), (2, None)]


def test_format_then_parse_gives_back_the_same_boxes() -> None:
    boxes = [
        yolo.YoloBox(0, Box(10.5, 20.25, 100.0, 50.125)),
        yolo.YoloBox(2, Box(0.0, 0.0, 640.0, 480.0), score=0.5),
        yolo.YoloBox(1, Box(123.456, 78.9, 0.5, 1.25)),
    ]
    parsed = yolo.parse_labels(yolo.format_labels(boxes, IMAGE), IMAGE, class_count=3)
    assert [(b.class_index, b.score) for b in parsed] == [(b.class_index, b.score) for b in boxes]
    for got, want in zip(parsed, boxes):
        for name in ("x", "y", "w", "h"):
            assert math.isclose(getattr(got.box, name), getattr(want.box, name), rel_tol=1e-12, abs_tol=1e-9)


def test_normalized_values_survive_pixels_and_back_exactly_enough() -> None:
    normalized = (0.123456789, 0.987654321, 0.05, 0.0125)
    back = yolo.to_normalized(yolo.to_pixels(*normalized, IMAGE), IMAGE)
    assert all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(back, normalized))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"0 0.5 0.5 0.1\n", "5 numbers"),
        (b"3 0.5 0.5 0.1 0.1\n", "class 3 is not in 0..2"),
        (b"x 0.5 0.5 0.1 0.1\n", "class must be an integer"),
        (b"0 0.5 0.5 1.5 0.1\n", "w = 1.5 is not normalized"),
        (b"0 0.5 0.5 0 0.1\n", "positive"),
        (b"0 0.5 nan 0.1 0.1\n", "finite"),
        (b"0 0.5 0.5 0.1 0.1 1.5\n", "score"),
        (b"\xff\xfe\n", "UTF-8"),
    ],
)
def test_a_bad_line_names_the_file_and_line(text: bytes, fragment: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        yolo.parse_labels(b"0 0.5 0.5 0.1 0.1\n" + text, IMAGE, class_count=3, path="labels/train/a.txt")
    assert caught.value.reason == "INVALID_YOLO"
    assert fragment in caught.value.message
    if text != b"\xff\xfe\n":
        assert caught.value.metadata["field"] == "labels/train/a.txt:2"


def test_class_indices_number_categories_by_id_from_zero() -> None:
    categories = [Category(7, "truck"), Category(1, "car"), Category(3, "bus")]
    assert yolo.class_indices(categories) == {1: 0, 3: 1, 7: 2}
    assert yolo.class_names(categories) == ["car", "bus", "truck"]


def test_data_yaml_round_trip_and_classes_txt() -> None:
    data = yolo.format_data_yaml(["car", "bus"], ["val", "train", "train"])
    assert yolo.parse_class_names(data, "data.yaml") == ["car", "bus"]
    assert b"train: images/train" in data and b"val: images/val" in data
    assert yolo.parse_class_names(b"names: [a, b, c]\n", "data.yml") == ["a", "b", "c"]
    assert yolo.parse_class_names(b"car\n\nbus\n", "classes.txt") == ["car", "bus"]
    with pytest.raises(errors.InvalidArgument, match="names"):
        yolo.parse_class_names(b"nc: 2\n", "data.yaml")
    with pytest.raises(errors.InvalidArgument, match="0..N-1"):
        yolo.parse_class_names(b"names: {0: a, 2: b}\n", "data.yaml")
