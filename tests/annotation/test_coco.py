"""COCO import/export: round trip, pycocotools agreement, and precise errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from simulacra_services.annotation.formats import coco, rle
from simulacra_services.annotation.domain.model import (
    Annotation,
    AnnotationKind,
    Box,
    BoxBoundsPolicy,
    Category,
    ClassLabel,
    Mask,
    Polygon,
    RotatedBox,
)
from simulacra_services.core import errors

from .coco_sample import blob_mask, coco_document

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools")


def canonical(document: dict) -> dict:
    """Order-independent form; empty segmentations are the same as none; the free-text
    ``info`` block is not dataset content and is not stored."""
    out = copy.deepcopy(document)
    out.pop("info", None)
    for annotation in out["annotations"]:
        if annotation.get("segmentation") == []:
            del annotation["segmentation"]
        if "keypoints" in annotation:
            annotation["keypoints"] = [float(v) for v in annotation["keypoints"]]
    out["annotations"].sort(key=lambda a: a["id"])
    return out


def test_parse_maps_every_kind() -> None:
    dataset = coco.load_coco(json.dumps(coco_document()).encode())
    person = dataset.categories[1]
    assert person.skeleton == ((0, 1), (0, 2), (1, 3), (2, 4))
    assert person.flip_pairs == ((1, 2), (3, 4))
    image = dataset.images[2]
    assert [(a.id, a.kind, a.instance_id, a.area) for a in image.annotations] == [
        ("105-box", AnnotationKind.BOX, "105", None),
        ("105-seg", AnnotationKind.POLYGON, "105", 700.0),
        ("105-kp", AnnotationKind.KEYPOINTS, "105", None),
        ("106-box", AnnotationKind.BOX, "106", 600.0),
        ("106-kp", AnnotationKind.KEYPOINTS, "106", None),
        ("107-box", AnnotationKind.BOX, "107", None),
        ("107-seg", AnnotationKind.MASK, "107", 277.0),
    ]
    crowd, compressed = dataset.images[1].annotations[1], dataset.images[1].annotations[3]
    assert crowd.iscrowd is True and isinstance(crowd.geometry, Mask) and not crowd.geometry.compressed
    assert isinstance(compressed.geometry, Mask) and compressed.geometry.compressed


def test_import_then_export_gives_back_equivalent_coco() -> None:
    original = coco_document()
    dataset = coco.load_coco(json.dumps(original).encode())
    exported, counts = coco.to_coco(dataset.categories, dataset.images)
    assert canonical(exported) == canonical(original)
    assert counts.annotations_exported == 14 and not counts.skipped  # 1 + 2 + 2 + 2 + 3 + 2 + 2 pieces


def test_pycocotools_loads_the_export_with_equal_masks_and_areas(tmp_path: Path) -> None:
    original = coco_document()
    dataset = coco.load_coco(json.dumps(original).encode())
    exported, _ = coco.to_coco(dataset.categories, dataset.images)
    paths = []
    for name, document in (("original.json", original), ("exported.json", exported)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(document))
    before, after = COCO(str(paths[0])), COCO(str(paths[1]))
    assert sorted(after.getAnnIds()) == sorted(before.getAnnIds())
    assert after.getCatIds() == before.getCatIds()
    for ann_id in before.getAnnIds():
        a, b = before.loadAnns(ann_id)[0], after.loadAnns(ann_id)[0]
        assert b["area"] == a["area"]
        if "segmentation" in a and a["segmentation"]:
            np.testing.assert_array_equal(after.annToMask(b), before.annToMask(a))


def test_export_derives_missing_bbox_and_area_and_numbers_annotations() -> None:
    mask = blob_mask(60, 80, 5)
    counts = coco_mask.encode(np.asfortranarray(mask))
    images = [
        coco.CocoImage(
            1,
            "x.png",
            80,
            60,
            (
                Annotation(Mask(60, 80, tuple(rle.encode(mask))), category_id=1, instance_id="obj-a"),
                Annotation(Polygon(((0, 0, 4, 0, 4, 3),)), category_id=1),
                Annotation(Box(1, 1, 2, 5), category_id=1),
                Annotation(ClassLabel(), category_id=1),
                Annotation(RotatedBox(5, 5, 2, 2, 10), category_id=1),
            ),
        )
    ]
    document, result = coco.to_coco([Category(1, "car")], images)
    first, second, third = document["annotations"]
    assert [a["id"] for a in document["annotations"]] == [1, 2, 3]  # "obj-a" is not numeric: renumbered
    assert first["bbox"] == [float(v) for v in coco_mask.toBbox(counts)]
    assert first["area"] == float(coco_mask.area(counts))
    assert second["bbox"] == [0, 0, 4, 3] and second["area"] == 6.0
    assert third["area"] == 10.0 and "segmentation" not in third
    assert result.skipped == {AnnotationKind.CLASS_LABEL: 1, AnnotationKind.ROTATED_BOX: 1}
    assert result.annotations_exported == 3


# ---- errors --------------------------------------------------------------------------


def broken(change) -> errors.SimulacraError:
    document = coco_document()
    change(document)
    with pytest.raises(errors.InvalidArgument) as caught:
        coco.load_coco(json.dumps(document).encode())
    return caught.value


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        (lambda d: d["annotations"][0].update(image_id=99), "INVALID_COCO", "annotations[0].image_id"),
        (lambda d: d["annotations"][1].update(id=101), "INVALID_COCO", "annotations[1].id"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "INVALID_COCO", "annotations[0].bbox"),
        (lambda d: d["annotations"][0].update(bbox=[70, 2, 30, 5]), "BOX_OUT_OF_BOUNDS", "annotations[0].box.w"),
        (lambda d: d["annotations"][0].update(category_id=7), "UNKNOWN_CATEGORY", "annotations[0].category_id"),
        (lambda d: d["annotations"][4].update(keypoints=[1, 1, 2]), "KEYPOINT_COUNT_MISMATCH", "annotations[4].keypoints.points"),
        (lambda d: d["annotations"][4]["keypoints"].__setitem__(2, 5), "INVALID_KEYPOINT_VISIBILITY", "annotations[4].keypoints.points[0].visibility"),
        (lambda d: d["annotations"][3]["segmentation"].update(size=[61, 80]), "RLE_SIZE_MISMATCH", "annotations[3].mask.height"),
        (lambda d: d["annotations"][2]["segmentation"]["counts"].append(3), "INVALID_RLE", "annotations[2].mask.uncompressed.counts"),
        (lambda d: d["annotations"][1]["segmentation"][0].pop(), "INVALID_POLYGON", "annotations[1].polygon.parts[0].coordinates"),
        (lambda d: d["annotations"][0].update(iscrowd=2), "INVALID_COCO", "annotations[0].iscrowd"),
        (lambda d: d["images"][1].update(id=11), "INVALID_COCO", "images[1].id"),
        (lambda d: d["images"][1].update(file_name="../etc/passwd"), "INVALID_PATH", "images[1].file_name"),
        (lambda d: d["images"][0].update(width=0), "INVALID_COCO", "images[0].width"),
        (lambda d: d["categories"][1].update(skeleton=[[1, 9]]), "INVALID_CATEGORY", "categories[1].skeleton[0]"),
        (lambda d: d["categories"][1].update(id=1), "DUPLICATE_CATEGORY", "categories[1].category_id"),
        (lambda d: d.pop("images"), "INVALID_COCO", "images"),
    ],
)
def test_bad_coco_names_the_record(change, reason: str, field: str) -> None:
    error = broken(change)
    assert (error.reason, error.metadata["field"]) == (reason, field)


def test_clip_policy_applies_to_imports() -> None:
    document = coco_document()
    document["annotations"][0]["bbox"] = [70, 2, 30, 5]
    dataset = coco.load_coco(json.dumps(document).encode(), policy=BoxBoundsPolicy.CLIP)
    assert dataset.images[0].annotations[0].geometry == Box(70, 2, 10, 5)


def test_not_json_and_too_large() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        coco.load_coco(b'{"images": [')
    assert caught.value.reason == "INVALID_COCO"
    with pytest.raises(errors.InvalidArgument) as caught:
        coco.load_coco(b"{}" + b" " * 10, max_bytes=8)
    assert caught.value.reason == "COCO_FILE_TOO_LARGE"
    assert caught.value.metadata == {"size": "12", "limit": "8"}
