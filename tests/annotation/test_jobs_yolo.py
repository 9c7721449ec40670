"""YOLO import and export jobs through the running service: boxes round-trip."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import grpc
import pytest
import yaml
from simulacra_client.annotation import JobFailedError
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb

from simulacra_services.annotation.domain.model import ImageSize
from simulacra_services.annotation.formats import yolo

from .conftest import Annotations
from .jobs_support import png_bytes, sdk, write_coco

pytestmark = pytest.mark.timeout(180)

NAMES = ["car", "bus", "person"]
IMAGES = {  # path under images/ -> (width, height, label lines or None)
    "train/a.png": (64, 48, "0 0.5 0.5 0.25 0.5\n2 0.125 0.25 0.25 0.5 0.9\n"),
    "train/sub/b.png": (32, 32, None),
    "val/c.png": (40, 30, "1 0.3 0.4 0.2 0.2\n1 0.9 0.9 0.1 0.1\n0 0.5 0.5 1 1\n"),
}


def write_yolo(root: Path, images: dict = IMAGES) -> Path:
    for seed, (relative, (width, height, labels)) in enumerate(images.items()):
        image = root / "images" / relative
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(png_bytes(width, height, seed=seed))
        if labels is not None:
            label = (root / "labels" / relative).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(labels)
    (root / "data.yaml").write_text(yaml.safe_dump({"names": NAMES}))
    return root


def boxes_of(path: Path, size: ImageSize) -> list[yolo.YoloBox]:
    return yolo.parse_labels(path.read_bytes(), size, class_count=len(NAMES)) if path.is_file() else []


async def test_import_then_export_gives_back_the_yolo_directory(annotation: Annotations, tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "in")
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "boxes")
        job = await asyncio.to_thread(client.import_yolo, "boxes", root, NAMES)
        await asyncio.to_thread(client.commit, "boxes")
        export = await asyncio.to_thread(client.export_yolo, "boxes@1", tmp_path / "out")
        statistics = await asyncio.to_thread(client.statistics, "boxes@1")
        items = await asyncio.to_thread(lambda: list(client.list_items("boxes@1")))
        again = await asyncio.to_thread(client.import_yolo, "boxes", root, NAMES)
    assert (job.result.items_created, job.result.annotations_created, job.result.categories_created) == (3, 5, 3)
    assert (again.result.items_created, again.result.items_skipped) == (0, 3)
    assert dict(statistics.items_per_split) == {"train": 2, "val": 1}
    assert (export.result.items_exported, export.result.annotations_exported) == (3, 5)
    out = tmp_path / "out"
    names = yaml.safe_load((out / "data.yaml").read_text())["names"]
    assert [names[i] for i in range(len(names))] == NAMES
    for relative, (width, height, labels) in IMAGES.items():
        assert (out / "images" / relative).read_bytes() == (root / "images" / relative).read_bytes()
        size = ImageSize(width, height)
        original = boxes_of((root / "labels" / relative).with_suffix(".txt"), size)
        exported = boxes_of((out / "labels" / relative).with_suffix(".txt"), size)
        assert [(b.class_index, b.score) for b in exported] == [(b.class_index, b.score) for b in original]
        for got, want in zip(exported, original):
            for name in ("x", "y", "w", "h"):
                assert math.isclose(getattr(got.box, name), getattr(want.box, name), rel_tol=1e-12, abs_tol=1e-9)
        assert (labels is None) == (not (out / "labels" / relative).with_suffix(".txt").exists())
    assert sorted(item.file_name for item in items) == ["a.png", "c.png", "sub/b.png"]


async def test_a_bad_label_line_fails_the_job_naming_file_and_line(annotation: Annotations, tmp_path: Path) -> None:
    images = dict(IMAGES)
    images["val/c.png"] = (40, 30, "1 0.3 0.4 0.2 0.2\n5 0.5 0.5 0.1 0.1\n")
    root = write_yolo(tmp_path, images)
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "bad-labels")
        with pytest.raises(JobFailedError) as caught:
            await asyncio.to_thread(client.import_yolo, "bad-labels", root, NAMES)
        dataset = await asyncio.to_thread(client.get_dataset, "bad-labels")
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_YOLO")
    assert caught.value.metadata["field"] == "labels/val/c.txt:2"
    assert (dataset.item_count, dataset.category_count) == (0, 0)


async def test_class_names_that_clash_with_the_dataset_fail_before_writing(annotation: Annotations, tmp_path: Path) -> None:
    root = write_yolo(tmp_path)
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "clash", categories=[pb.Category(category_id=1, display_name="truck")])
        with pytest.raises(JobFailedError) as caught:
            await asyncio.to_thread(client.import_yolo, "clash", root, NAMES)
        dataset = await asyncio.to_thread(client.get_dataset, "clash")
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_CONFLICT")
    assert (dataset.item_count, dataset.category_count) == (0, 1)


async def test_boxes_outside_the_image_are_clipped_when_asked(annotation: Annotations, tmp_path: Path) -> None:
    images = {"train/a.png": (64, 48, "0 0.95 0.5 0.2 0.2\n")}  # reaches x = 1.05 * 64
    root = write_yolo(tmp_path, images)
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "clip")
        with pytest.raises(JobFailedError) as rejected:
            await asyncio.to_thread(client.import_yolo, "clip", root, NAMES)
        job = await asyncio.to_thread(client.import_yolo, "clip", root, NAMES, box_bounds_policy=pb.BOX_BOUNDS_POLICY_CLIP)
        (item,) = await asyncio.to_thread(lambda: list(client.list_items("clip")))
    assert rejected.value.reason == "BOX_OUT_OF_BOUNDS"
    assert job.result.items_created == 1
    box = item.annotations[0].box
    assert math.isclose(box.x + box.w, 64.0) and math.isclose(box.x, (0.95 - 0.1) * 64)


async def test_a_yolo_export_of_a_coco_dataset_keeps_boxes_and_counts_the_rest(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, images_dir, _ = write_coco(tmp_path / "coco")
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "mixed")
        await asyncio.to_thread(client.import_coco, "mixed", annotations_path, images_dir)
        await asyncio.to_thread(client.commit, "mixed")
        export = await asyncio.to_thread(client.export_yolo, "mixed@1", tmp_path / "out", skip_images=True)
    skipped = {pb.AnnotationKind.Name(k.kind): k.annotation_count for k in export.result.skipped}
    assert export.result.annotations_exported == 7  # one box per COCO annotation
    assert skipped == {"ANNOTATION_KIND_POLYGON": 2, "ANNOTATION_KIND_MASK": 3, "ANNOTATION_KIND_KEYPOINTS": 2}
    names = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())["names"]
    assert names == {0: "car", 1: "person"}  # categories 1 and 3, numbered by id
    assert sorted(f.path for f in export.result.files) == [
        "data.yaml", "labels/train/a/000011.txt", "labels/train/a/000012.txt", "labels/train/b/000013.txt",
    ]
