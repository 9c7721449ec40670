"""Choose the object store that the settings name."""

from __future__ import annotations

from simulacra_services.core.config import Settings
from simulacra_services.core.storage.base import ObjectStore
from simulacra_services.core.storage.local import LocalObjectStore
from simulacra_services.core.storage.s3 import S3ObjectStore


def open_object_store(settings: Settings) -> ObjectStore:
    """The store of ``settings.storage_backend``: 'local' (files) or 's3'.

    An S3 store connects at once (and creates its bucket when missing), so a
    wrong endpoint or key fails here, at start-up, with ``Unavailable``.
    """
    if settings.storage_backend == "local":
        return LocalObjectStore(settings.resolved_storage_dir)
    if settings.storage_backend == "s3":
        return S3ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region or None,
        )
    raise ValueError(f"unknown storage backend {settings.storage_backend!r}; expected 'local' or 's3'")
