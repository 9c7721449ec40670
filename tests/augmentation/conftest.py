"""A real augmentation service for each test: loopback gRPC via ``tests.harness.running_service``.

``augmentation`` runs it over local files; ``stored`` (pipelines, which live in
object storage) runs it over each backend, local files and SeaweedFS S3.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from simulacra_client.api.augmentation.v1 import augmentation_service_pb2_grpc as api_grpc
from simulacra_services.augmentation.service import DEFINITION
from tests.harness import BACKENDS, RunningService, backend_settings, running_service


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
