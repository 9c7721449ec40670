"""How the server's interceptor turns request bytes into messages and responses into bytes.

grpc.aio calls a method's deserializer on the event loop. ``tolerant`` wraps it so that bad bytes
become an ``Undecodable`` (the RPC then fails with INVALID_ARGUMENT ``UNDECODABLE_REQUEST`` rather
than grpc's UNKNOWN) and a message over ``LARGE_REQUEST_BYTES`` stays unparsed (``Deferred``) until
``parsed`` parses it in a worker thread. ``passing_bytes`` lets a handler answer with bytes it
serialized itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from simulacra_services.core.errors import InvalidArgument, SimulacraError

__all__ = ["LARGE_REQUEST_BYTES", "Deferred", "Undecodable", "decoded", "decoded_stream", "parsed", "passing_bytes", "tolerant"]

LARGE_REQUEST_BYTES = 1024 * 1024
"""Request messages above this size are parsed in a worker thread, not on the event loop."""


class Undecodable:
    """Stands in for a request message whose bytes did not parse, so that the
    RPC can fail with a domain error (grpc itself would answer UNKNOWN with
    the parser's own text)."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error

    def refusal(self) -> SimulacraError:
        return InvalidArgument(
            "UNDECODABLE_REQUEST",
            "the request message could not be parsed as the method's request type "
            "(a client built from another contract, or corrupted bytes)",
            {"problem": type(self.error).__name__},
        )


class Deferred:
    """The bytes of a large request message, to be parsed in a worker thread (``parsed``)."""

    __slots__ = ("data", "parse")

    def __init__(self, data: bytes, parse: Callable[[bytes], Any]) -> None:
        self.data: bytes | None = data
        self.parse = parse

    def parsed(self) -> Any:
        data, self.data = self.data, None  # the raw bytes are freed in the thread, not on the loop
        assert data is not None
        return self.parse(data)


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """The handler's deserializer, made to return ``Undecodable`` rather than raise, and to leave
    messages above ``LARGE_REQUEST_BYTES`` unparsed (``Deferred``): grpc calls it on the event loop."""
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as error:  # noqa: BLE001 - any parser failure is the client's bad bytes
            return Undecodable(error)

    def parse_small(data: bytes) -> Any:
        return Deferred(data, parse) if len(data) > LARGE_REQUEST_BYTES else parse(data)

    return parse_small


def passing_bytes(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The handler's serializer, except that a response already serialized (``bytes``) goes out as it is.

    A handler that sends stored encodings (the annotation-store's StreamItems) joins the
    response's wire bytes itself rather than building a message only to serialize it again.
    """
    if serialize is None:
        return None

    def encode(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return encode


async def decoded(request: Any, kind: str) -> Any:
    """The request, or for client streams an iterator over them, refusing undecodable messages."""
    if kind in ("client_stream", "bidi_stream"):
        return decoded_stream(request)
    return await parsed(request)


async def decoded_stream(requests: Any) -> AsyncIterator[Any]:
    async for request in requests:
        yield await parsed(request)


async def parsed(request: Any) -> Any:
    if isinstance(request, Deferred):
        request = await asyncio.to_thread(request.parsed)
    if isinstance(request, Undecodable):
        raise request.refusal()
    return request
