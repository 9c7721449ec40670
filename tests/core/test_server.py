"""The server bootstrap, end to end: real servers on 127.0.0.1, real clients.

Health, reflection, error mapping for every kind of RPC, auth, TLS, message
limits, metrics, request logs and graceful shutdown (in process and on
SIGTERM/SIGINT in a subprocess).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from simulacra_client.channel import check_health_async, open_aio_channel, open_channel
from simulacra_client.errors import (
    DataLossError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    SimulacraRpcError,
    UnauthenticatedError,
    from_rpc_error,
    translate_errors,
)
from simulacra_services.core.config import Settings
from simulacra_services.core.interceptors import LARGE_REQUEST_BYTES
from simulacra_services.core.logging import configure_logging
from simulacra_services.core.server import METRICS_OFF, ServiceServer

from tests.core import echo_service
from tests.core.certs import make_tls_files

pytestmark = pytest.mark.timeout(120)

SERVICE = echo_service.SERVICE
Tensor = echo_service.Tensor
REPO = Path(__file__).resolve().parents[2]
WAIT = 20.0  # upper bound of any single wait: a broken server fails the test instead of hanging it


# ---- helpers ------------------------------------------------------------------


def unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(f"/{SERVICE}/{method}", Tensor.SerializeToString, Tensor.FromString)


async def bounded(awaitable: Awaitable[Any]) -> Any:
    return await asyncio.wait_for(awaitable, WAIT)


async def rpc_error(awaitable: Awaitable[Any]) -> SimulacraRpcError:
    """The typed error an RPC fails with (fails the test if it succeeds)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await bounded(awaitable)
    return from_rpc_error(caught.value)


async def until(predicate: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(families: dict[str, Any], sample: str, **labels: str) -> float | None:
    """The value of the first sample named ``sample`` whose labels include ``labels``."""
    for family in families.values():
        for s in family.samples:
            if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path), shutdown_grace_seconds=5.0)


@pytest.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[ServiceServer]]]:
    """Start echo servers on free loopback ports; stop them all at the end."""
    servers: list[ServiceServer] = []

    async def start(settings: Settings, definition: Any = None, **ports: int) -> ServiceServer:
        ports.setdefault("port", 0)
        ports.setdefault("metrics_port", 0)
        server = ServiceServer(definition or echo_service.definition(), settings, **ports)
        servers.append(server)
        await bounded(server.start())
        return server

    yield start
    for server in servers:
        await bounded(server.stop(0))


@pytest.fixture
def restore_logging() -> Any:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


# ---- health and reflection ------------------------------------------------------


async def test_health_reports_serving_for_the_server_and_each_service(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    async with open_aio_channel(server.address) as channel:
        assert await bounded(check_health_async(channel, "")) == health_pb2.HealthCheckResponse.SERVING
        assert await bounded(check_health_async(channel, SERVICE)) == health_pb2.HealthCheckResponse.SERVING
        unknown = await rpc_error(check_health_async(channel, "simulacra.nope.v1.NopeService"))
        assert unknown.code is grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_service_health_and_reflection(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    async with open_aio_channel(server.address) as channel:
        call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        response = await bounded(call.read())
        call.cancel()
    names = {service.name for service in response.list_services_response.service}
    assert names == {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


# ---- graceful shutdown in process ---------------------------------------------------


async def test_stop_drains_not_serving_first_and_lets_in_flight_rpcs_finish(settings: Settings, start_server: Any) -> None:
    release = asyncio.Event()
    closed: list[str] = []
    server = await start_server(settings, echo_service.definition(gate=release.wait, closed=closed))
    async with open_aio_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE))
        assert (await bounded(watch.read())).status == health_pb2.HealthCheckResponse.SERVING
        slow = asyncio.ensure_future(unary(channel, "Slow")(Tensor(data=b"in flight")))
        await until(lambda: server.in_flight == 2)  # the watch and the slow call
        # Giving up a wait for termination (as serve_forever does) must not break the drain.
        waiter = asyncio.ensure_future(server.wait_for_termination())
        await asyncio.sleep(0.05)
        waiter.cancel()

        stopping = asyncio.ensure_future(server.stop(grace=WAIT))
        # Draining is announced while the slow call still runs...
        assert (await bounded(watch.read())).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert not slow.done() and not stopping.done()
        # ...and the slow call completes normally once it may.
        release.set()
        assert (await bounded(slow)).data == b"in flight"
        await bounded(stopping)
        await bounded(server.wait_for_termination())
        assert closed == ["closed"]

        refused = await rpc_error(unary(channel, "Echo")(Tensor()))
        assert refused.code is grpc.StatusCode.UNAVAILABLE


async def test_a_close_hook_that_never_returns_cannot_hang_the_stop(
    settings: Settings, start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hook_started = asyncio.Event()

    async def register(server: grpc.aio.Server, settings: Settings) -> Callable[[], Awaitable[None]]:
        async def stubborn_close() -> None:  # a bug: it waits forever and shrugs off cancellation
            hook_started.set()
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    return  # ends only when cancelled, so that the test leaves no task behind

        return stubborn_close

    definition = dataclasses.replace(echo_service.definition(), register=register)
    server = await start_server(settings, definition)
    server.close_hook_seconds = 0.5
    with caplog.at_level(logging.ERROR, logger="simulacra"):
        await bounded(server.stop(grace=0.1))
    assert hook_started.is_set()
    assert any("close hook still running after" in r.getMessage() for r in caplog.records)


async def test_a_close_hook_that_fails_is_logged_and_the_stop_completes(
    settings: Settings, start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def register(server: grpc.aio.Server, settings: Settings) -> Callable[[], Awaitable[None]]:
        async def failing_close() -> None:
            raise RuntimeError("the close hook broke")

        return failing_close

    server = await start_server(settings, dataclasses.replace(echo_service.definition(), register=register))
    with caplog.at_level(logging.ERROR, logger="simulacra"):
        await bounded(server.stop(grace=0.1))
    failed = [r for r in caplog.records if "close hook failed" in r.getMessage()]
    assert failed and failed[0].exc_info and "the close hook broke" in str(failed[0].exc_info[1])


async def test_rpcs_still_running_when_the_grace_period_ends_are_cancelled(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)  # Slow never returns by itself
    async with open_aio_channel(server.address) as channel:
        slow = asyncio.ensure_future(unary(channel, "Slow")(Tensor()))
        await until(lambda: server.in_flight == 1)
        await bounded(server.stop(grace=0.1))
        error = await rpc_error(slow)
    assert error.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


# ---- error mapping --------------------------------------------------------------------


async def test_domain_error_becomes_its_status_with_one_error_info(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    async with open_aio_channel(server.address) as channel:
        error = await rpc_error(unary(channel, "Fail")(Tensor()))
    assert isinstance(error, InvalidArgumentError)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.reason, error.domain) == ("BAD_SHAPE", echo_service.DOMAIN)
    assert error.metadata == {"field": "shape", "got": "0"}
    assert error.message == "shape must not be empty"


async def test_unexpected_exception_becomes_internal_without_details(
    settings: Settings, start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(settings)
    with caplog.at_level(logging.ERROR, logger="simulacra"):
        async with open_aio_channel(server.address) as channel:
            error = await rpc_error(unary(channel, "Crash")(Tensor()))
    assert isinstance(error, InternalError)
    assert error.reason == "INTERNAL" and error.domain == echo_service.DOMAIN
    for leak in ("secret detail", "Traceback", "RuntimeError", "echo_service.py"):
        assert leak not in error.message
    # The details went to the server log, under the id the client got.
    error_id = error.metadata["error_id"]
    assert error_id in error.message
    logged = [r for r in caplog.records if r.exc_info and error_id in r.getMessage()]
    assert len(logged) == 1
    exc_info = logged[0].exc_info
    assert exc_info is not None and "secret detail" in str(exc_info[1])


async def test_error_raised_mid_stream_arrives_after_the_messages_sent(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    received: list[Tensor] = []
    async with open_aio_channel(server.address) as channel:
        call = channel.unary_stream(f"/{SERVICE}/StreamFail", Tensor.SerializeToString, Tensor.FromString)(Tensor(data=b"x"))

        async def consume() -> None:
            async for message in call:
                received.append(message)

        error = await rpc_error(consume())
    assert [m.data for m in received] == [b"x", b"x"]
    assert isinstance(error, NotFoundError)
    assert (error.reason, error.domain, error.metadata) == ("SAMPLE_NOT_FOUND", echo_service.DOMAIN, {"index": "2"})


async def test_responses_a_handler_serialized_itself_go_out_as_they_are(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    async with open_aio_channel(server.address) as channel:
        call = channel.unary_stream(f"/{SERVICE}/Serialized", Tensor.SerializeToString, Tensor.FromString)(Tensor(data=b"x", shape=[1]))
        received = [message async for message in call]
    assert received == [Tensor(data=b"x", shape=[1]), Tensor(data=b"x", shape=[1]), Tensor(data=b"x", shape=[2, 1])]


async def test_errors_of_client_streaming_and_bidi_rpcs_are_mapped(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)

    async def chunks(*payloads: bytes) -> AsyncIterator[Tensor]:
        for payload in payloads:
            yield Tensor(data=payload)

    async with open_aio_channel(server.address) as channel:
        collect = channel.stream_unary(f"/{SERVICE}/Collect", Tensor.SerializeToString, Tensor.FromString)
        assert (await bounded(collect(chunks(b"ab", b"cd")))).data == b"abcd"
        corrupt = await rpc_error(collect(chunks(b"ab", b"boom")))
        assert isinstance(corrupt, DataLossError) and corrupt.reason == "CHUNK_CORRUPT"
        assert corrupt.metadata == {"chunk": "2"}

        chat = channel.stream_stream(f"/{SERVICE}/Chat", Tensor.SerializeToString, Tensor.FromString)
        replies: list[bytes] = []

        async def converse() -> None:
            async for reply in chat(chunks(b"hello", b"crash", b"never")):
                replies.append(reply.data)

        crashed = await rpc_error(converse())
    assert replies == [b"hello"]
    assert isinstance(crashed, InternalError) and "secret detail" not in crashed.message


async def test_sync_clients_get_the_same_typed_errors(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)

    def call_fail() -> SimulacraRpcError:
        channel = open_channel(server.address)
        try:
            fail = channel.unary_unary(f"/{SERVICE}/Fail", Tensor.SerializeToString, Tensor.FromString)
            with pytest.raises(SimulacraRpcError) as caught, translate_errors():
                fail(Tensor(shape=[1, 2]), timeout=WAIT)
            return caught.value
        finally:
            channel.close()

    error = await asyncio.to_thread(call_fail)
    assert isinstance(error, InvalidArgumentError)
    assert (error.reason, error.domain, error.metadata) == ("BAD_SHAPE", echo_service.DOMAIN, {"field": "shape", "got": "2"})
    assert isinstance(error.__cause__, grpc.RpcError)


async def test_plain_function_handlers_run_and_left_out_rpcs_say_unimplemented(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    async with open_aio_channel(server.address) as channel:
        assert (await bounded(unary(channel, "SyncEcho")(Tensor(data=b"sync")))).data == b"sync"
        later = await rpc_error(unary(channel, "Later")(Tensor()))
        stream = channel.unary_stream(f"/{SERVICE}/LaterStream", Tensor.SerializeToString, Tensor.FromString)(Tensor())
        later_stream = await rpc_error(stream.read())
    for error, method in ((later, "Later"), (later_stream, "LaterStream")):
        assert error.code is grpc.StatusCode.UNIMPLEMENTED
        assert error.reason == "NOT_YET_IMPLEMENTED" and error.metadata == {"service": SERVICE, "method": method}
        assert f"EchoService.{method}" in error.message


async def test_a_not_implemented_error_of_our_own_code_is_internal_not_unimplemented(
    settings: Settings, start_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(settings)
    with caplog.at_level(logging.ERROR, logger="simulacra"):
        async with open_aio_channel(server.address) as channel:
            error = await rpc_error(unary(channel, "Unfinished")(Tensor()))
    assert isinstance(error, InternalError) and error.reason == "INTERNAL"
    assert "secret detail" not in error.message and "implement" not in error.message
    logged = [r for r in caplog.records if r.exc_info and error.metadata["error_id"] in r.getMessage()]
    assert len(logged) == 1 and isinstance(logged[0].exc_info[1], NotImplementedError)


async def test_undecodable_request_bytes_are_invalid_argument_with_a_clean_reason(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    garbage = b"\xff\xff\xff\xff\x0f"  # field 0 / truncated varint: no message parses from it
    identity = lambda data: data  # noqa: E731
    async with open_aio_channel(server.address) as channel:
        unary_error = await rpc_error(channel.unary_unary(f"/{SERVICE}/Echo", identity, identity)(garbage))
        stream = channel.stream_unary(f"/{SERVICE}/Collect", identity, identity)
        stream_error = await rpc_error(stream(iter([Tensor(data=b"ok").SerializeToString(), garbage])))
    for error in (unary_error, stream_error):
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "UNDECODABLE_REQUEST" and error.domain == echo_service.DOMAIN
        assert "Error parsing" not in error.message


async def test_large_requests_are_parsed_off_the_event_loop_and_bad_ones_are_still_undecodable(
    settings: Settings, start_server: Any
) -> None:
    server = await start_server(settings)
    large = Tensor(data=os.urandom(LARGE_REQUEST_BYTES + 1))
    small = Tensor(data=b"small")
    identity = lambda data: data  # noqa: E731
    async with open_aio_channel(server.address) as channel:
        where = unary(channel, "ParsedWhere")
        assert (await bounded(where(small))) == Tensor(data=b"loop", shape=[5])
        assert (await bounded(where(large))) == Tensor(data=b"thread", shape=[len(large.data)])
        # Large client streams parse in threads too, and arrive whole and in order.
        collected = await bounded(channel.stream_unary(f"/{SERVICE}/Collect", Tensor.SerializeToString, Tensor.FromString)(iter([large, small, large])))
        assert collected.data == large.data + small.data + large.data
        garbage = large.SerializeToString() + b"\xff\xff\xff\xff\x0f"  # a valid message, then a truncated field 0
        unary_error = await rpc_error(channel.unary_unary(f"/{SERVICE}/Echo", identity, identity)(garbage))
        stream = channel.stream_unary(f"/{SERVICE}/Collect", identity, identity)
        stream_error = await rpc_error(stream(iter([large.SerializeToString(), garbage])))
    for error in (unary_error, stream_error):
        assert error.code is grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == "UNDECODABLE_REQUEST" and error.domain == echo_service.DOMAIN


# ---- auth -------------------------------------------------------------------------------


async def test_bearer_token_is_required_except_for_health(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings.replace(auth_token="s3cret-token"))

    async with open_aio_channel(server.address) as anonymous:
        missing = await rpc_error(unary(anonymous, "Echo")(Tensor()))
        assert isinstance(missing, UnauthenticatedError) and missing.reason == "MISSING_TOKEN"
        assert missing.domain == echo_service.DOMAIN
        # Orchestrator probes carry no token.
        assert await bounded(check_health_async(anonymous)) == health_pb2.HealthCheckResponse.SERVING
        # Reflection describes the whole API: it needs the token.
        listing = reflection_pb2_grpc.ServerReflectionStub(anonymous).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        refused = await rpc_error(listing.read())
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN")
        malformed = await rpc_error(unary(anonymous, "Echo")(Tensor(), metadata=(("authorization", "Basic s3cret-token"),)))
        assert malformed.reason == "INVALID_TOKEN"

    async with open_aio_channel(server.address, token="wrong-token") as wrong:
        invalid = await rpc_error(unary(wrong, "Echo")(Tensor()))
        assert isinstance(invalid, UnauthenticatedError) and invalid.reason == "INVALID_TOKEN"

    async with open_aio_channel(server.address, token="s3cret-token") as right:
        assert (await bounded(unary(right, "Echo")(Tensor(data=b"ok")))).data == b"ok"
        # The token also rides on streaming calls, and errors still map behind auth.
        stream = right.unary_stream(f"/{SERVICE}/StreamFail", Tensor.SerializeToString, Tensor.FromString)(Tensor(data=b"s"))
        received = []

        async def consume() -> None:
            async for message in stream:
                received.append(message.data)

        not_found = await rpc_error(consume())
        assert received == [b"s", b"s"] and not_found.reason == "SAMPLE_NOT_FOUND"


async def test_sync_channel_sends_the_token_on_unary_and_streaming_calls(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings.replace(auth_token="s3cret-token"))

    def calls() -> tuple[bytes, list[bytes], str]:
        channel = open_channel(server.address, token="s3cret-token")
        try:
            echo = channel.unary_unary(f"/{SERVICE}/Echo", Tensor.SerializeToString, Tensor.FromString)
            collect = channel.stream_unary(f"/{SERVICE}/Collect", Tensor.SerializeToString, Tensor.FromString)
            stream = channel.unary_stream(f"/{SERVICE}/StreamFail", Tensor.SerializeToString, Tensor.FromString)
            echoed = echo(Tensor(data=b"a"), timeout=WAIT).data + collect(iter([Tensor(data=b"b")]), timeout=WAIT).data
            received: list[bytes] = []
            try:
                for message in stream(Tensor(data=b"c"), timeout=WAIT):
                    received.append(message.data)
            except grpc.RpcError as error:
                return echoed, received, from_rpc_error(error).reason
            return echoed, received, ""
        finally:
            channel.close()

    echoed, received, reason = await asyncio.to_thread(calls)
    assert (echoed, received, reason) == (b"ab", [b"c", b"c"], "SAMPLE_NOT_FOUND")


# ---- TLS ------------------------------------------------------------------------------------


async def test_tls_server_accepts_clients_trusting_its_ca_and_refuses_plaintext(
    settings: Settings, start_server: Any, tmp_path: Path
) -> None:
    tls = make_tls_files(tmp_path)
    server = await start_server(settings.replace(tls_cert=str(tls.server_cert), tls_key=str(tls.server_key), auth_token="t0ken"))

    async with open_aio_channel(server.address, tls_ca=str(tls.ca_cert), token="t0ken") as by_path:
        assert (await bounded(unary(by_path, "Echo")(Tensor(data=b"tls")))).data == b"tls"
    async with open_aio_channel(f"localhost:{server.port}", tls_ca=tls.ca_cert.read_bytes(), token="t0ken") as by_pem:
        assert (await bounded(unary(by_pem, "Echo")(Tensor(data=b"pem")))).data == b"pem"
    async with open_aio_channel(server.address, token="t0ken") as plaintext:
        refused = await rpc_error(unary(plaintext, "Echo")(Tensor(), timeout=5))
        # Refused by the transport, before any RPC ran: no ErrorInfo, the connection itself failed.
        assert (refused.code, refused.reason) == (grpc.StatusCode.UNAVAILABLE, "")
        assert "failed to connect" in refused.message
    # A client trusting another CA refuses the server.
    (tmp_path / "other").mkdir()
    stranger = make_tls_files(tmp_path / "other")
    async with open_aio_channel(server.address, tls_ca=str(stranger.ca_cert), token="t0ken") as untrusting:
        distrust = await rpc_error(unary(untrusting, "Echo")(Tensor(), timeout=5))
        assert (distrust.code, distrust.reason) == (grpc.StatusCode.UNAVAILABLE, "")
        assert "handshake failed" in distrust.message.lower() and "certificate" in distrust.message.lower()


# ---- message size -------------------------------------------------------------------------


async def test_messages_over_the_limit_are_refused_with_resource_exhausted(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings.replace(max_message_bytes=64 * 1024))
    async with open_aio_channel(server.address, max_message_bytes=1024 * 1024) as generous_client:
        assert len((await bounded(unary(generous_client, "Echo")(Tensor(data=b"x" * 32 * 1024)))).data) == 32 * 1024
        too_big = await rpc_error(unary(generous_client, "Echo")(Tensor(data=b"x" * 100 * 1024)))
        assert too_big.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    # The SDK applies its own limit before sending. Its limit (96 KiB) differs from the
    # server's (64 KiB), so that each refusal names whose limit it was.
    sdk_limit, server_limit = 96 * 1024, 64 * 1024
    async with open_aio_channel(server.address, max_message_bytes=sdk_limit) as strict_client:
        by_server = await rpc_error(unary(strict_client, "Echo")(Tensor(data=b"x" * 80 * 1024)))
        not_sent = await rpc_error(unary(strict_client, "Echo")(Tensor(data=b"x" * 128 * 1024)))
        # The server still serves (the refusal broke nothing).
        assert (await bounded(unary(strict_client, "Echo")(Tensor(data=b"ok")))).data == b"ok"
    assert by_server.code is grpc.StatusCode.RESOURCE_EXHAUSTED and f"vs. {server_limit})" in by_server.message
    assert not_sent.code is grpc.StatusCode.RESOURCE_EXHAUSTED and f"vs. {sdk_limit})" in not_sent.message
    assert "Sent message larger" in not_sent.message and "Received message larger" in by_server.message


# ---- metrics and request logs ----------------------------------------------------------------


async def test_metrics_endpoint_counts_rpcs_by_method_and_code(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    async with open_aio_channel(server.address) as channel:
        for _ in range(3):
            await bounded(unary(channel, "Echo")(Tensor()))
        await rpc_error(unary(channel, "Fail")(Tensor()))

    assert server.metrics_port is not None
    families = await asyncio.to_thread(scrape, server.metrics_port)
    echo = {"grpc_service": SERVICE, "grpc_method": "Echo", "grpc_type": "unary"}
    fail = {"grpc_service": SERVICE, "grpc_method": "Fail", "grpc_type": "unary"}
    assert sample_value(families, "grpc_server_handled_total", grpc_code="OK", **echo) == 3
    assert sample_value(families, "grpc_server_handled_total", grpc_code="INVALID_ARGUMENT", **fail) == 1
    assert sample_value(families, "grpc_server_started_total", **echo) == 3
    assert sample_value(families, "grpc_server_handling_seconds_count", **echo) == 3
    assert sample_value(families, "grpc_server_handling_seconds_bucket", le="+Inf", **echo) == 3
    assert sample_value(families, "grpc_server_in_flight", grpc_service=SERVICE, grpc_method="Echo") == 0

    port = server.metrics_port
    await bounded(server.stop(0))
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(scrape, port)


async def test_each_server_owns_its_metrics(settings: Settings, start_server: Any) -> None:
    first = await start_server(settings)
    second = await start_server(settings)
    async with open_aio_channel(first.address) as channel:
        await bounded(unary(channel, "Echo")(Tensor()))
    families = await asyncio.to_thread(scrape, second.metrics_port)
    assert sample_value(families, "grpc_server_handled_total", grpc_method="Echo") is None


async def test_metrics_port_setting_zero_turns_metrics_off(settings: Settings, start_server: Any) -> None:
    from_settings = await start_server(settings.replace(annotation_port=0, annotation_metrics_port=0), port=None, metrics_port=None)
    assert from_settings.metrics_port is None and from_settings.port > 0
    explicitly_off = await start_server(settings, metrics_port=METRICS_OFF)
    assert explicitly_off.metrics_port is None


async def test_request_log_writes_one_json_line_per_rpc(settings: Settings, start_server: Any, restore_logging: Any) -> None:
    stream = io.StringIO()
    configure_logging(settings.replace(log_format="json", log_level="INFO"), stream=stream)
    server = await start_server(settings)
    async with open_aio_channel(server.address) as channel:
        await bounded(unary(channel, "Echo")(Tensor()))
        await rpc_error(unary(channel, "Fail")(Tensor()))

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    rpcs = {line["method"]: line for line in lines if line["logger"] == "simulacra.rpc"}
    echo, fail = rpcs[f"/{SERVICE}/Echo"], rpcs[f"/{SERVICE}/Fail"]
    assert echo["code"] == "OK" and "reason" not in echo
    assert fail["code"] == "INVALID_ARGUMENT" and fail["reason"] == "BAD_SHAPE"
    for line in (echo, fail):
        assert line["peer"].startswith("ipv4:127.0.0.1:")
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
        assert line["service"] == "echo" and line["level"] == "INFO"
    # Health probes stay out of the INFO log.
    assert not any(m.startswith("/grpc.health.v1.Health/") for m in rpcs)


# ---- start-up failures ----------------------------------------------------------------------


async def test_a_busy_port_is_an_error_and_start_cleans_up(settings: Settings, start_server: Any) -> None:
    first = await start_server(settings)
    closed: list[str] = []
    with pytest.raises(OSError, match="already in use"):
        await start_server(settings, echo_service.definition(closed=closed), port=first.port)
    assert closed == ["closed"]  # the close hook of the half-started server ran
    async with open_aio_channel(first.address) as channel:
        assert (await bounded(unary(channel, "Echo")(Tensor(data=b"still mine")))).data == b"still mine"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="all of 127/8 is loopback on Linux only")
async def test_binds_only_the_configured_host(settings: Settings, start_server: Any) -> None:
    server = await start_server(settings)
    assert server.address == f"127.0.0.1:{server.port}"
    for port in (server.port, server.metrics_port):
        with socket.socket() as on_host, socket.socket() as elsewhere:
            on_host.settimeout(5)
            elsewhere.settimeout(5)
            assert on_host.connect_ex(("127.0.0.1", port)) == 0
            # 127.0.0.2 is this machine too: a wildcard bind would answer there.
            assert elsewhere.connect_ex(("127.0.0.2", port)) != 0


# ---- graceful shutdown of a real process -------------------------------------------------


class ServiceProcess:
    """``python -m tests.core.echo_service`` with its JSON log lines read as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[dict[str, Any]] = []

    async def line_where(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async def read() -> dict[str, Any]:
            assert self.process.stderr is not None
            while True:
                raw = await self.process.stderr.readline()
                assert raw, f"the service exited before the expected log line; log so far: {self.lines}"
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    line = {"message": raw.decode(errors="replace")}
                self.lines.append(line)
                if predicate(line):
                    return line

        return await bounded(read())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_forever_drains_and_exits_zero_on_signal(tmp_path: Path, signum: signal.Signals) -> None:
    release = tmp_path / "release"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULACRA_")}
    env.update(SIMULACRA_DATA_DIR=str(tmp_path), SIMULACRA_LOG_FORMAT="json", SIMULACRA_SHUTDOWN_GRACE_SECONDS=str(WAIT))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.core.echo_service", str(release),
        cwd=REPO, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    service = ServiceProcess(process)
    try:
        serving = await service.line_where(lambda line: "address" in line)
        async with open_aio_channel(serving["address"]) as channel:
            slow = asyncio.ensure_future(unary(channel, "Slow")(Tensor(data=b"finish me")))
            await service.line_where(lambda line: line.get("message") == "slow started")

            process.send_signal(signum)
            draining = await service.line_where(lambda line: "in_flight" in line)
            assert draining["in_flight"] == 1  # the slow call is being waited for
            release.touch()
            assert (await bounded(slow)).data == b"finish me"
            await service.line_where(lambda line: line.get("message") == "echo stopped")
        assert await bounded(process.wait()) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    messages = [line.get("message", "") for line in service.lines]
    assert f"echo received {signum.name}, draining" in messages
    assert "echo drained" in messages
