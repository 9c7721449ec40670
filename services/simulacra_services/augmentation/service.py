"""The augmentation service, as the server bootstrap runs it.

``register`` opens the object store (stored pipelines), starts the worker
pool and adds the servicer. Dataset jobs are not served yet: their RPCs answer
UNIMPLEMENTED with reason NOT_YET_IMPLEMENTED.
"""

from __future__ import annotations

import asyncio

import grpc

from simulacra_client.api.augmentation.v1 import augmentation_service_pb2_grpc as api_grpc
from simulacra_services.augmentation.api.servicer import AugmentationServicer
from simulacra_services.augmentation.domain.batches import BatchRunner
from simulacra_services.augmentation.persistence.pipelines import PipelineRepository
from simulacra_services.core.config import Settings
from simulacra_services.core.server import CloseHook, ServiceDefinition
from simulacra_services.core.storage import open_object_store


async def register(server: grpc.aio.Server, settings: Settings, *, workers: int | None = None) -> CloseHook:
    """``workers``: threads that augment items (default: the CPU count, at most 8)."""
    objects = await asyncio.to_thread(open_object_store, settings)
    runner = BatchRunner(workers)
    servicer = AugmentationServicer(PipelineRepository(objects), runner, max_image_pixels=settings.max_image_pixels)
    api_grpc.add_AugmentationServiceServicer_to_server(servicer, server)

    async def close() -> None:
        runner.close()
        await asyncio.to_thread(objects.close)

    return close


DEFINITION = ServiceDefinition(
    name="augmentation",
    title="augmentation",
    error_domain="augmentation.simulacra.dev",
    service_names=("simulacra.augmentation.v1.AugmentationService",),
    register=register,
)
