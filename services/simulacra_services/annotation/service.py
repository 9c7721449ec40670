"""The annotation-store service, as the server bootstrap runs it.

``register`` opens the object store and the metadata database named by the
settings, migrates the database, starts the import/export job runner and adds
the servicer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc

from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_services.annotation.api import convert
from simulacra_services.annotation.api.jobs import JobService
from simulacra_services.annotation.api.servicer import AnnotationServicer
from simulacra_services.annotation.persistence.packs import SEGMENT_BYTES
from simulacra_services.annotation.persistence.store import AnnotationStore
from simulacra_services.core import db
from simulacra_services.core.budget import PixelBudget
from simulacra_services.core.config import Settings
from simulacra_services.core.server import CloseHook, ServiceDefinition
from simulacra_services.core.storage import open_object_store


JobServiceFactory = Callable[..., JobService]


async def register(
    server: grpc.aio.Server, settings: Settings, *, job_service: JobServiceFactory = JobService, pack_segment_bytes: int = SEGMENT_BYTES,
) -> CloseHook:
    """Open storage and database, migrate, start the job runner, add the servicer.

    ``job_service``: builds the ``JobService`` from the store and the runner's
    settings (tests pass one that keeps a reference, or sets small chunks).
    ``pack_segment_bytes``: the size of stream pack segments (tests make packs of several).
    """
    objects = await asyncio.to_thread(open_object_store, settings)
    engine = db.create_engine(settings.resolved_database_url)
    store: AnnotationStore | None = None
    try:
        await asyncio.to_thread(db.migrate, engine)
        store = AnnotationStore(
            engine, objects, max_image_pixels=settings.max_image_pixels, decode_budget=PixelBudget(settings.decode_budget_pixels),
            item_encoding=convert.ITEM_ENCODING, stream_packs=settings.stream_packs,
            stream_pack_max_bytes=settings.stream_pack_max_bytes, pack_segment_bytes=pack_segment_bytes,
        )
        jobs = job_service(store, lease_seconds=settings.job_lease_seconds, owner=settings.job_runner_id)
        await jobs.start()
    except BaseException:
        if store is not None:
            store.close()
        engine.dispose()
        objects.close()
        raise
    servicer = AnnotationServicer(store, jobs)
    api_grpc.add_AnnotationServiceServicer_to_server(servicer, server)
    opened = store

    async def close() -> None:
        try:
            await jobs.close()
            await servicer.close()
        finally:
            await asyncio.to_thread(opened.close)
            await asyncio.to_thread(engine.dispose)
            await asyncio.to_thread(objects.close)

    return close


DEFINITION = ServiceDefinition(
    name="annotation",
    title="annotation-store",
    error_domain="annotation.simulacra.dev",
    service_names=("simulacra.annotation.v1.AnnotationService",),
    register=register,
)
