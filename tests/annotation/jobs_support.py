"""Shared pieces of the import/export job tests (tests/annotation/test_jobs_*.py).

- ``job_service``: the ``JobService`` inside the running test service (the
  ``annotation`` fixture of conftest.py, built through the service's
  ``job_service`` dependency), so that a test can make its chunks small or
  stop a job at a known chunk boundary through ``chunk_hook``. Import it
  together with ``annotation`` into a test module::

      from .jobs_support import annotation, annotation_dependencies, job_service, recorded_job_services  # noqa: F401

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
from typing import Any
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from simulacra_client.annotation import AnnotationClient

from simulacra_services.annotation.api import jobs as jobs_module

from .coco_sample import KEYPOINTS, coco_document  # noqa: F401 - KEYPOINTS re-exported to the job tests
from .conftest import Annotations

class JobServiceRecorder(list):
    """A ``job_service`` dependency of the service's ``register``: builds the real ``JobService``
    and keeps each one it builds, so that a test can tune it (no patching of any class)."""

    def __call__(self, *args: object, **kwargs: object) -> jobs_module.JobService:
        service = jobs_module.JobService(*args, **kwargs)
        self.append(service)
        return service


@pytest.fixture
def recorded_job_services() -> JobServiceRecorder:
    """Every JobService the service builds while the test runs."""
    return JobServiceRecorder()


@pytest.fixture
def annotation_dependencies(recorded_job_services: JobServiceRecorder) -> dict[str, Any]:
    """conftest's running service gets the recorder as its ``job_service`` dependency."""
    return {"job_service": recorded_job_services}


@pytest.fixture
async def annotation(annotation: Annotations) -> AsyncIterator[Annotations]:
    """conftest's running service (kept for the modules that import it from here)."""
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
