"""Errors of Simulacra RPCs, as exceptions a caller can switch on.

Every error a Simulacra server sends carries a ``google.rpc.Status`` with one
``google.rpc.ErrorInfo`` in the ``grpc-status-details-bin`` trailer:
a stable UPPER_SNAKE ``reason``, the service's ``domain`` and ``metadata``
holding every dynamic value. ``from_rpc_error`` turns a ``grpc.RpcError``
(from a sync or an asyncio channel) into the typed exception of its code::

    try:
        stub.GetDataset(request)
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error

or, shorter, ``with translate_errors(): stub.GetDataset(request)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


class SimulacraRpcError(Exception):
    """A failed RPC: status ``code``, ``message``, and the ErrorInfo ``reason``/``domain``/``metadata``.

    ``reason`` and ``domain`` are empty when the server sent no ErrorInfo
    (a proxy, an unreachable server, a deadline that passed on the client).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})

    def __str__(self) -> str:
        where = f" [{self.reason} @ {self.domain}]" if self.reason else ""
        return f"{self.code.name}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, message={self.message!r}, metadata={self.metadata!r})"


class CancelledRpcError(SimulacraRpcError):
    """CANCELLED (named so as not to shadow ``asyncio.CancelledError``)."""


class UnknownError(SimulacraRpcError):
    """UNKNOWN."""


class InvalidArgumentError(SimulacraRpcError):
    """INVALID_ARGUMENT: the request is wrong; ``metadata`` names the field."""


class DeadlineExceededError(SimulacraRpcError):
    """DEADLINE_EXCEEDED."""


class NotFoundError(SimulacraRpcError):
    """NOT_FOUND."""


class AlreadyExistsError(SimulacraRpcError):
    """ALREADY_EXISTS."""


class PermissionDeniedError(SimulacraRpcError):
    """PERMISSION_DENIED."""


class ResourceExhaustedError(SimulacraRpcError):
    """RESOURCE_EXHAUSTED (also: a message over the size limit)."""


class FailedPreconditionError(SimulacraRpcError):
    """FAILED_PRECONDITION."""


class AbortedError(SimulacraRpcError):
    """ABORTED."""


class OutOfRangeError(SimulacraRpcError):
    """OUT_OF_RANGE."""


class UnimplementedError(SimulacraRpcError):
    """UNIMPLEMENTED."""


class InternalError(SimulacraRpcError):
    """INTERNAL: a server fault; ``metadata['error_id']`` finds it in the server log."""


class UnavailableError(SimulacraRpcError):
    """UNAVAILABLE: the server is down or unreachable; retrying may help."""


class DataLossError(SimulacraRpcError):
    """DATA_LOSS."""


class UnauthenticatedError(SimulacraRpcError):
    """UNAUTHENTICATED: reason MISSING_TOKEN or INVALID_TOKEN."""


_BY_CODE: dict[grpc.StatusCode, type[SimulacraRpcError]] = {
    grpc.StatusCode.CANCELLED: CancelledRpcError,
    grpc.StatusCode.UNKNOWN: UnknownError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def error_class(code: grpc.StatusCode) -> type[SimulacraRpcError]:
    """The exception class of a status code."""
    return _BY_CODE.get(code, SimulacraRpcError)


def from_rpc_error(error: grpc.RpcError) -> SimulacraRpcError:
    """The typed exception of a failed RPC, from a sync or an asyncio (``grpc.aio.AioRpcError``) call.

    A malformed status-details trailer is ignored rather than raised: the code
    and message still describe the failure.
    """
    code = _call_value(error, "code") or grpc.StatusCode.UNKNOWN
    message = _call_value(error, "details") or ""
    reason, domain, metadata = "", "", {}
    info = _error_info(_call_value(error, "trailing_metadata"))
    if info is not None:
        reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
    return error_class(code)(code, message, reason, domain, metadata)


@contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise any ``grpc.RpcError`` in the block as its ``SimulacraRpcError``."""
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error


def _call_value(error: grpc.RpcError, name: str) -> Any:
    # Both grpc.Call errors (sync) and AioRpcError offer code(), details() and
    # trailing_metadata() as plain methods; a bare RpcError offers none.
    getter = getattr(error, name, None)
    return getter() if callable(getter) else None


def _error_info(trailing_metadata: Any) -> error_details_pb2.ErrorInfo | None:
    for key, value in trailing_metadata or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
        except DecodeError:  # a garbled trailer from a proxy: keep code and message
            return None
    return None
