"""The raw layer under every friendly client: one typed stub per service, and the plumbing.

A friendly client (``AnnotationClient``, and the sampling, augmentation and
training clients beside it) builds on this module and adds only what speaks
its service's language. What a ``RawClient`` / ``AsyncRawClient`` does for
every call, so that no friendly client does it again:

- the channel: ``open_channel`` / ``open_aio_channel`` (TLS, bearer token,
  message limits) plus a gRPC service config that retries UNAVAILABLE on the
  service's idempotent methods (``simulacra_client.retry``);
- a deadline per call: ``timeout=`` on the call, else the client's default;
  ``timeout=None`` for calls meant to last (streams, watches);
- request ids: ``call`` fills an empty ``request_id`` of the request once, before
  the first attempt, so gRPC's retries and the caller's own retries of the
  same request object carry the same id and the server runs it once;
- errors: a failed call raises the typed ``SimulacraRpcError`` of
  ``simulacra_client.errors`` (code, reason, domain, metadata).

``stub`` is the generated stub, typed, for anything the helpers do not cover.

Building a friendly client for another service::

    from simulacra_client.api.sampling.v1 import sampling_service_pb2 as rpc
    from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as rpc_grpc
    from simulacra_client.raw import RawClient

    class SamplingClient:
        def __init__(self, address: str, **options) -> None:
            self._raw = RawClient.connect(address, rpc_grpc.SamplingServiceStub, rpc, **options)

        def sample(self, request: rpc.SampleRequest) -> rpc.SampleResponse:
            return self._raw.call("Sample", request)

``services`` (the module, or descriptors, of the service's contract) names
the services whose idempotent methods the channel retries.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from types import ModuleType
from typing import Any, Generic, TypeVar, Union

import grpc
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from simulacra_client.channel import DEFAULT_MAX_MESSAGE_BYTES, ChannelOptions, open_aio_channel, open_channel
from simulacra_client.errors import from_rpc_error
from simulacra_client.retry import DEFAULT_RETRY, RetryPolicy, idempotent_methods

StubT = TypeVar("StubT")
DEFAULT_TIMEOUT = 60.0
"""Seconds a unary call may take unless the call or the client says otherwise."""

Services = Union[ModuleType, FileDescriptor, ServiceDescriptor, Sequence[Union[ModuleType, FileDescriptor, ServiceDescriptor]]]
_UNSET: Any = object()


def service_descriptors(services: Services) -> list[ServiceDescriptor]:
    """The service descriptors of generated ``*_pb2`` modules, file descriptors or service descriptors."""
    items = services if isinstance(services, (list, tuple)) else [services]
    found: list[ServiceDescriptor] = []
    for item in items:
        if isinstance(item, ServiceDescriptor):
            found.append(item)
        else:
            file = item if isinstance(item, FileDescriptor) else item.DESCRIPTOR
            found.extend(file.services_by_name.values())
    return found


def retry_options(services: Services, retry: RetryPolicy | None) -> list[tuple[str, Any]]:
    """Channel options that make gRPC retry ``services``' idempotent methods under ``retry`` (None: never)."""
    if retry is None or retry.max_attempts == 1:
        return [("grpc.enable_retries", 0)]
    config = retry.service_config(idempotent_methods(service_descriptors(services)))
    return [("grpc.enable_retries", 1), ("grpc.service_config", config)]


def with_request_id(request: Message) -> Message:
    """``request`` with its ``request_id`` set to a fresh UUID when it has such a field and it is empty.

    Called once per logical call: reuse the returned request for every retry."""
    if "request_id" in request.DESCRIPTOR.fields_by_name and not getattr(request, "request_id"):
        setattr(request, "request_id", str(uuid.uuid4()))
    return request


class _RawBase(Generic[StubT]):
    def __init__(self, channel: Any, stub_class: type[StubT], *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
        self.channel = channel
        self.stub: StubT = stub_class(channel)
        self.timeout = timeout

    _open: Any = staticmethod(open_channel)  # the subclass's channel opener

    @classmethod
    def connect(
        cls,
        address: str,
        stub_class: type[StubT],
        services: Services,
        *,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        options: ChannelOptions = (),
    ) -> Any:
        """A client on a channel of its own (closed by ``close``) that retries ``services``' idempotent methods."""
        channel = cls._open(
            address, token=token, tls_ca=tls_ca, max_message_bytes=max_message_bytes,
            options=[*retry_options(services, retry), *options],
        )
        return cls(channel, stub_class, timeout=timeout)

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is _UNSET else timeout

    def _method(self, name: str) -> Any:
        try:
            return getattr(self.stub, name)
        except AttributeError:
            raise AttributeError(f"{type(self.stub).__name__} has no method {name!r}") from None


class RawClient(_RawBase[StubT]):
    """A service's typed stub on a blocking channel, with deadlines, request ids and typed errors."""

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RawClient[StubT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, method: str, request: Message, *, timeout: float | None = _UNSET, metadata: Sequence[tuple[str, str]] = ()) -> Any:
        """One unary call: the response, or the typed error."""
        try:
            return self._method(method)(with_request_id(request), timeout=self._deadline(timeout), metadata=metadata or None)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def call_serialized(self, path: str, data: bytes, response_type: type[Message], *, timeout: float | None = _UNSET) -> Any:
        """``call`` for a request already serialized (``data``, e.g. joined by ``augmentation_wire``):
        ``path`` is the method's full path, "/package.Service/Method"."""
        call = self.channel.unary_unary(path, request_serializer=None, response_deserializer=response_type.FromString)
        try:
            return call(data, timeout=self._deadline(timeout))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def stream(self, method: str, request: Message, *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> Iterator[Any]:
        """A server stream's responses; no deadline unless given. Stopping early cancels the call."""
        return _responses(self._method(method)(with_request_id(request), timeout=timeout, metadata=metadata or None))

    def send(self, method: str, requests: Iterable[Message], *, timeout: float | None = _UNSET, metadata: Sequence[tuple[str, str]] = ()) -> Any:
        """A client stream: the one response, or the typed error."""
        try:
            return self._method(method)(iter(requests), timeout=self._deadline(timeout), metadata=metadata or None)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def exchange(self, method: str, requests: Iterable[Message], *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> Iterator[Any]:
        """A bidirectional stream's responses (and the client-stream-to-stream RPCs such as UploadItems)."""
        return _responses(self._method(method)(iter(requests), timeout=timeout, metadata=metadata or None))


class AsyncRawClient(_RawBase[StubT]):
    """The asyncio twin of ``RawClient`` (``grpc.aio``), for use inside an event loop."""

    _open = staticmethod(open_aio_channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncRawClient[StubT]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def call(self, method: str, request: Message, *, timeout: float | None = _UNSET, metadata: Sequence[tuple[str, str]] = ()) -> Any:
        try:
            return await self._method(method)(with_request_id(request), timeout=self._deadline(timeout), metadata=metadata or None)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def stream(self, method: str, request: Message, *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> AsyncIterator[Any]:
        return _async_responses(self._method(method)(with_request_id(request), timeout=timeout, metadata=metadata or None))

    def exchange(self, method: str, requests: Iterable[Message], *, timeout: float | None = None, metadata: Sequence[tuple[str, str]] = ()) -> AsyncIterator[Any]:
        """``requests`` may also be an async iterator."""
        source = requests if hasattr(requests, "__aiter__") else iter(requests)
        return _async_responses(self._method(method)(source, timeout=timeout, metadata=metadata or None))


def _responses(call: Any) -> Iterator[Any]:
    try:
        yield from call
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
    finally:
        call.cancel()  # a no-op once the stream ended; frees the server when the caller stops early


async def _async_responses(call: Any) -> AsyncIterator[Any]:
    try:
        async for response in call:
            yield response
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None
    finally:
        call.cancel()


class ServiceClient:
    """The base of a friendly client: one service, a raw client under it, the connection arguments.

    A subclass names ``RAW`` (``RawClient``, or ``AsyncRawClient`` for an
    asyncio client), ``STUB`` (the generated stub class) and ``SERVICES`` (the
    generated ``*_pb2`` module of its contract), then speaks through
    ``self._raw`` (``call``, ``stream``, ``send``, ``exchange``) or ``self.stub``.
    """

    RAW: Any = RawClient
    STUB: Any = None
    SERVICES: Any = None

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = DEFAULT_RETRY,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self.retry = retry
        self._max_message_bytes = max_message_bytes
        self._raw = self.RAW.connect(
            address, self.STUB, self.SERVICES, token=token, tls_ca=tls_ca,
            max_message_bytes=max_message_bytes, timeout=timeout, retry=retry,
        )
        self.stub = self._raw.stub

    def resume_policy(self, attempts: int) -> RetryPolicy:
        """The client's retry policy with ``attempts`` reopenings in a row (of a broken stream, a watch)."""
        return dataclasses.replace(self.retry or DEFAULT_RETRY, max_attempts=1 + max(0, attempts))
