#!/usr/bin/env python3
"""Where the time of one unary ``Sample`` call of one sample goes (part (e) of bench/sampling.py).

    python bench/sampling.py --breakdown-only         # only this part (about a minute)

Three kinds of figure, all p50 over many calls, in the same run:

- the floor: bare echo servers, each in its own process, that answer an RPC with canned bytes of
  exactly the size of a real ``SampleResponse``, asked with the bytes of a real ``SampleRequest``
  by the same synchronous client as part (b): Python gRPC's own round trip (client stub, C core,
  loopback, server dispatch), with no protobuf and none of our code. Two servers: ``grpc.aio``
  (what Simulacra runs) and the synchronous ``grpc.server`` with a thread pool, so that the floor
  is stated for Python gRPC servers, not only for aio. The servers run side by side and are called
  in turn, so that every figure sees the same machine;
- the aio echo with a pass-through interceptor (grpc.aio's interceptor machinery alone) and with
  core's ``ServerInterceptor`` (auth off, error mapping, request log, RPC metrics): the cost every
  Simulacra service pays per RPC;
- each stage of our handler, timed in this process on the real classes (the pool, the batcher
  with its worker thread, the ONNX Runtime session, the encoder, the protobuf conversion), in the
  order ``SamplingServicer.Sample`` runs them, and the whole handler called directly.

The unary p50 of part (b) minus the floor is the part that is not Python gRPC's; the stages say
which of it is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "services"), str(ROOT / "clients" / "python")]

import grpc  # noqa: E402

from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb  # noqa: E402
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api  # noqa: E402

ECHO_METHOD = "/bench.Echo/Echo"
ORT_STAGE = "ONNX Runtime run, batch 1"


# ---- the echo server (its own process) ----------------------------------------------------------


ECHO_SERVERS = {
    "aio": "bare grpc.aio echo",
    "sync": "bare synchronous grpc.server (thread pool) echo",
    "aio+passthrough": "grpc.aio echo with a pass-through interceptor",
    "aio+core": "grpc.aio echo with core's ServerInterceptor",
}
"""The echo servers of part (e), by the name ``echo`` takes on its command line."""


def _echo_handlers(answer: bytes, echo: Callable[..., Any]) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler("bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})


def _serve_sync_echo(port: int, response_bytes: int) -> None:
    """A synchronous ``grpc.server`` with a thread pool, the other way Python gRPC serves."""
    from concurrent.futures import ThreadPoolExecutor

    answer = bytes(response_bytes)
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((_echo_handlers(answer, lambda request, context: answer),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


class _PassThrough(grpc.aio.ServerInterceptor):
    """An interceptor that does nothing: the price of grpc.aio's interceptor machinery alone."""

    async def intercept_service(self, continuation: Callable[..., Any], handler_call_details: grpc.HandlerCallDetails) -> Any:
        return await continuation(handler_call_details)


async def _serve_echo(port: int, response_bytes: int, mode: str) -> None:
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if mode == "aio+core":
        from simulacra_services.core.interceptors import ErrorMapper, RequestLog, ServerInterceptor
        from simulacra_services.core.metrics import RpcMetrics

        interceptors.append(
            ServerInterceptor(errors=ErrorMapper("bench.simulacra.dev", "echo"), request_log=RequestLog("echo"), metrics=RpcMetrics())
        )
    elif mode == "aio+passthrough":
        interceptors.append(_PassThrough())
    answer = bytes(response_bytes)

    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return answer

    server = grpc.aio.server(interceptors=interceptors)
    server.add_generic_rpc_handlers((_echo_handlers(answer, echo),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU seconds so far of each thread of a process, keyed "name/tid" (Linux /proc)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            stat = (task / "stat").read_text()
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat.rpartition(")")[2].split()
            out[f"{name}/{task.name}"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` now, children of all its threads, recursively (Linux /proc)."""
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return out
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            out += [child, *descendants(child)]
    return out


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and of the processes under it that are alive now (a child that exits
    inside a measured window takes its CPU with it: count only over windows where none exits)."""
    total = 0.0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += process_cpu_seconds(p)
    return total


def echo_round_trips(request: bytes, response_bytes: int, calls: int) -> dict[str, tuple[list[float], float]]:
    """For each echo server of ``ECHO_SERVERS``, each in its own process: the seconds of each
    synchronous call, and the server's CPU seconds per call. The servers run side by side and are
    called in turn, so that all see the same machine."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "services"), str(ROOT / "clients" / "python")])}
    ports = {mode: _free_port() for mode in ECHO_SERVERS}
    processes = {mode: subprocess.Popen([sys.executable, __file__, "echo", str(port), str(response_bytes), mode], env=env) for mode, port in ports.items()}
    try:
        with contextlib.ExitStack() as stack:
            stubs = {}
            for mode, port in ports.items():
                channel = stack.enter_context(grpc.insecure_channel(f"127.0.0.1:{port}"))
                grpc.channel_ready_future(channel).result(timeout=60)
                stubs[mode] = channel.unary_unary(ECHO_METHOD)
            for _ in range(50):
                for call in stubs.values():
                    call(request)
            walls: dict[str, list[float]] = {mode: [] for mode in stubs}
            cpu = {mode: process_cpu_seconds(processes[mode].pid) for mode in stubs}
            for _ in range(calls):
                for mode, call in stubs.items():
                    started = time.perf_counter()
                    call(request)
                    walls[mode].append(time.perf_counter() - started)
            return {mode: (walls[mode], (process_cpu_seconds(processes[mode].pid) - cpu[mode]) / calls) for mode in stubs}
    finally:
        for process in processes.values():
            process.terminate()
        for process in processes.values():
            process.wait(20)


# ---- our stages, in process ----------------------------------------------------------------------


def _p50_us(values: list[float]) -> float:
    return float(np.median(values)) * 1e6


def timed(fn: Callable[[], Any], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


async def atimed(fn: Callable[[], Any], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - started)
    return out


async def _stages(data_dir: Path, model: str, calls: int) -> tuple[dict[str, float], int, int]:
    """p50 µs of each stage of ``SamplingServicer.Sample`` for one uint8 sample, and the message sizes."""
    from simulacra_services.core.registry import ModelRegistry
    from simulacra_services.core.storage import LocalObjectStore
    from simulacra_services.sampling.api import convert
    from simulacra_services.sampling.api.servicer import SamplingServicer
    from simulacra_services.sampling.config import SamplingConfig
    from simulacra_services.sampling.runtime import encode
    from simulacra_services.sampling.runtime.batcher import DynamicBatcher
    from simulacra_services.sampling.serving.metrics import SamplingMetrics
    from simulacra_services.sampling.serving.pool import GeneratorPool
    from simulacra_services.sampling.serving.sampler import draw_inputs, produce
    from simulacra_services.sampling.serving.spec import check_count, check_spec, shard_indices

    config = SamplingConfig()
    pool = GeneratorPool(ModelRegistry(LocalObjectStore(data_dir / "objects")), config, SamplingMetrics())
    servicer = SamplingServicer(pool, config, 64 * 1024 * 1024, balancer=None)  # type: ignore[arg-type]
    name = f"models/{model}/versions/1"

    def request_bytes(i: int = 0) -> bytes:
        return api.SampleRequest(generator=name, count=1, seed=1, start_index=i, format=gen_pb.SAMPLE_FORMAT_UINT8).SerializeToString()

    wire = request_bytes()
    response = await servicer.Sample(api.SampleRequest.FromString(wire), None)  # type: ignore[arg-type]
    response_wire = response.SerializeToString()
    generator = await pool.acquire(name)
    generator.release_lease()
    request = api.SampleRequest.FromString(wire)
    spec = convert.spec_of(request)
    checked = check_spec(spec, generator.signature)
    indices = shard_indices(0, 0, 1, 1)
    z, labels, attrs = draw_inputs(generator, checked, indices, None)
    raw = generator.session.run(z, labels, attrs)

    async def leased_checks() -> None:
        s = convert.spec_of(request)
        check_count(request.count, config.max_sample_count)
        shard_indices(request.start_index, 0, 1, 1)
        async with pool.lease(request.generator) as g:
            check_spec(s, g.signature)
            servicer._check_size(1, g.signature, s.format)

    async def handler() -> None:
        await servicer.Sample(api.SampleRequest.FromString(wire), None)  # type: ignore[arg-type]

    hop = DynamicBatcher(lambda *_: raw.copy(), config.batching)

    async def thread_hop() -> None:
        await hop.infer(z, labels, attrs)

    batch = await produce(generator, checked, indices)
    stages: dict[str, list[float]] = {
        "client: build and serialize SampleRequest": timed(request_bytes, calls),
        "server: parse SampleRequest": timed(lambda: api.SampleRequest.FromString(wire), calls),
        "handler: spec and limit checks, generator lease": await atimed(leased_checks, calls),
        "handler: noise (Philox latents and label)": timed(lambda: draw_inputs(generator, checked, indices, None), calls),
        "batcher: direct path and thread hop (inference excluded)": await atimed(thread_hop, calls),
        ORT_STAGE: timed(lambda: generator.session.run(z, labels, attrs), calls),
        "encode: uint8": timed(lambda: encode.encode(raw.copy(), spec.format, spec.layout), calls),
        "response: lineage, SampleResponse, serialize": timed(lambda: convert.sample_response(batch, spec).SerializeToString(), calls),
        "metrics: batch and request counters, histograms": timed(lambda: generator._observe(1, [0.0], 0.001) or servicer.metrics.observe_request(name, 1, 0.001), calls),
        "client: parse SampleResponse": timed(lambda: api.SampleResponse.FromString(response_wire), calls),
    }
    await hop.close()
    figures = {k: _p50_us(v) for k, v in stages.items()}
    whole, whole_cpu = await _loop_timed(handler, calls)
    run = generator.batcher._run  # the handler again, ONNX Runtime replaced by a copy of its answer: our part alone
    generator.batcher._run = lambda *_: raw.copy()
    alone, alone_cpu = await _loop_timed(handler, calls)
    generator.batcher._run = run
    await pool.close()
    figures["(whole handler, called in process: wall)"] = _p50_us(whole)
    figures["(whole handler: event-loop thread CPU)"] = whole_cpu * 1e6
    figures["(handler with inference replaced by a copy: wall)"] = _p50_us(alone)
    figures["(handler with inference replaced by a copy: event-loop thread CPU)"] = alone_cpu * 1e6
    return figures, len(wire), len(response_wire)


async def _loop_timed(fn: Callable[[], Any], calls: int) -> tuple[list[float], float]:
    """Wall seconds of each call, and CPU seconds per call of the event-loop thread."""
    cpu = time.thread_time()
    wall = await atimed(fn, calls)
    return wall, (time.thread_time() - cpu) / calls


def breakdown(data_dir: Path, model: str, unary: dict[str, float] | None, calls: int) -> dict[str, Any]:
    """Stages of our handler, the floor of Python gRPC, and the e2e figure they add up to."""
    stages, request_size, response_size = asyncio.run(_stages(data_dir, model, calls))
    request = api.SampleRequest(
        generator=f"models/{model}/versions/1", count=1, seed=1, format=gen_pb.SAMPLE_FORMAT_UINT8
    ).SerializeToString()
    request = request + bytes(max(0, request_size - len(request)))
    echoes = echo_round_trips(request, response_size, calls)
    floor = _p50_us(echoes["aio"][0])
    inference = stages[ORT_STAGE]
    ours = sum(v for k, v in stages.items() if not k.startswith("(") and k != ORT_STAGE)
    out: dict[str, Any] = {
        "request_bytes": request_size,
        "response_bytes": response_size,
        "echo_p50_us": {mode: _p50_us(wall) for mode, (wall, _) in echoes.items()},
        "echo_server_cpu_per_call_us": {mode: cpu * 1e6 for mode, (_, cpu) in echoes.items()},
        "grpc_echo_floor_p50_us": floor,
        "grpc_echo_server_cpu_per_call_us": echoes["aio"][1] * 1e6,
        "sync_echo_floor_p50_us": _p50_us(echoes["sync"][0]),
        "sync_echo_server_cpu_per_call_us": echoes["sync"][1] * 1e6,
        "aio_interceptor_machinery_p50_us": _p50_us(echoes["aio+passthrough"][0]) - floor,
        "core_interceptor_p50_us": _p50_us(echoes["aio+core"][0]) - floor,
        "core_interceptor_server_cpu_per_call_us": (echoes["aio+core"][1] - echoes["aio"][1]) * 1e6,
        "stages_p50_us": stages,
        "ours_p50_us": ours,
    }
    if unary is not None:
        out["unary_p50_us"] = unary["p50_us"]
        out["overhead_p50_us"] = unary["p50_us"] - inference
        out["overhead_above_floor_p50_us"] = unary["p50_us"] - inference - floor
        out["unexplained_p50_us"] = unary["p50_us"] - inference - _p50_us(echoes["aio+core"][0]) - ours
        out["unary_server_cpu_per_call_us"] = unary["server_cpu_us"]
        out["unary_server_cpu_above_echo_us"] = unary["server_cpu_us"] - echoes["aio"][1] * 1e6
    return out


def print_breakdown(model: str, b: dict[str, Any]) -> None:
    line = "    {:66s} {:8.0f}"
    print(f"  {model}: one uint8 sample, request {b['request_bytes']} B, response {b['response_bytes']} B (p50, µs)")
    for mode, title in ECHO_SERVERS.items():
        print(line.format(f"{title} round trip, same bytes", b["echo_p50_us"][mode])
              + f"   (server CPU/call {b['echo_server_cpu_per_call_us'][mode]:.0f})")
    print(line.format("  grpc.aio's interceptor machinery (pass-through minus bare)", b["aio_interceptor_machinery_p50_us"]))
    print(line.format("  core ServerInterceptor (echo with it minus bare)", b["core_interceptor_p50_us"])
          + f"   (server CPU/call {b['core_interceptor_server_cpu_per_call_us']:.0f})")
    for stage, us in b["stages_p50_us"].items():
        print(line.format(stage, us))
    print(line.format("ours: the stages above but ONNX Runtime", b["ours_p50_us"]))
    if "unary_p50_us" in b:
        print(line.format("unary Sample p50 (part b), service in its own process", b["unary_p50_us"])
              + f"   (service CPU/call {b['unary_server_cpu_per_call_us']:.0f}, {b['unary_server_cpu_above_echo_us']:.0f} above the echo server)")
        print(line.format("  overhead: minus ONNX Runtime batch 1", b["overhead_p50_us"]))
        print(line.format("  overhead above the Python gRPC floor", b["overhead_above_floor_p50_us"]))
        print(line.format("  left unexplained by floor + interceptor + ours", b["unexplained_p50_us"]))


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "echo":
    if sys.argv[4] == "sync":
        _serve_sync_echo(int(sys.argv[2]), int(sys.argv[3]))
    else:
        asyncio.run(_serve_echo(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
