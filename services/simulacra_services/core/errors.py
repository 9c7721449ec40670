"""Domain errors: what went wrong, in words a person can act on.

Domain code raises these and knows nothing of gRPC; the server's error
interceptor (core/server.py) turns each into a ``google.rpc.Status`` with one
``ErrorInfo`` (stable reason, the service's domain, every dynamic value in
metadata). Any other exception becomes INTERNAL with a generic message: the
stack trace goes to the log, never to the client.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Code(enum.Enum):
    """Error classes, mapped one-to-one onto gRPC status codes by name."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    ABORTED = "ABORTED"
    OUT_OF_RANGE = "OUT_OF_RANGE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNAVAILABLE = "UNAVAILABLE"
    DATA_LOSS = "DATA_LOSS"
    CANCELLED = "CANCELLED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


class SimulacraError(Exception):
    """Base of every domain error.

    ``reason`` is stable UPPER_SNAKE_CASE (clients may switch on it);
    ``message`` is for a person; ``metadata`` carries every dynamic value
    (names, ids, limits) so that clients never parse the message.
    """

    code: Code = Code.INTERNAL

    def __init__(self, reason: str, message: str, metadata: Mapping[str, object] | None = None) -> None:
        if not reason or not reason.replace("_", "").isalnum() or reason.upper() != reason:
            raise ValueError(f"error reason must be UPPER_SNAKE_CASE, got {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r}, {self.metadata!r})"


def _error(name: str, code: Code) -> type[SimulacraError]:
    return type(name, (SimulacraError,), {"code": code, "__doc__": f"Maps to gRPC {code.value}."})


InvalidArgument = _error("InvalidArgument", Code.INVALID_ARGUMENT)
NotFound = _error("NotFound", Code.NOT_FOUND)
AlreadyExists = _error("AlreadyExists", Code.ALREADY_EXISTS)
FailedPrecondition = _error("FailedPrecondition", Code.FAILED_PRECONDITION)
ResourceExhausted = _error("ResourceExhausted", Code.RESOURCE_EXHAUSTED)
PermissionDenied = _error("PermissionDenied", Code.PERMISSION_DENIED)
Unauthenticated = _error("Unauthenticated", Code.UNAUTHENTICATED)
Aborted = _error("Aborted", Code.ABORTED)
OutOfRange = _error("OutOfRange", Code.OUT_OF_RANGE)
Unimplemented = _error("Unimplemented", Code.UNIMPLEMENTED)
Unavailable = _error("Unavailable", Code.UNAVAILABLE)
DataLoss = _error("DataLoss", Code.DATA_LOSS)
Cancelled = _error("Cancelled", Code.CANCELLED)
