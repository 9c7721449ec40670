"""The model registry: generators as named models with immutable numbered versions and aliases.

Plain records over the shared object storage (no database, no protobuf, no
torch): training writes it, sampling reads it. Layout: ``layout.py``; the
fixed ONNX signature: ``GeneratorSignature``; docs/contracts.md describes both.
"""

from simulacra_services.core.registry.names import (
    LATEST,
    check_alias,
    check_model_id,
    parse_model_name,
    parse_model_version_name,
)
from simulacra_services.core.registry.records import (
    MODEL_KINDS,
    AttributeSpec,
    GeneratorSignature,
    ModelRecord,
    ModelVersionRecord,
)
from simulacra_services.core.registry.store import ModelRegistry

__all__ = [
    "LATEST",
    "MODEL_KINDS",
    "AttributeSpec",
    "GeneratorSignature",
    "ModelRecord",
    "ModelRegistry",
    "ModelVersionRecord",
    "check_alias",
    "check_model_id",
    "parse_model_name",
    "parse_model_version_name",
]
