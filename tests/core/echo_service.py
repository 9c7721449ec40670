"""A tiny service for the server bootstrap's tests: every shape of RPC, and ways to fail.

Run as ``python -m tests.core.echo_service RELEASE_FILE`` it serves until
SIGTERM/SIGINT (``serve_forever``), which is how the graceful-shutdown test
drives it in a subprocess; settings come from SIMULACRA_* variables (the port
is 0: the "serving" log line says which one), and Slow waits until
RELEASE_FILE exists.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc
from simulacra_services.core import errors
from simulacra_services.core.config import Settings
from simulacra_services.core.server import ServiceDefinition, serve_forever

SERVICE = "simulacra.test.v1.EchoService"
DOMAIN = "echo.simulacra.dev"
Tensor = common_pb2.Tensor


async def echo(request: Tensor, context: grpc.aio.ServicerContext) -> Tensor:
    return request


async def fail(request: Tensor, context: grpc.aio.ServicerContext) -> Tensor:
    raise errors.InvalidArgument("BAD_SHAPE", "shape must not be empty", {"field": "shape", "got": len(request.shape)})


async def crash(request: Tensor, context: grpc.aio.ServicerContext) -> Tensor:
    raise RuntimeError("secret detail")


async def stream_fail(request: Tensor, context: grpc.aio.ServicerContext) -> AsyncIterator[Tensor]:
    yield request
    yield request
    raise errors.NotFound("SAMPLE_NOT_FOUND", "sample 2 does not exist", {"index": 2})


def sync_echo(request: Tensor, context: grpc.aio.ServicerContext) -> Tensor:
    # A plain function: the server runs it off the event loop.
    return request


def later(request: Tensor, context: grpc.aio.ServicerContext) -> Tensor:
    # An RPC left out: the generated servicer base class answers it.
    return sampling_service_pb2_grpc.SamplingServiceServicer().Sample(request, context)


async def unfinished(request: Tensor, context: grpc.aio.ServicerContext) -> Tensor:
    # A bug, not an RPC left out: a code path nobody wrote.
    raise NotImplementedError("secret detail: this branch was never written")


Gate = Callable[[], Awaitable[object]]


def slow_handler(gate: Gate) -> Callable[..., Awaitable[Tensor]]:
    """Slow holds its RPC in flight until ``gate`` opens, so a test can stop the server meanwhile."""

    async def slow(request: Tensor, context: grpc.aio.ServicerContext) -> Tensor:
        logging.getLogger("echo").info("slow started")
        await gate()
        return request

    return slow


async def _never() -> None:
    await asyncio.Event().wait()


async def collect(requests: AsyncIterator[Tensor], context: grpc.aio.ServicerContext) -> Tensor:
    data = b""
    async for request in requests:
        if request.data == b"boom":
            raise errors.DataLoss("CHUNK_CORRUPT", "a chunk was corrupt", {"chunk": len(data)})
        data += request.data
    return Tensor(data=data)


async def serialized(request: Tensor, context: grpc.aio.ServicerContext) -> AsyncIterator[Tensor | bytes]:
    # A handler may send a response it serialized itself (bytes): it goes out as it is.
    yield request
    yield request.SerializeToString()
    yield Tensor(shape=[2]).SerializeToString() + request.SerializeToString()  # concatenated messages merge


async def chat(requests: AsyncIterator[Tensor], context: grpc.aio.ServicerContext) -> AsyncIterator[Tensor]:
    async for request in requests:
        if request.data == b"crash":
            raise ValueError("secret detail")
        yield request


def _parse_noting_thread(data: bytes) -> tuple[int, Tensor]:
    return threading.get_ident(), Tensor.FromString(data)


async def parsed_where(request: tuple[int, Tensor], context: grpc.aio.ServicerContext) -> Tensor:
    # Says whether the request was parsed on the event loop's thread (the one running this handler).
    parser, tensor = request
    return Tensor(data=b"loop" if parser == threading.get_ident() else b"thread", shape=[len(tensor.data)])


def handler(gate: Gate) -> grpc.GenericRpcHandler:
    def unary(behaviour):  # noqa: ANN001, ANN202
        return grpc.unary_unary_rpc_method_handler(behaviour, Tensor.FromString, Tensor.SerializeToString)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": unary(echo),
            "Fail": unary(fail),
            "Crash": unary(crash),
            "Slow": unary(slow_handler(gate)),
            "SyncEcho": unary(sync_echo),
            "Later": unary(later),
            "Unfinished": unary(unfinished),
            "LaterStream": grpc.unary_stream_rpc_method_handler(later, Tensor.FromString, Tensor.SerializeToString),
            "StreamFail": grpc.unary_stream_rpc_method_handler(stream_fail, Tensor.FromString, Tensor.SerializeToString),
            "Collect": grpc.stream_unary_rpc_method_handler(collect, Tensor.FromString, Tensor.SerializeToString),
            "Chat": grpc.stream_stream_rpc_method_handler(chat, Tensor.FromString, Tensor.SerializeToString),
            "Serialized": grpc.unary_stream_rpc_method_handler(serialized, Tensor.FromString, Tensor.SerializeToString),
            "ParsedWhere": grpc.unary_unary_rpc_method_handler(parsed_where, _parse_noting_thread, Tensor.SerializeToString),
        },
    )


def definition(*, gate: Gate = _never, closed: list[str] | None = None) -> ServiceDefinition:
    """The echo service; ``gate`` releases Slow calls, ``closed`` records the close hook's run."""

    async def register(server: grpc.aio.Server, settings: Settings):  # noqa: ANN202
        server.add_generic_rpc_handlers((handler(gate),))

        async def close() -> None:
            if closed is not None:
                closed.append("closed")

        return close

    return ServiceDefinition(name="annotation", title="echo", error_domain=DOMAIN, service_names=(SERVICE,), register=register)


def _file_gate(path: Path) -> Gate:
    async def wait_for_file() -> None:
        while not path.exists():
            await asyncio.sleep(0.02)

    return wait_for_file


if __name__ == "__main__":
    settings = Settings.from_env(annotation_port=0, annotation_metrics_port=0)
    asyncio.run(serve_forever(definition(gate=_file_gate(Path(sys.argv[1]))), settings))
