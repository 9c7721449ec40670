"""Domain errors: what went wrong, in words a person can act on.

Domain code raises these and knows nothing of gRPC; the server's error
interceptor (core/server.py) turns each into a ``google.rpc.Status`` with one
``ErrorInfo`` (stable reason, the service's domain, every dynamic value in
metadata). Any other exception becomes INTERNAL with a generic message: the
stack trace goes to the log, never to the client.

Everything an error repeats from a client is bounded: gRPC carries the
message and the ErrorInfo in response metadata, whose limit (16 KiB by
default) one 5 kB value echoed twice would overflow, and the client would
get RESOURCE_EXHAUSTED instead of the reason. ``shown`` is the one helper
that shortens an echoed value; ``SimulacraError`` applies the same bounds to
its message and metadata whatever the raiser did.
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


MAX_SHOWN_CHARS = 200
"""How much of a client's value a message or metadata entry repeats."""
MAX_MESSAGE_BYTES = 1024
MAX_METADATA_VALUE_BYTES = 256
MAX_METADATA_KEY_BYTES = 64
MAX_METADATA_ENTRIES = 16
_ELLIPSIS = "..."


def shown(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    """``value`` as text, cut to ``limit`` characters (ending in "...") when longer.

    Use it for every client value an error message or its metadata repeats:
    ``f"{shown(item_id)!r} is not an item id"``.
    """
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + _ELLIPSIS


def _bounded(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` UTF-8 bytes (ellipsis included), on a character boundary."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    return encoded[: max_bytes - len(_ELLIPSIS)].decode("utf-8", "ignore") + _ELLIPSIS


def bounded_message(message: str) -> str:
    """An error message cut to MAX_MESSAGE_BYTES."""
    return _bounded(message, MAX_MESSAGE_BYTES)


def bounded_metadata(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """Error metadata as strings, cut to the bounds in the module doc."""
    entries = list((metadata or {}).items())[:MAX_METADATA_ENTRIES]
    return {_bounded(str(k), MAX_METADATA_KEY_BYTES): _bounded(str(v), MAX_METADATA_VALUE_BYTES) for k, v in entries}


class SimulacraError(Exception):
    """Base of every domain error.

    ``reason`` is stable UPPER_SNAKE_CASE (clients may switch on it);
    ``message`` is for a person; ``metadata`` carries every dynamic value
    (names, ids, limits) so that clients never parse the message. Message
    and metadata are cut to fixed bounds (module doc), so that no error can
    outgrow gRPC's metadata limit.
    """

    code: Code = Code.INTERNAL

    def __init__(self, reason: str, message: str, metadata: Mapping[str, object] | None = None) -> None:
        if not reason or not reason.replace("_", "").isalnum() or reason.upper() != reason:
            raise ValueError(f"error reason must be UPPER_SNAKE_CASE, got {reason!r}")
        message = bounded_message(message)
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = bounded_metadata(metadata)

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
