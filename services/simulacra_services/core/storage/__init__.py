"""Shared object storage: one interface (``ObjectStore``), a local and an S3 backend.

Use ``open_object_store(settings)``; the backends' layouts are described in
``local.py`` and ``s3.py``.
"""

from simulacra_services.core.storage.base import DEFAULT_CONTENT_TYPE, ObjectInfo, ObjectStore
from simulacra_services.core.storage.factory import open_object_store
from simulacra_services.core.storage.keys import validate_key, validate_prefix
from simulacra_services.core.storage.local import LocalObjectStore
from simulacra_services.core.storage.s3 import S3ObjectStore

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectStore",
    "S3ObjectStore",
    "open_object_store",
    "validate_key",
    "validate_prefix",
]
