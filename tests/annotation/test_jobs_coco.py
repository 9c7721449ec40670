"""COCO import and export jobs through the running service, checked with pycocotools."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from pycocotools.coco import COCO
from simulacra_client.annotation import JobFailedError, ProgressEvent
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.errors import SimulacraRpcError

from .conftest import Annotations
from .jobs_support import KEYPOINTS, coco_document, sdk, write_coco

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools"), pytest.mark.timeout(180)]

PIECES = 14  # our annotations of coco_document(): box, segmentation and keypoints of each COCO annotation


def _load(path: Path) -> COCO:
    return COCO(str(path))


async def test_import_then_export_gives_back_the_coco_file(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, images_dir, original = write_coco(tmp_path / "in")
    events: list[ProgressEvent] = []
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "coco")
        job = await asyncio.to_thread(client.import_coco, "coco", annotations_path, images_dir, progress=events.append)
        commit = await asyncio.to_thread(client.commit, "coco")
        export = await asyncio.to_thread(client.export_coco, "coco@1", tmp_path / "out")
        categories = await asyncio.to_thread(client.list_categories, "coco@1")

    assert (job.result.items_created, job.result.annotations_created, job.result.categories_created) == (3, PIECES, 2)
    assert commit.version.item_count == 3 and commit.version.annotation_count == PIECES
    assert (export.result.items_exported, export.result.annotations_exported) == (3, PIECES)
    assert not export.result.skipped
    done = [e.done for e in events if e.stage == "importing"]
    assert done == sorted(done) and done[-1] == 3
    person = next(c for c in categories if c.display_name == "person")
    assert [(p.first, p.second) for p in person.flip_pairs] == [(1, 2), (3, 4)]

    out = tmp_path / "out"
    assert sorted(f.path for f in export.result.files) == ["annotations.json", "images/a/000011.png", "images/a/000012.png", "images/b/000013.png"]
    for image in original["images"]:
        assert (out / "images" / image["file_name"]).read_bytes() == (images_dir / image["file_name"]).read_bytes()

    before, after = _load(annotations_path), _load(out / "annotations.json")
    assert after.dataset["categories"] == original["categories"]
    assert after.dataset["images"] == original["images"]
    assert sorted(after.getAnnIds()) == sorted(before.getAnnIds())
    for ann_id in before.getAnnIds():
        a, b = before.loadAnns(ann_id)[0], after.loadAnns(ann_id)[0]
        assert (b["image_id"], b["category_id"], b["iscrowd"]) == (a["image_id"], a["category_id"], a["iscrowd"])
        assert b["area"] == a["area"]
        assert b["bbox"] == a["bbox"]
        if a.get("segmentation"):
            assert type(b["segmentation"]) is type(a["segmentation"])  # polygon stays polygon, RLE form kept
            np.testing.assert_array_equal(after.annToMask(b), before.annToMask(a))
        else:
            assert not b.get("segmentation")
        if "keypoints" in a:
            assert b["keypoints"] == [float(v) for v in a["keypoints"]]
            assert b["num_keypoints"] == a["num_keypoints"]


async def test_running_the_same_import_again_skips_every_image(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, images_dir, _ = write_coco(tmp_path)
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "twice")
        await asyncio.to_thread(client.import_coco, "twice", annotations_path, images_dir)
        again = await asyncio.to_thread(client.import_coco, "twice", annotations_path, images_dir)
        dataset = await asyncio.to_thread(client.get_dataset, "twice")
        listed = await asyncio.to_thread(lambda: list(client.list_import_jobs("twice")))
        full = await asyncio.to_thread(client.get_import_job, listed[0].name)
    assert (again.result.items_created, again.result.items_skipped, again.result.categories_created) == (0, 3, 0)
    assert dataset.item_count == 3 and dataset.category_count == 2
    # List (and Watch) leave out the per-image manifest to stay small; Get returns the job whole.
    assert [job.name for job in listed] == [again.name, listed[1].name] and len(listed) == 2
    assert listed[0].coco.annotations.path == "annotations.json" and not listed[0].coco.images
    assert sorted(f.path for f in full.coco.images) == ["a/000011.png", "a/000012.png", "b/000013.png"]
    assert full.coco.annotations.size_bytes == annotations_path.stat().st_size
    assert all(f.size_bytes == (images_dir / f.path).stat().st_size for f in full.coco.images)
    assert full.result == again.result


async def test_imported_item_ids_follow_the_files_in_every_dataset_and_run(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, images_dir, _ = write_coco(tmp_path)
    ids = []
    with sdk(annotation) as client:
        for name in ("ids-a", "ids-b"):
            await asyncio.to_thread(client.create_dataset, name)
            await asyncio.to_thread(client.import_coco, name, annotations_path, images_dir)
            items = await asyncio.to_thread(lambda: list(client.list_items(name)))
            ids.append({item.file_name: item.name.rsplit("/", 1)[1] for item in items})
        # The same files get the same ids in any dataset, in every run: sha256(file name, NUL, content sha256).
        assert ids[0] == ids[1] and len(ids[0]) == 3
        for file_name, item_id in ids[0].items():
            content = hashlib.sha256((images_dir / file_name).read_bytes()).hexdigest()
            assert item_id == hashlib.sha256(f"{file_name}\0{content}".encode()).hexdigest()[:32]


async def test_a_bad_annotation_fails_the_job_naming_the_record_and_writes_nothing(annotation: Annotations, tmp_path: Path) -> None:
    document = json.loads(write_coco(tmp_path)[0].read_text())
    document["annotations"][2]["bbox"] = [70.0, 10.0, 20.0, 5.0]  # x + w = 90 > width 80
    annotations_path, images_dir, _ = write_coco(tmp_path, document)
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "broken")
        with pytest.raises(JobFailedError) as caught:
            await asyncio.to_thread(client.import_coco, "broken", annotations_path, images_dir)
        dataset = await asyncio.to_thread(client.get_dataset, "broken")
    error = caught.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "BOX_OUT_OF_BOUNDS"
    assert error.metadata["field"] == "annotations[2].box.w"
    assert error.metadata["file"] == "annotations.json"
    assert "annotations[2]" in error.message and "Traceback" not in error.message
    assert error.job.state == common_pb2.JOB_STATE_FAILED
    assert (dataset.item_count, dataset.category_count) == (0, 0)


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        (lambda d: d.update(images="nope"), "INVALID_COCO", "images"),
        (lambda d: d["annotations"][4].update(keypoints=[1, 2, 2]), "KEYPOINT_COUNT_MISMATCH", "annotations[4].keypoints.points"),
        (lambda d: d["annotations"][3]["segmentation"].update(size=[10, 10]), "RLE_SIZE_MISMATCH", "annotations[3].mask.height"),
        (lambda d: d["annotations"][0].update(category_id=99), "UNKNOWN_CATEGORY", "annotations[0].category_id"),
    ],
)
async def test_each_kind_of_bad_record_is_named(annotation: Annotations, tmp_path: Path, change, reason: str, field: str) -> None:
    document = json.loads(write_coco(tmp_path)[0].read_text())
    change(document)
    annotations_path = tmp_path / "annotations.json"
    annotations_path.write_text(json.dumps(document))
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "bad")
        digest = (await asyncio.to_thread(client.upload_blobs, [annotations_path]))[0]
        source = pb.CocoImportSource(annotations=pb.ManifestFile(path="annotations.json", sha256=digest))
        created = await asyncio.to_thread(client.create_import_job, "bad", pb.ImportJob(coco=source))
        with pytest.raises(JobFailedError) as caught:
            await asyncio.to_thread(client.wait_import_job, created.name)
    assert caught.value.reason == reason
    assert caught.value.metadata["field"] == field


async def test_an_image_whose_size_differs_from_the_coco_file_fails_the_job(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, images_dir, document = write_coco(tmp_path)
    changed = copy.deepcopy(document)
    changed["images"][0]["width"] = 90  # the file on disk is 80 x 60
    changed["annotations"][0]["bbox"] = [70.0, 2.0, 15.0, 10.0]  # fits 90, not the real 80
    annotations_path.write_text(json.dumps(changed))
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "sizes")
        with pytest.raises(JobFailedError) as caught:
            await asyncio.to_thread(client.import_coco, "sizes", annotations_path, images_dir)
    assert caught.value.reason == "IMAGE_SIZE_MISMATCH"
    assert caught.value.metadata["field"] == "images[0]"
    assert caught.value.metadata["file_name"] == "a/000011.png"
    assert "90x60" in caught.value.message and "80x60" in caught.value.message


async def test_an_image_the_manifest_lacks_fails_the_job(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, images_dir, _ = write_coco(tmp_path)
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "lacking")
        json_digest, image_digest = await asyncio.to_thread(client.upload_blobs, [annotations_path, images_dir / "a/000011.png"])
        source = pb.CocoImportSource(
            annotations=pb.ManifestFile(path="annotations.json", sha256=json_digest),
            images=[pb.ManifestFile(path="a/000011.png", sha256=image_digest)],
        )
        created = await asyncio.to_thread(client.create_import_job, "lacking", pb.ImportJob(coco=source))
        with pytest.raises(JobFailedError) as caught:
            await asyncio.to_thread(client.wait_import_job, created.name)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "IMAGE_FILE_MISSING"
    assert caught.value.metadata["file_name"] == "a/000012.png"


async def test_create_rejects_a_bad_manifest_before_any_job_exists(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, _, _ = write_coco(tmp_path)
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "manifest")
        (digest,) = await asyncio.to_thread(client.upload_blobs, [annotations_path])
        good = pb.ManifestFile(path="annotations.json", sha256=digest)
        cases = [
            (pb.ImportJob(), grpc.StatusCode.INVALID_ARGUMENT, "MISSING_SOURCE", "import_job.source"),
            (pb.ImportJob(coco=pb.CocoImportSource(annotations=pb.ManifestFile(path="../x.json", sha256=digest))), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PATH", "import_job.coco.annotations.path"),
            (pb.ImportJob(coco=pb.CocoImportSource(annotations=pb.ManifestFile(path="a.json", sha256="XYZ"))), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHA256", "import_job.coco.annotations.sha256"),
            (pb.ImportJob(coco=pb.CocoImportSource(annotations=good, images=[good, good])), grpc.StatusCode.INVALID_ARGUMENT, "DUPLICATE_PATH", "import_job.coco.images[1].path"),
            (pb.ImportJob(coco=pb.CocoImportSource(annotations=good, split="Not A Split")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SPLIT", "import_job.coco.split"),
            (pb.ImportJob(coco=pb.CocoImportSource(annotations=pb.ManifestFile(path="a.json", sha256="0" * 64))), grpc.StatusCode.FAILED_PRECONDITION, "BLOB_NOT_FOUND", "import_job.coco.annotations.sha256"),
            (pb.ImportJob(coco=pb.CocoImportSource(annotations=good), box_bounds_policy=7), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BOX_BOUNDS_POLICY", "import_job.box_bounds_policy"),
        ]
        for job, code, reason, field in cases:
            with pytest.raises(SimulacraRpcError) as caught:
                await asyncio.to_thread(client.create_import_job, "manifest", job)
            assert (caught.value.code, caught.value.reason, caught.value.metadata.get("field")) == (code, reason, field), job
        with pytest.raises(SimulacraRpcError) as missing_dataset:
            await asyncio.to_thread(client.create_import_job, "nobody", pb.ImportJob(coco=pb.CocoImportSource(annotations=good)))
        jobs = await asyncio.to_thread(lambda: list(client.list_import_jobs("manifest")))
    assert missing_dataset.value.code is grpc.StatusCode.NOT_FOUND
    assert jobs == []


async def test_export_takes_a_filter_and_can_leave_the_images_out(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, images_dir, _ = write_coco(tmp_path / "in")
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "subset")
        await asyncio.to_thread(client.import_coco, "subset", annotations_path, images_dir)
        await asyncio.to_thread(client.commit, "subset")
        export = await asyncio.to_thread(
            client.export_coco, "subset@latest", tmp_path / "out", filter='category = "person"', skip_images=True
        )
        with pytest.raises(SimulacraRpcError) as bad_filter:
            await asyncio.to_thread(client.export_coco, "subset@1", tmp_path / "x", filter="category ==")
        with pytest.raises(SimulacraRpcError) as no_version:
            await asyncio.to_thread(client.export_coco, "subset@9", tmp_path / "x")
    assert [f.path for f in export.result.files] == ["annotations.json"]
    assert export.version == "datasets/subset/versions/1"  # `latest` is stored as the number
    document = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [image["file_name"] for image in document["images"]] == ["b/000013.png"]
    assert (bad_filter.value.code, bad_filter.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER")
    assert (no_version.value.code, no_version.value.reason) == (grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND")


async def test_a_category_differing_only_in_flip_pairs_fails_the_import_with_category_conflict(annotation: Annotations, tmp_path: Path) -> None:
    annotations_path, images_dir, _ = write_coco(tmp_path)
    # The COCO file's person derives flip pairs (1, 2), (3, 4) from its left_/right_ keypoint names; this one has none.
    person = pb.Category(
        category_id=3, display_name="person", supercategory="person", keypoint_names=KEYPOINTS,
        skeleton=[pb.KeypointPair(first=a, second=b) for a, b in ((0, 1), (0, 2), (1, 3), (2, 4))],
    )
    car = pb.Category(category_id=1, display_name="car", supercategory="vehicle")
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "flips", categories=[car, person])
        with pytest.raises(JobFailedError) as caught:  # no category is missing: the planner alone must see it
            await asyncio.to_thread(client.import_coco, "flips", annotations_path, images_dir)
        dataset = await asyncio.to_thread(client.get_dataset, "flips")
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_CONFLICT")
    assert caught.value.metadata["category_id"] == "3"
    assert (dataset.item_count, dataset.category_count) == (0, 2)


async def test_an_export_lists_the_images_sorted_by_coco_id(annotation: Annotations, tmp_path: Path) -> None:
    document = json.loads(write_coco(tmp_path / "in")[0].read_text())
    document["images"].reverse()  # ids 13, 12, 11 in the file
    annotations_path, images_dir, _ = write_coco(tmp_path / "in", document)
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "order")
        await asyncio.to_thread(client.import_coco, "order", annotations_path, images_dir)
        await asyncio.to_thread(client.commit, "order")
        await asyncio.to_thread(client.export_coco, "order@1", tmp_path / "out", skip_images=True)
    exported = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [image["id"] for image in exported["images"]] == [11, 12, 13]
    assert exported["images"] == sorted(document["images"], key=lambda image: image["id"])
