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


STREAM_SERVER = '''
import asyncio, logging, socket, sys
import grpc
from simulacra_services.core.interceptors import ErrorMapper, RequestLog, ServerInterceptor
from simulacra_services.core.metrics import RpcMetrics

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s peer=%(fields)s")  # the request log on, as deployed


async def count(request, context):
    for i in range(int(request)):
        yield b"%d" % i


async def ping(request, context):
    return b"pong"


async def main():
    interceptor = ServerInterceptor(errors=ErrorMapper("test.simulacra.dev", "test"), request_log=RequestLog("test"), metrics=RpcMetrics())
    server = grpc.aio.server(interceptors=[interceptor])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Stream", {"Count": grpc.unary_stream_rpc_method_handler(count), "Ping": grpc.unary_unary_rpc_method_handler(ping)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
'''


def test_streaming_rpcs_that_end_or_are_cancelled_with_the_request_log_on_leave_the_server_running(tmp_path) -> None:
    """The request log reads the client's address; read after a stream has ended, grpc.aio crashed
    the process (SIGSEGV): every streaming RPC must leave a server that logs at INFO alive."""
    import subprocess
    import sys

    server = subprocess.Popen([sys.executable, "-c", STREAM_SERVER], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            count = channel.unary_stream("/test.Stream/Count")
            for i in range(30):
                assert [int(m) for m in count(b"3", timeout=20)] == [0, 1, 2]  # streams that end
                stream = count(b"1000", timeout=20)
                next(stream)
                stream.cancel()  # and streams the client leaves
            assert channel.unary_unary("/test.Stream/Ping")(b"", timeout=20) == b"pong"
        assert server.poll() is None, server.stderr.read()[-3000:]
    finally:
        server.kill()
        _, err = server.communicate(timeout=20)
    assert "Count OK" in err and "Count CANCELLED" in err  # the log did record them, with the peer
    assert "'peer': 'ipv4:127.0.0.1:" in err
