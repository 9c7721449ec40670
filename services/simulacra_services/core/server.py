"""The one server bootstrap every Simulacra service runs on.

A service describes itself with a ``ServiceDefinition`` (names, error domain,
and a ``register`` hook that adds its servicers); ``ServiceServer`` does the
rest the same way for all of them:

- a ``grpc.aio`` server bound to ``settings.host`` only, TLS when
  ``SIMULACRA_TLS_CERT``/``SIMULACRA_TLS_KEY`` are set, message size limits
  and keepalive set explicitly, ``SO_REUSEPORT`` off (a busy port is an error);
- ``grpc.health.v1``: NOT_SERVING while starting and while draining,
  SERVING in between, for ``""`` and each of the service's names;
- server reflection listing the service's names, health and reflection;
- the interceptor of ``core.interceptors`` (auth, error mapping, request log,
  metrics), and a Prometheus endpoint at ``http://HOST:METRICS_PORT/metrics``
  (plain HTTP without auth, on the same host only: scrape it from beside the
  service, e.g. the same pod);
- graceful shutdown: ``serve_forever`` drains on SIGTERM/SIGINT;
- large blocks kept in the process's heap (``core.heap``), since grpc copies
  every message on the event loop's thread.

Health Watch streams stay open while draining (they are in-flight RPCs), so a
client that keeps one open delays shutdown up to the grace period.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from simulacra_services.core.config import Settings
from simulacra_services.core.heap import keep_large_blocks
from simulacra_services.core.interceptors import (
    BearerTokenAuth,
    ErrorMapper,
    RequestLog,
    ServerInterceptor,
)
from simulacra_services.core.logging import FIELDS, configure_logging, is_configured
from simulacra_services.core.metrics import MetricsEndpoint, RpcMetrics

__all__ = [
    "METRICS_OFF",
    "CloseHook",
    "ServiceDefinition",
    "ServiceServer",
    "configure_logging",
    "serve_forever",
    "server_options",
]

_log = logging.getLogger("simulacra.server")

CloseHook = Callable[[], Awaitable[None]]

CLOSE_HOOK_SECONDS = 120.0
"""How long a stop waits for a service's close hook (after the RPCs' grace) before it gives up on it."""

METRICS_OFF = -1
"""``ServiceServer(metrics_port=METRICS_OFF)``: no metrics endpoint."""


@dataclass(frozen=True)
class ServiceDefinition:
    """What makes one service: its names, its error domain and how to add its servicers."""

    name: str
    """One of ``core.config.SERVICES`` (picks its port settings), e.g. ``"annotation"``."""
    title: str
    """What people call it, e.g. ``"annotation-store"`` (logs, messages)."""
    error_domain: str
    """``ErrorInfo.domain`` of every error it sends, e.g. ``"annotation.simulacra.dev"``."""
    service_names: tuple[str, ...]
    """Full proto service names, for health and reflection."""
    register: Callable[..., Awaitable[CloseHook | None]]
    """``register(server, settings, **dependencies)``: adds the servicers (and opens storage or the
    database); may return an async close hook run at shutdown. Keyword arguments are the service's
    optional dependencies (defaults build them from the settings)."""
    wants_metrics_registry: bool = False
    """When true, ``register`` also gets ``metrics_registry=``: the server's Prometheus registry,
    for the service's own metrics (served on the same endpoint as the RPC metrics)."""

    def with_dependencies(self, **dependencies: object) -> ServiceDefinition:
        """The same service with ``dependencies`` handed to ``register`` (tests, embedding)."""
        return dataclasses.replace(self, register=functools.partial(self.register, **dependencies))


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """gRPC channel arguments of every Simulacra server."""
    return [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", settings.max_message_bytes),
        # Without this a second server could share a busy port silently.
        ("grpc.so_reuseport", 0),
        # Ping each connection every minute, idle ones too, and drop those that
        # stay silent 20 s more, so half-open connections do not pile up.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Accept client keepalive pings down to one each 10 s (the SDK sends one
        # each 30 s) instead of closing the connection with "too_many_pings".
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


class ServiceServer:
    """One service's gRPC server with health, reflection, interceptors and metrics.

    Ports: ``port=None`` takes ``settings.port(definition.name)``; ``0`` picks a
    free port (read it back from ``.port``). ``metrics_port=None`` takes
    ``settings.metrics_port(definition.name)``, where the setting 0 turns
    metrics off; an explicit ``metrics_port=0`` picks a free port, like
    ``port=0``, and ``METRICS_OFF`` turns metrics off.
    """

    def __init__(
        self,
        definition: ServiceDefinition,
        settings: Settings,
        *,
        port: int | None = None,
        metrics_port: int | None = None,
    ) -> None:
        self.definition = definition
        self.settings = settings
        self._wanted_port = settings.port(definition.name) if port is None else port
        if metrics_port is None:
            configured = settings.metrics_port(definition.name)
            self._wanted_metrics_port: int | None = configured if configured > 0 else None
        else:
            self._wanted_metrics_port = None if metrics_port == METRICS_OFF else metrics_port
        if not 0 <= self._wanted_port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self._wanted_port}")
        if self._wanted_metrics_port is not None and not 0 <= self._wanted_metrics_port <= 65535:
            raise ValueError(f"metrics_port must be 0..65535 or METRICS_OFF, got {self._wanted_metrics_port}")
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._interceptor: ServerInterceptor | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self._close_hook: CloseHook | None = None
        self.close_hook_seconds = CLOSE_HOOK_SECONDS
        self._port: int | None = None
        self._metrics_port: int | None = None
        self._stopping: asyncio.Future[None] | None = None

    # ---- facts ---------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound gRPC port."""
        if self._port is None:
            raise RuntimeError(f"{self.definition.title} is not started")
        return self._port

    @property
    def metrics_port(self) -> int | None:
        """The bound metrics port, or None when metrics are off."""
        return self._metrics_port

    @property
    def address(self) -> str:
        """Where a client on this machine reaches the server (``host:port``)."""
        return _join(_reachable_host(self.settings.host), self.port)

    @property
    def in_flight(self) -> int:
        """RPCs started and not yet finished."""
        return self._interceptor.in_flight if self._interceptor is not None else 0

    @property
    def _health_names(self) -> tuple[str, ...]:
        return ("", *self.definition.service_names)

    # ---- life cycle ----------------------------------------------------------
    async def start(self) -> None:
        """NOT_SERVING, register, bind, start, metrics up, then SERVING.

        On failure (a busy port, a broken register hook) everything opened so
        far is closed again before the exception propagates.
        """
        if self._server is not None:
            raise RuntimeError(f"{self.definition.title} was already started")
        definition, settings = self.definition, self.settings
        keep_large_blocks(settings.max_message_bytes)  # messages are copied on the loop: no page faults there
        metrics = RpcMetrics()
        self._interceptor = ServerInterceptor(
            errors=ErrorMapper(definition.error_domain, definition.title),
            request_log=RequestLog(definition.title),
            metrics=metrics,
            auth=BearerTokenAuth(settings.auth_token) if settings.auth_token else None,
        )
        self._server = server = grpc.aio.server(interceptors=[self._interceptor], options=server_options(settings))
        self._health = health.aio.HealthServicer()
        for name in self._health_names:
            await self._health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection((*definition.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            extra = {"metrics_registry": metrics.registry} if definition.wants_metrics_registry else {}
            self._close_hook = await definition.register(server, settings, **extra)
            self._port = self._bind(server)
            await server.start()
            if self._wanted_metrics_port is not None:
                self._metrics_endpoint = MetricsEndpoint(metrics.registry, settings.host, self._wanted_metrics_port)
                self._metrics_port = self._metrics_endpoint.start()
        except BaseException:
            await self._release(grace=0)
            raise
        for name in self._health_names:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        _log.info(
            "%s serving on %s",
            definition.title,
            self.address,
            extra={
                FIELDS: {
                    "service": definition.title,
                    "address": self.address,
                    "metrics_port": self._metrics_port,
                    "tls": settings.tls_enabled,
                    "auth": bool(settings.auth_token),
                }
            },
        )

    def _bind(self, server: grpc.aio.Server) -> int:
        address = _join(self.settings.host, self._wanted_port)
        try:
            if self.settings.tls_enabled:
                port = server.add_secure_port(address, _server_credentials(self.settings))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise OSError(f"{self.definition.title} cannot listen on {address}: is the port already in use?") from error
        if port == 0:  # older grpc versions report a failed bind this way
            raise OSError(f"{self.definition.title} cannot listen on {address}: is the port already in use?")
        return int(port)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: NOT_SERVING first, then stop taking RPCs and let in-flight ones finish.

        ``grace`` (default ``settings.shutdown_grace_seconds``) bounds the wait;
        RPCs still running then are cancelled. Close hooks run after, then the
        metrics endpoint goes. Calling it again waits for the same shutdown.
        """
        if self._server is None:
            return
        if self._stopping is None:
            grace = self.settings.shutdown_grace_seconds if grace is None else grace
            self._stopping = asyncio.ensure_future(self._drain(grace))
        # Shielded: a cancelled caller must not leave the server half stopped.
        await asyncio.shield(self._stopping)

    async def _drain(self, grace: float) -> None:
        fields = {"service": self.definition.title, "in_flight": self.in_flight, "grace_seconds": grace}
        _log.info("%s draining: NOT_SERVING, %d RPCs in flight", self.definition.title, self.in_flight, extra={FIELDS: fields})
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        await self._release(grace)
        _log.info("%s drained", self.definition.title, extra={FIELDS: {"service": self.definition.title}})

    async def _release(self, grace: float) -> None:
        """Stop the gRPC server, run the close hook, stop the metrics endpoint."""
        if self._server is not None:
            await self._server.stop(grace)
        if self._close_hook is not None:
            hook, self._close_hook = self._close_hook, None
            await self._close(hook)
        if self._metrics_endpoint is not None:
            endpoint, self._metrics_endpoint = self._metrics_endpoint, None
            await asyncio.to_thread(endpoint.stop)

    async def _close(self, hook: CloseHook) -> None:
        """Run the service's close hook, for at most ``close_hook_seconds``: a hook that never
        returns (a bug) is logged and left behind, so that a shutdown never hangs on it."""
        task = asyncio.ensure_future(hook())
        done, _ = await asyncio.wait({task}, timeout=self.close_hook_seconds)
        if not done:
            task.cancel()
            _log.error(
                "%s: close hook still running after %.0f s; stopping without waiting for it",
                self.definition.title, self.close_hook_seconds,
                extra={FIELDS: {"service": self.definition.title, "close_hook_seconds": self.close_hook_seconds}},
            )
        elif not task.cancelled() and task.exception() is not None:
            _log.error("%s: close hook failed", self.definition.title, exc_info=task.exception())

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped. Cancelling the wait leaves the server alone."""
        if self._server is None:
            raise RuntimeError(f"{self.definition.title} is not started")
        # Shielded: grpc.aio awaits its own shutdown future here, and cancelling
        # that await would cancel the future and break a later graceful stop.
        await asyncio.shield(self._server.wait_for_termination())


async def serve_forever(definition: ServiceDefinition, settings: Settings) -> None:
    """Run one service until SIGTERM or SIGINT, then drain within ``settings.shutdown_grace_seconds``.

    Configures logging from ``settings`` unless ``configure_logging`` ran
    already. The signal handlers go in before the server starts, so a signal
    that arrives while it starts still ends in a clean stop. Returns normally
    after a clean stop.
    """
    if not is_configured():
        configure_logging(settings)
    title = definition.title
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        state = "already draining" if stop_requested.is_set() else "draining"
        _log.info("%s received %s, %s", title, signum.name, state, extra={FIELDS: {"service": title, "signal": signum.name}})
        stop_requested.set()

    handled: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
            handled.append(signum)
        except (NotImplementedError, RuntimeError):  # no signals outside the main thread / on Windows
            pass
    server = ServiceServer(definition, settings)
    started = False
    try:
        await server.start()
        started = True
        waiters = {asyncio.ensure_future(stop_requested.wait()), asyncio.ensure_future(server.wait_for_termination())}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    finally:
        # Also when this task is cancelled: the server never outlives serve_forever.
        if started:
            await server.stop(settings.shutdown_grace_seconds)
        for signum in handled:
            loop.remove_signal_handler(signum)
    _log.info("%s stopped", title, extra={FIELDS: {"service": title}})


def _server_credentials(settings: Settings) -> grpc.ServerCredentials:
    try:
        with open(settings.tls_key, "rb") as key_file, open(settings.tls_cert, "rb") as cert_file:
            key, chain = key_file.read(), cert_file.read()
    except OSError as error:
        raise OSError(f"cannot read the TLS key or certificate ({error.filename}): {error.strerror}") from error
    return grpc.ssl_server_credentials([(key, chain)])


def _join(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 host."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _reachable_host(host: str) -> str:
    """A wildcard bind address is reached through loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
