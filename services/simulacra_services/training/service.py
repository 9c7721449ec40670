"""The generator-training service, as the server bootstrap runs it.

``register`` opens the object store and the database, migrates, starts the job runner (one worker
process per running job) and adds TrainingService and ModelRegistryService.
"""

from __future__ import annotations

import asyncio
import os

import grpc

from simulacra_client.annotation import AnnotationClient
from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as registry_grpc
from simulacra_client.api.training.v1 import training_service_pb2_grpc as training_grpc
from simulacra_services.core import db
from simulacra_services.core.config import Settings
from simulacra_services.core.jobs.runner import JobRunner
from simulacra_services.core.jobs.store import JobStore
from simulacra_services.core.registry import ModelRegistry
from simulacra_services.core.server import CloseHook, ServiceDefinition
from simulacra_services.core.storage import open_object_store
from simulacra_services.training.api.registry_servicer import ModelRegistryServicer
from simulacra_services.training.api.training_servicer import TrainingServicer
from simulacra_services.training.jobs.handler import TrainingJobHandler
from simulacra_services.training.jobs.spec import KIND
from simulacra_services.training.tables import TRAINING_JOBS


async def register(
    server: grpc.aio.Server,
    settings: Settings,
    *,
    max_running: int | None = None,
    lease_seconds: float | None = None,
    worker_threads: int = 0,
) -> CloseHook:
    """``max_running`` jobs train at once (each in its own process; env SIMULACRA_TRAINING_MAX_RUNNING,
    default 1); ``lease_seconds`` bounds how long the job of a dead server waits before another server
    takes it over (SIMULACRA_TRAINING_LEASE_SECONDS, default 30); ``worker_threads`` caps torch's
    threads in the worker (SIMULACRA_TRAINING_THREADS, default 2)."""
    max_running = max_running or int(os.environ.get("SIMULACRA_TRAINING_MAX_RUNNING", "1"))
    lease_seconds = lease_seconds or float(os.environ.get("SIMULACRA_TRAINING_LEASE_SECONDS", "30"))
    objects = await asyncio.to_thread(open_object_store, settings)
    engine = db.create_engine(settings.resolved_database_url)
    annotation = AnnotationClient(settings.address("annotation"), token=settings.auth_token or None,
                                  tls_ca=settings.tls_ca or None, max_message_bytes=settings.max_message_bytes, timeout=30.0)
    try:
        await asyncio.to_thread(db.migrate, engine)
        store = JobStore(engine, TRAINING_JOBS, job_name=lambda kind, parent, job_id: f"trainingJobs/{job_id}")
        registry = ModelRegistry(objects)
        handler = TrainingJobHandler(objects, registry, settings, threads=worker_threads)
        runner = JobRunner(store, {KIND: handler}, max_running=max_running, lease_seconds=lease_seconds)
        await runner.start()
    except BaseException:
        annotation.close()
        engine.dispose()
        objects.close()
        raise
    training_grpc.add_TrainingServiceServicer_to_server(TrainingServicer(runner, store, objects, annotation), server)
    registry_grpc.add_ModelRegistryServiceServicer_to_server(ModelRegistryServicer(registry, objects), server)

    async def close() -> None:
        try:
            await runner.close()
        finally:
            annotation.close()
            await asyncio.to_thread(engine.dispose)
            await asyncio.to_thread(objects.close)

    return close


DEFINITION = ServiceDefinition(
    name="training",
    title="generator-training",
    error_domain="training.simulacra.dev",
    service_names=("simulacra.training.v1.ModelRegistryService", "simulacra.training.v1.TrainingService"),
    register=register,
)
