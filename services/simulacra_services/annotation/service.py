"""The annotation-store service, as the server bootstrap runs it.

``register`` opens the object store and the metadata database named by the
settings, migrates the database, and adds the servicer (with the import and
export job runner of ``annotation/jobs.py`` when that module is present).
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from typing import Any

import grpc

from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_services.annotation.servicer import AnnotationServicer
from simulacra_services.annotation.store import AnnotationStore
from simulacra_services.core import db
from simulacra_services.core.config import Settings
from simulacra_services.core.server import CloseHook, ServiceDefinition
from simulacra_services.core.storage import open_object_store

_JOBS_MODULE = "simulacra_services.annotation.jobs"


def _job_service(store: AnnotationStore) -> Any | None:
    """The JobService of annotation/jobs.py, or None while that module does not exist."""
    if importlib.util.find_spec(_JOBS_MODULE) is None:
        return None
    module = importlib.import_module(_JOBS_MODULE)
    return module.JobService(store)


async def register(server: grpc.aio.Server, settings: Settings) -> CloseHook:
    objects = await asyncio.to_thread(open_object_store, settings)
    engine = db.create_engine(settings.resolved_database_url)
    store: AnnotationStore | None = None
    try:
        await asyncio.to_thread(db.migrate, engine)
        store = AnnotationStore(engine, objects, max_image_pixels=settings.max_image_pixels)
        jobs = _job_service(store)
        if jobs is not None and hasattr(jobs, "start"):
            await jobs.start()
    except BaseException:
        if store is not None:
            store.close()
        engine.dispose()
        objects.close()
        raise
    api_grpc.add_AnnotationServiceServicer_to_server(AnnotationServicer(store, jobs), server)
    opened = store

    async def close() -> None:
        try:
            if jobs is not None and hasattr(jobs, "close"):
                await jobs.close()
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
