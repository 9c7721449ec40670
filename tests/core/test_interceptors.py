"""core's ServerInterceptor on a bare grpc.aio server (real loopback RPCs): what it caches per
method must never serve one handler's RPC with another's behaviour."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc
import pytest

from simulacra_services.core.interceptors import ErrorMapper, RequestLog, ServerInterceptor
from simulacra_services.core.metrics import RpcMetrics

pytestmark = pytest.mark.timeout(60)

METHOD = "/test.Alternating/Call"


class Alternating(grpc.GenericRpcHandler):
    """A dynamic generic handler: every RPC of the same method gets a new handler object, and
    they answer differently (as a handler table swapped at run time would)."""

    def __init__(self) -> None:
        self.calls = 0

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if handler_call_details.method != METHOD:
            return None
        self.calls += 1
        answer = b"odd" if self.calls % 2 else b"even"

        async def behaviour(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return answer + request

        return grpc.unary_unary_rpc_method_handler(behaviour)


async def test_each_rpc_runs_the_handler_grpc_found_for_it_even_when_it_changes() -> None:
    metrics = RpcMetrics()
    interceptor = ServerInterceptor(errors=ErrorMapper("test.simulacra.dev", "test"), request_log=RequestLog("test"), metrics=metrics)
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((Alternating(),))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(METHOD)
            answers = [await asyncio.wait_for(call(b"!%d" % i), 20) for i in range(4)]
    finally:
        await server.stop(0)
    assert answers == [b"odd!0", b"even!1", b"odd!2", b"even!3"]
    value: Any = metrics.registry.get_sample_value(
        "grpc_server_handled_total", {"grpc_service": "test.Alternating", "grpc_method": "Call", "grpc_type": "unary", "grpc_code": "OK"}
    )
    assert value == 4
    assert interceptor.in_flight == 0
