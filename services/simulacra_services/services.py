"""The registry of the suite's services: name -> ServiceDefinition, imported lazily.

Lazy imports keep each process light: `simulacra serve sampling` never imports
the training code (and so never torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from simulacra_services.core.config import SERVICES

if TYPE_CHECKING:
    from simulacra_services.core.server import ServiceDefinition


def definition(name: str) -> ServiceDefinition:
    """The definition of service ``name`` (one of ``core.config.SERVICES``)."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; choose one of: {', '.join(SERVICES)}")
    return importlib.import_module(f"simulacra_services.{name}.service").DEFINITION
