"""A real augmentation service for each test: loopback gRPC via ``tests.harness.running_service``.

``augmentation`` runs it over local files; ``stored`` (pipelines, which live in
object storage) runs it over each backend, local files and SeaweedFS S3;
``services`` runs a real annotation-store beside it for the dataset jobs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import cv2
import numpy as np
import pytest

from simulacra_client.annotation import AnnotationClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as apb
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2_grpc as api_grpc
from simulacra_services.annotation.service import DEFINITION as ANNOTATION
from simulacra_services.augmentation.service import DEFINITION
from tests.augmentation.support import photo
from tests.harness import BACKENDS, RunningService, backend_settings, local_settings, running_service


@pytest.fixture
async def augmentation(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[RunningService]:
    settings = backend_settings(request, tmp_path, "local")
    async with running_service(DEFINITION, settings, workers=2) as service:
        yield service


@pytest.fixture(params=BACKENDS)
async def stored(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[RunningService]:
    settings = backend_settings(request, tmp_path, request.param)
    async with running_service(DEFINITION, settings) as service:
        yield service


def stub(service: RunningService) -> api_grpc.AugmentationServiceStub:
    return api_grpc.AugmentationServiceStub(service.channel)


@dataclass
class Services:
    annotation_address: str
    stub: api_grpc.AugmentationServiceStub
    augmentation_address: str = ""

    def client(self) -> AnnotationClient:
        return AnnotationClient(self.annotation_address)


@pytest.fixture
async def services(tmp_path) -> AsyncIterator[Services]:
    async with running_service(ANNOTATION, local_settings(tmp_path / "annotation")) as annotation:
        settings = local_settings(tmp_path / "augmentation", annotation_address=annotation.address)
        async with running_service(DEFINITION, settings, workers=1) as augmentation:
            yield Services(annotation.address, api_grpc.AugmentationServiceStub(augmentation.channel), augmentation.address)


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def make_source(services: Services) -> str:
    """datasets/src@1: 6 train items with a car (one also with a bike), 2 val items."""
    with services.client() as client:
        client.create_dataset("src", categories=[apb.Category(category_id=1, display_name="car"), apb.Category(category_id=2, display_name="bike")])
        items = []
        for index in range(8):
            annotations = [apb.Annotation(category_id=1, box=apb.Box(x=4, y=6, w=20, h=14))]
            if index == 0:
                annotations.append(apb.Annotation(category_id=2, box=apb.Box(x=20, y=20, w=10, h=10)))
            split = "val" if index >= 6 else "train"
            items.append((f"img{index}", apb.Item(image=apb.Image(data=_png(photo(40, 48, seed=index))), split=split, annotations=annotations)))
        client.upload_items("src", items)
        return client.commit("src").version.name


