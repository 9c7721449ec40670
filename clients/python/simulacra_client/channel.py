"""Channels to Simulacra services: TLS, bearer token, message limits, health.

``open_channel`` (sync) and ``open_aio_channel`` (asyncio) take the same
arguments and set the same options, so that client and server agree on the
message size limit (``SIMULACRA_MAX_MESSAGE_BYTES``, 64 MiB by default).

The bearer token travels as ``authorization: Bearer <token>`` metadata added
by a client interceptor rather than as gRPC call credentials: grpc refuses
call credentials on plaintext channels, and the embedded suite runs plaintext
on loopback. Give a token over plaintext only on loopback or inside a private
network: anyone on the path can read it.

Health checks speak ``grpc.health.v1`` through message classes built here
from a descriptor, so the SDK needs no grpcio-health-checking.
"""

from __future__ import annotations

import asyncio
import enum
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
AUTHORIZATION = "authorization"
HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"

ChannelOptions = Sequence[tuple[str, Any]]


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, options: ChannelOptions = ()) -> list[tuple[str, Any]]:
    """The options of every SDK channel; entries of ``options`` replace defaults of the same name."""
    if max_message_bytes < 1:
        raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
    merged: dict[str, Any] = {
        "grpc.max_receive_message_length": max_message_bytes,
        "grpc.max_send_message_length": max_message_bytes,
        # Ping each 30 s during calls (long sample streams) to notice a dead
        # server; the Simulacra server accepts pings down to each 10 s.
        "grpc.keepalive_time_ms": 30_000,
        "grpc.keepalive_timeout_ms": 10_000,
        "grpc.http2.max_pings_without_data": 0,
        # Reconnect within seconds after a service restarts, not minutes.
        "grpc.initial_reconnect_backoff_ms": 250,
        "grpc.max_reconnect_backoff_ms": 5_000,
    }
    merged.update(dict(options))
    return list(merged.items())


def open_channel(
    address: str,
    *,
    token: str | None = None,
    tls_ca: str | os.PathLike[str] | bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """A channel to ``address`` (``host:port``).

    ``tls_ca``: the root certificate to trust, as a file path or PEM bytes;
    given, the channel speaks TLS, else plaintext. ``token``: sent as
    ``authorization: Bearer <token>`` on every call.
    """
    opts = channel_options(max_message_bytes, options)
    credentials = _channel_credentials(tls_ca)
    channel = grpc.secure_channel(address, credentials, opts) if credentials else grpc.insecure_channel(address, opts)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(_checked_token(token)))
    return channel


def open_aio_channel(
    address: str,
    *,
    token: str | None = None,
    tls_ca: str | os.PathLike[str] | bytes | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    options: ChannelOptions = (),
) -> grpc.aio.Channel:
    """The asyncio twin of ``open_channel`` (same arguments, same behaviour)."""
    opts = channel_options(max_message_bytes, options)
    credentials = _channel_credentials(tls_ca)
    interceptors = _aio_token_interceptors(_checked_token(token)) if token else None
    if credentials:
        return grpc.aio.secure_channel(address, credentials, opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, opts, interceptors=interceptors)


def _channel_credentials(tls_ca: str | os.PathLike[str] | bytes | None) -> grpc.ChannelCredentials | None:
    if tls_ca is None or tls_ca == "" or tls_ca == b"":
        return None
    if isinstance(tls_ca, bytes):
        pem = tls_ca
    else:
        with open(tls_ca, "rb") as file:
            pem = file.read()
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError(f"tls_ca holds no PEM certificate ({tls_ca if not isinstance(tls_ca, bytes) else 'bytes given'})")
    return grpc.ssl_channel_credentials(root_certificates=pem)


def _checked_token(token: str) -> str:
    # A metadata value must be printable ASCII; failing here beats a cryptic
    # error on the first call.
    if not token or not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise ValueError("token must be non-empty printable ASCII without spaces")
    return token


# ---- bearer token interceptors -------------------------------------------------


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: grpc.CallCredentials | None
    wait_for_ready: bool | None
    compression: grpc.Compression | None


class _SyncCallDetails(_CallDetails, grpc.ClientCallDetails):
    pass


def _with_token(metadata: Any, value: str) -> list[tuple[str, Any]]:
    pairs = [(key, item) for key, item in (metadata or ())]
    if not any(key == AUTHORIZATION for key, _ in pairs):  # an explicit per-call token wins
        pairs.append((AUTHORIZATION, value))
    return pairs


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _SyncCallDetails(
            details.method,
            details.timeout,
            _with_token(details.metadata, self._value),
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _AioTokenMetadata:
    """Shared part of the four asyncio token interceptors."""

    def __init__(self, token: str) -> None:
        self._value = f"Bearer {token}"

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*_with_token(details.metadata, self._value))
        return grpc.aio.ClientCallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready)


# grpc.aio files each interceptor object under one kind of RPC only (the first
# interface it implements), so each kind needs an object of its own.
class _AioUnaryUnaryToken(_AioTokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioUnaryStreamToken(_AioTokenMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioStreamUnaryToken(_AioTokenMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _AioStreamStreamToken(_AioTokenMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: grpc.aio.ClientCallDetails, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def _aio_token_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    return [kind(token) for kind in (_AioUnaryUnaryToken, _AioUnaryStreamToken, _AioStreamUnaryToken, _AioStreamStreamToken)]


# ---- grpc.health.v1 -------------------------------------------------------------


class HealthStatus(enum.IntEnum):
    """``grpc.health.v1.HealthCheckResponse.ServingStatus``."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def _health_messages() -> tuple[type[Any], type[Any]]:
    """HealthCheckRequest and HealthCheckResponse, built in a private descriptor pool.

    A private pool cannot clash with grpcio-health-checking's classes when
    both live in one process.
    """
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="simulacra_client/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3")
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for member in HealthStatus:
        status.value.add(name=member.name, number=member.value)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=field.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )


_HealthCheckRequest, _HealthCheckResponse = _health_messages()


def _check_callable(channel: grpc.Channel | grpc.aio.Channel) -> Any:
    return channel.unary_unary(
        HEALTH_CHECK_METHOD,
        request_serializer=_HealthCheckRequest.SerializeToString,
        response_deserializer=_HealthCheckResponse.FromString,
    )


def check_health(channel: grpc.Channel, service: str = "", *, timeout: float = 5.0) -> HealthStatus:
    """What the server reports for ``service`` ("" is the whole server).

    Raises ``grpc.RpcError``: UNAVAILABLE when unreachable, NOT_FOUND for a
    service the server does not know.
    """
    response = _check_callable(channel)(_HealthCheckRequest(service=service), timeout=timeout)
    return HealthStatus(response.status)


async def check_health_async(channel: grpc.aio.Channel, service: str = "", *, timeout: float = 5.0) -> HealthStatus:
    """The asyncio twin of ``check_health``."""
    response = await _check_callable(channel)(_HealthCheckRequest(service=service), timeout=timeout)
    return HealthStatus(response.status)


_POLL_SECONDS = 0.1


def wait_for_ready_health(channel: grpc.Channel, service: str = "", *, timeout: float = 30.0) -> None:
    """Return once ``service`` reports SERVING; ``TimeoutError`` after ``timeout`` seconds.

    Unreachable and NOT_SERVING mean "not yet" (the server may be starting);
    NOT_FOUND (no such service on a running server) is raised at once.
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"{service or 'the server'} did not report SERVING within {timeout} s (last: {last})")
        try:
            status = check_health(channel, service, timeout=max(0.05, min(remaining, 2.0)))
            if status is HealthStatus.SERVING:
                return
            last = status.name
        except grpc.RpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                raise
            last = error.code().name
        time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))


async def wait_for_ready_health_async(channel: grpc.aio.Channel, service: str = "", *, timeout: float = 30.0) -> None:
    """The asyncio twin of ``wait_for_ready_health``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last = "no answer"
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"{service or 'the server'} did not report SERVING within {timeout} s (last: {last})")
        try:
            status = await check_health_async(channel, service, timeout=max(0.05, min(remaining, 2.0)))
            if status is HealthStatus.SERVING:
                return
            last = status.name
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                raise
            last = error.code().name
        await asyncio.sleep(min(_POLL_SECONDS, max(0.0, deadline - loop.time())))
