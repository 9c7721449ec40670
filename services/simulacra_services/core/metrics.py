"""Prometheus metrics of a gRPC server, and the HTTP endpoint that exposes them.

Names and labels follow the convention of go-grpc-prometheus
(``grpc_server_handled_total{grpc_service, grpc_method, grpc_type, grpc_code}``),
so that existing gRPC dashboards and alerts work unchanged. Each server owns
its registry: several servers may live in one process (tests, the launcher).
"""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

# Latency buckets in seconds: from sub-millisecond lookups up to five-minute streams.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class RpcMetrics:
    """Per-RPC counters, a latency histogram and an in-flight gauge, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._started = Counter(
            "grpc_server_started",
            "RPCs started on the server.",
            ["grpc_service", "grpc_method", "grpc_type"],
            registry=self.registry,
        )
        self._handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            ["grpc_service", "grpc_method", "grpc_type", "grpc_code"],
            registry=self.registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status, in seconds.",
            ["grpc_service", "grpc_method", "grpc_type"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "grpc_server_in_flight",
            "RPCs started and not yet finished.",
            ["grpc_service", "grpc_method"],
            registry=self.registry,
        )
        self._methods: dict[tuple[str, str, str], MethodMetrics] = {}

    def started(self, service: str, method: str, kind: str) -> None:
        self.method(service, method, kind).started()

    def finished(self, service: str, method: str, kind: str, code: str, seconds: float) -> None:
        self.method(service, method, kind).finished(code, seconds)

    def method(self, service: str, method: str, kind: str) -> MethodMetrics:
        """The metrics of one method, its labelled children looked up once (``labels()`` per RPC
        cost a few µs each: a lock, a tuple and a dict look-up per call)."""
        key = (service, method, kind)
        found = self._methods.get(key)
        if found is None:
            found = self._methods[key] = MethodMetrics(self, service, method, kind)
        return found


class MethodMetrics:
    """The children of ``RpcMetrics``' metrics for one (service, method, kind)."""

    __slots__ = ("_handled", "_handled_by_code", "_in_flight", "_labels", "_seconds", "_started")

    def __init__(self, metrics: RpcMetrics, service: str, method: str, kind: str) -> None:
        self._labels = (service, method, kind)
        self._started = metrics._started.labels(service, method, kind)
        self._in_flight = metrics._in_flight.labels(service, method)
        self._seconds = metrics._seconds.labels(service, method, kind)
        self._handled = metrics._handled
        self._handled_by_code: dict[str, Any] = {}

    def started(self) -> None:
        self._started.inc()
        self._in_flight.inc()

    def finished(self, code: str, seconds: float) -> None:
        self._in_flight.dec()
        handled = self._handled_by_code.get(code)
        if handled is None:
            handled = self._handled_by_code[code] = self._handled.labels(*self._labels, code)
        handled.inc()
        self._seconds.observe(seconds)


class MetricsEndpoint:
    """``GET http://host:port/metrics`` serving one registry, on a daemon thread."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve; returns the bound port (``port`` 0 picks a free one)."""
        self._httpd, self._thread = start_http_server(self._port, addr=self._host, registry=self._registry)
        return int(self._httpd.server_port)

    def stop(self) -> None:
        """Stop serving and release the port (blocks up to the server's poll interval)."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None
