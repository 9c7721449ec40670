"""Shared pieces of the import/export job tests (tests/annotation/test_jobs_*.py).

- ``job_service``: the ``JobService`` inside the running test service (the
  ``annotation`` fixture of conftest.py), so that a test can make its chunks
  small or stop a job at a known chunk boundary through ``chunk_hook``.
  Import it together with ``annotation`` into a test module::

      from .jobs_support import annotation, job_service, recorded_job_services  # noqa: F401

- ``sdk(annotation)``: the SDK client to the running service; its calls block,
  so tests run them with ``asyncio.to_thread``.
- ``coco_sample(directory)``: a COCO file with every kind COCO has (boxes,
  multi-part polygons, compressed and uncompressed RLE masks with iscrowd,
  keypoints with visibility 0/1/2, keypoint categories) and its PNG images.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask
from simulacra_client.annotation import AnnotationClient

from simulacra_services.annotation import jobs as jobs_module
from simulacra_services.annotation import rle
from simulacra_services.annotation import service as service_module

from .conftest import Annotations

KEYPOINTS = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]


@pytest.fixture
def recorded_job_services(monkeypatch: pytest.MonkeyPatch) -> list[jobs_module.JobService]:
    """Every JobService the service builds while the test runs."""
    created: list[jobs_module.JobService] = []
    original = jobs_module.JobService

    class Recorded(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(service_module, "JobService", Recorded)
    return created


@pytest.fixture
async def annotation(recorded_job_services: list, annotation: Annotations) -> AsyncIterator[Annotations]:
    """conftest's running service, started after JobService is being recorded."""
    yield annotation


@pytest.fixture
def job_service(annotation: Annotations, recorded_job_services: list[jobs_module.JobService]) -> jobs_module.JobService:
    assert len(recorded_job_services) == 1, "the service built no JobService (or several)"
    return recorded_job_services[0]


@contextmanager
def sdk(annotation: Annotations) -> Iterator[AnnotationClient]:
    client = AnnotationClient(annotation.server.address, timeout=60)
    try:
        yield client
    finally:
        client.close()


def png_bytes(width: int, height: int, seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def blob_mask(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), np.uint8)
    y, x = rng.integers(2, height - 16), rng.integers(2, width - 16)
    mask[y : y + 12, x : x + 10] = 1
    mask[rng.random((height, width)) < 0.03] = 1
    return mask


def coco_document() -> dict:
    """Three images, two categories (one with a keypoint schema), every COCO annotation form."""
    compressed = coco_mask.encode(np.asfortranarray(blob_mask(60, 80, 1)))
    crowd = coco_mask.encode(np.asfortranarray(blob_mask(60, 80, 2)))
    crowd_compressed = coco_mask.encode(np.asfortranarray(blob_mask(50, 100, 3)))
    return {
        "info": {"description": "simulacra test"},
        "images": [
            {"id": 11, "file_name": "a/000011.png", "width": 80, "height": 60},
            {"id": 12, "file_name": "a/000012.png", "width": 80, "height": 60},
            {"id": 13, "file_name": "b/000013.png", "width": 100, "height": 50},
        ],
        "categories": [
            {"id": 1, "name": "car", "supercategory": "vehicle"},
            {"id": 3, "name": "person", "supercategory": "person", "keypoints": KEYPOINTS, "skeleton": [[1, 2], [1, 3], [2, 4], [3, 5]]},
        ],
        "annotations": [
            {"id": 101, "image_id": 11, "category_id": 1, "bbox": [1.5, 2.0, 30.25, 20.0], "area": 605.0, "iscrowd": 0, "segmentation": []},
            {
                "id": 102,
                "image_id": 11,
                "category_id": 1,
                "bbox": [10.0, 10.0, 30.0, 30.0],
                "area": 390.5,
                "iscrowd": 0,
                "segmentation": [[10.0, 10.0, 40.0, 10.0, 40.0, 25.0], [10.0, 30.0, 25.0, 30.0, 25.0, 40.0, 10.0, 40.0]],
            },
            {
                "id": 103,
                "image_id": 12,
                "category_id": 1,
                "bbox": [float(v) for v in coco_mask.toBbox(crowd)],
                "area": float(coco_mask.area(crowd)),
                "iscrowd": 1,
                "segmentation": {"size": [60, 80], "counts": rle.decompress(crowd["counts"].decode())},
            },
            {
                "id": 104,
                "image_id": 12,
                "category_id": 1,
                "bbox": [float(v) for v in coco_mask.toBbox(compressed)],
                "area": float(coco_mask.area(compressed)),
                "iscrowd": 0,
                "segmentation": {"size": [60, 80], "counts": compressed["counts"].decode()},
            },
            {
                "id": 105,
                "image_id": 13,
                "category_id": 3,
                "bbox": [20.0, 5.0, 30.0, 40.0],
                "area": 700.0,
                "iscrowd": 0,
                "segmentation": [[20.0, 5.0, 50.0, 5.0, 50.0, 45.0, 20.0, 45.0]],
                "keypoints": [30, 10, 2, 28, 8, 2, 32, 8, 1, 0, 0, 0, 35, 9, 2],
                "num_keypoints": 4,
            },
            {
                "id": 106,
                "image_id": 13,
                "category_id": 3,
                "bbox": [60.0, 5.0, 20.0, 30.0],
                "area": 600.0,
                "iscrowd": 0,
                "keypoints": [70, 10, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "num_keypoints": 1,
            },
            {
                "id": 107,
                "image_id": 13,
                "category_id": 1,
                "bbox": [float(v) for v in coco_mask.toBbox(crowd_compressed)],
                "area": float(coco_mask.area(crowd_compressed)),
                "iscrowd": 1,
                "segmentation": {"size": [50, 100], "counts": crowd_compressed["counts"].decode()},
            },
        ],
    }


def write_coco(directory: Path, document: dict | None = None) -> tuple[Path, Path, dict]:
    """``annotations.json`` and ``images/...`` (PNG files of the declared sizes); (json, images dir, document)."""
    document = coco_document() if document is None else document
    images = directory / "images"
    for index, image in enumerate(document["images"]):
        path = images / image["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(image["width"], image["height"], seed=index))
    annotations = directory / "annotations.json"
    annotations.write_text(json.dumps(document))
    return annotations, images, document
