"""The augmentation service, as the server bootstrap runs it.

``register`` opens the object store (stored pipelines) and the metadata
database (dataset jobs; migrated at start), starts the worker pool and the job
runner, and adds the servicer. Dataset jobs reach the annotation-store at
``settings.address("annotation")`` (``SIMULACRA_ANNOTATION_ADDRESS``).
"""

from __future__ import annotations

import asyncio

import grpc

from simulacra_client.api.augmentation.v1 import augmentation_service_pb2_grpc as api_grpc
from simulacra_services.augmentation.api.annotation_store import AnnotationStoreGateway
from simulacra_services.augmentation.api.engine_processes import EngineProcesses
from simulacra_services.augmentation.api.servicer import AugmentationServicer
from simulacra_services.augmentation.domain.batches import BatchRunner
from simulacra_services.augmentation.jobs.dataset_job import KIND, AugmentDatasetHandler, job_name
from simulacra_services.augmentation.persistence.pipelines import PipelineRepository
from simulacra_services.augmentation.tables import AUGMENTATION_JOBS
from simulacra_services.core import db
from simulacra_services.core.config import Settings
from simulacra_services.core.jobs import JobRunner, JobStore
from simulacra_services.core.server import CloseHook, ServiceDefinition
from simulacra_services.core.storage import open_object_store


async def register(
    server: grpc.aio.Server, settings: Settings, *, workers: int | None = None, max_running_jobs: int = 1, engine_processes: int | None = None
) -> CloseHook:
    """``workers``: threads that augment items (default: the CPU count, at most 8). ``engine_processes``:
    child processes that run AugmentStream's engine (default: ``settings.augmentation_engine_processes``; 0: none)."""
    objects = await asyncio.to_thread(open_object_store, settings)
    engine = db.create_engine(settings.resolved_database_url)
    runner = BatchRunner(workers)
    jobs: JobRunner | None = None
    processes: EngineProcesses | None = None
    count = settings.augmentation_engine_processes if engine_processes is None else engine_processes
    try:
        if count:
            processes = await asyncio.to_thread(EngineProcesses, count, settings.max_image_pixels, settings.max_message_bytes)
        await asyncio.to_thread(db.migrate, engine)
        store = JobStore(engine, AUGMENTATION_JOBS, job_name=lambda kind, parent, job_id: job_name(job_id))
        annotation_address = settings.address("annotation")
        handler = AugmentDatasetHandler(lambda: AnnotationStoreGateway(annotation_address, max_pixels=settings.max_image_pixels))
        jobs = JobRunner(store, {KIND: handler}, max_running=max_running_jobs, lease_seconds=settings.job_lease_seconds)
        await jobs.start()
    except BaseException:
        runner.close()
        if processes is not None:
            await asyncio.to_thread(processes.close)
        engine.dispose()
        objects.close()
        raise
    servicer = AugmentationServicer(PipelineRepository(objects), runner, jobs, max_image_pixels=settings.max_image_pixels, processes=processes)
    if processes is None:
        api_grpc.add_AugmentationServiceServicer_to_server(servicer, server)
    else:
        _add_with_raw_stream_requests(servicer, server)
    started = jobs

    async def close() -> None:
        try:
            await started.close()
        finally:
            runner.close()
            if processes is not None:
                await asyncio.to_thread(processes.close)
            await asyncio.to_thread(engine.dispose)
            await asyncio.to_thread(objects.close)

    return close


class _Handlers:
    """Stands in for the server while the generated code registers the servicer: keeps its handlers."""

    def __init__(self) -> None:
        self.service = ""
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.service, self.handlers = service, dict(handlers)


def _add_with_raw_stream_requests(servicer: AugmentationServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that AugmentStream's requests arrive unparsed (no deserializer:
    grpc hands over the message's bytes as received)."""
    found = _Handlers()
    api_grpc.add_AugmentationServiceServicer_to_server(servicer, found)
    stream = found.handlers["AugmentStream"]
    found.handlers["AugmentStream"] = grpc.stream_stream_rpc_method_handler(
        stream.stream_stream, request_deserializer=None, response_serializer=stream.response_serializer
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(found.service, found.handlers),))
    server.add_registered_method_handlers(found.service, found.handlers)


DEFINITION = ServiceDefinition(
    name="augmentation",
    title="augmentation",
    error_domain="augmentation.simulacra.dev",
    service_names=("simulacra.augmentation.v1.AugmentationService",),
    register=register,
)
