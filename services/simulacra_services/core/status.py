"""Rich gRPC error statuses: a ``google.rpc.Status`` carrying exactly one ``ErrorInfo``.

Every error a Simulacra server sends has this shape, so a client reads the
stable ``reason``, the service's ``domain`` and the dynamic values in
``metadata`` instead of parsing the human message.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from simulacra_services.core.errors import Code, SimulacraError, bounded_message, bounded_metadata


def grpc_code(code: Code) -> grpc.StatusCode:
    """The gRPC status code of a domain error class (they share names)."""
    return grpc.StatusCode[code.value]


def error_status(
    code: grpc.StatusCode,
    reason: str,
    message: str,
    domain: str,
    metadata: Mapping[str, str] | None = None,
) -> grpc.Status:
    """A ``grpc.Status`` for ``context.abort_with_status``: code, message and one ErrorInfo."""
    if code is grpc.StatusCode.OK:
        raise ValueError("an error status cannot have code OK")
    info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=dict(metadata or {}))
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(status)


def domain_error_status(error: SimulacraError, domain: str) -> grpc.Status:
    """The status a domain error becomes on the wire (bounded again: handlers may add metadata after raising)."""
    return error_status(grpc_code(error.code), error.reason, bounded_message(error.message), domain, bounded_metadata(error.metadata))
