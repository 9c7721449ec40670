"""The SDK's raw layer: channels, token, health waits and typed errors, against real servers."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from simulacra_client.channel import (
    HealthStatus,
    channel_options,
    check_health,
    open_aio_channel,
    open_channel,
    wait_for_ready_health,
    wait_for_ready_health_async,
)
from simulacra_client.errors import (
    InvalidArgumentError,
    SimulacraRpcError,
    UnavailableError,
    from_rpc_error,
)
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceServer

from tests.core import echo_service

pytestmark = pytest.mark.timeout(120)

SERVICE = echo_service.SERVICE
Tensor = echo_service.Tensor
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServiceServer]:
    running = ServiceServer(
        echo_service.definition(), Settings(data_dir=str(tmp_path), auth_token="right"), port=0, metrics_port=METRICS_OFF
    )
    await running.start()
    yield running
    await running.stop(0)


def test_sdk_imports_neither_the_services_nor_torch_nor_health_checking() -> None:
    # (grpc itself imports the top-level grpc_health package when it is installed;
    # the SDK must not need its v1 modules.)
    code = (
        "import sys, simulacra_client.channel, simulacra_client.errors\n"
        "banned = ('simulacra_services', 'torch', 'grpc_health.v1')\n"
        "print(sorted(m for m in sys.modules if m.startswith(banned)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO / "clients" / "python", capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_channel_options_set_both_message_limits_and_let_callers_override() -> None:
    options = dict(channel_options(1234, [("grpc.keepalive_time_ms", 60_000), ("grpc.primary_user_agent", "job/1")]))
    assert options["grpc.max_receive_message_length"] == options["grpc.max_send_message_length"] == 1234
    assert options["grpc.keepalive_time_ms"] == 60_000 and options["grpc.primary_user_agent"] == "job/1"
    with pytest.raises(ValueError):
        channel_options(0)


@pytest.mark.parametrize("token", ["two words", "t\u00f6ken", "line\nbreak"])
def test_tokens_that_cannot_be_metadata_are_refused_up_front(token: str) -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        open_channel("127.0.0.1:1", token=token)
    with pytest.raises(ValueError, match="printable ASCII"):
        open_aio_channel("127.0.0.1:1", token=token)


def test_a_tls_ca_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="no PEM certificate"):
        open_channel("127.0.0.1:1", tls_ca=str(not_pem))
    with pytest.raises(ValueError, match="no PEM certificate"):
        open_aio_channel("127.0.0.1:1", tls_ca=b"hello")


async def test_a_token_given_on_the_call_wins_over_the_channel_token(server: ServiceServer) -> None:
    echo = "/" + SERVICE + "/Echo"
    async with open_aio_channel(server.address, token="wrong") as channel:
        call = channel.unary_unary(echo, Tensor.SerializeToString, Tensor.FromString)
        reply = await asyncio.wait_for(call(Tensor(data=b"ok"), metadata=(("authorization", "Bearer right"),)), 20)
        assert reply.data == b"ok"


def test_wait_for_ready_health_waits_for_a_server_that_starts_later(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    outcome: list[Any] = []
    channel = open_channel(address)
    try:
        waiter = threading.Thread(target=lambda: outcome.append(_wait(channel, SERVICE)), daemon=True)
        waiter.start()

        async def serve_until_ready() -> None:
            server = ServiceServer(echo_service.definition(), Settings(data_dir=str(tmp_path)), port=port, metrics_port=METRICS_OFF)
            await server.start()
            try:
                await asyncio.to_thread(waiter.join, 30)
            finally:
                await server.stop(0)

        asyncio.run(serve_until_ready())
        assert outcome == [None]  # returned without error
    finally:
        channel.close()


def _wait(channel: grpc.Channel, service: str) -> BaseException | None:
    try:
        wait_for_ready_health(channel, service, timeout=30)
        return None
    except BaseException as error:  # handed to the test thread
        return error


def test_wait_for_ready_health_times_out_when_nothing_listens() -> None:
    channel = open_channel(f"127.0.0.1:{free_port()}")
    try:
        with pytest.raises(TimeoutError, match="did not report SERVING"):
            wait_for_ready_health(channel, timeout=0.5)
    finally:
        channel.close()


async def test_health_helpers_need_no_token_and_refuse_unknown_services(server: ServiceServer) -> None:
    assert await asyncio.to_thread(_check, server.address) is HealthStatus.SERVING
    async with open_aio_channel(server.address) as channel:
        await wait_for_ready_health_async(channel, SERVICE, timeout=20)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await wait_for_ready_health_async(channel, "simulacra.nope.v1.NopeService", timeout=20)
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def _check(address: str) -> HealthStatus:
    channel = open_channel(address)
    try:
        return check_health(channel, timeout=20)
    finally:
        channel.close()


async def test_errors_without_error_info_keep_code_and_message(tmp_path: Path) -> None:
    # A server outside Simulacra's bootstrap: its errors carry no ErrorInfo, or a garbled one.
    async def plain(request: Tensor, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "plain message")

    async def garbled(request: Tensor, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "garbled", (("grpc-status-details-bin", b"\xff\x00garbage"),))

    handler = grpc.method_handlers_generic_handler(
        "simulacra.test.v1.PlainService",
        {
            "Plain": grpc.unary_unary_rpc_method_handler(plain, Tensor.FromString, Tensor.SerializeToString),
            "Garbled": grpc.unary_unary_rpc_method_handler(garbled, Tensor.FromString, Tensor.SerializeToString),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with open_aio_channel(f"127.0.0.1:{port}") as channel:
            for method, message in (("Plain", "plain message"), ("Garbled", "garbled")):
                call = channel.unary_unary(f"/simulacra.test.v1.PlainService/{method}", Tensor.SerializeToString, Tensor.FromString)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await asyncio.wait_for(call(Tensor()), 20)
                error = from_rpc_error(caught.value)
                assert isinstance(error, InvalidArgumentError)
                assert (error.message, error.reason, error.domain, error.metadata) == (message, "", "", {})
    finally:
        await server.stop(0)


async def test_an_unreachable_server_gives_unavailable() -> None:
    async with open_aio_channel(f"127.0.0.1:{free_port()}") as channel:
        call = channel.unary_unary("/" + SERVICE + "/Echo", Tensor.SerializeToString, Tensor.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call(Tensor(), timeout=5), 20)
    error = from_rpc_error(caught.value)
    assert isinstance(error, UnavailableError) and isinstance(error, SimulacraRpcError)
    assert "UNAVAILABLE" in str(error)
