"""Operating the sampling service: metrics, registry polling, load options, limits, flow control."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from simulacra_client.api.inference import grpc_service_pb2 as inference_pb
from simulacra_client.api.inference import grpc_service_pb2_grpc as inference_grpc
from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api
from simulacra_services.sampling.runtime.batcher import BatchingPolicy
from simulacra_services.sampling.runtime.session import gpu_present
from tests.sampling.conftest import SMALL, Sampling, local_settings, rpc_error, started
from tests.sampling.generators import PLAIN


async def test_metrics_per_generator_on_the_metrics_endpoint(tmp_path: Path) -> None:
    from simulacra_services.core.registry import ModelRegistry
    from simulacra_services.core.storage import open_object_store

    settings = local_settings(tmp_path)
    objects = open_object_store(settings)
    service = Sampling(settings, SMALL, ModelRegistry(objects), metrics_port=0)
    await service.start()
    try:
        service.register("digits")
        await asyncio.gather(*(service.sample("models/digits/versions/1", 2, seed=i) for i in range(10)))
        await service.stream("models/digits/versions/1", count=16, batch_size=8)
        with pytest.raises(grpc.aio.AioRpcError):
            await service.sample("models/digits/versions/1", 2, labels=[1, 99])
        url = f"http://127.0.0.1:{service.server.metrics_port}/metrics"  # type: ignore[union-attr]
        text = (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())).decode()
    finally:
        await service.stop()
        objects.close()
    label = 'generator="models/digits/versions/1"'
    values = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line and not line.startswith("#")}
    assert values[f"simulacra_sampling_requests_total{{{label}}}"] == 12
    assert values[f"simulacra_sampling_samples_total{{{label}}}"] == 36
    assert values[f'simulacra_sampling_errors_total{{{label},reason="LABEL_OUT_OF_RANGE"}}'] == 1
    assert values[f"simulacra_sampling_loaded_versions{{{label}}}"] == 1
    batches = values[f"simulacra_sampling_batch_size_count{{{label}}}"]
    assert 1 <= batches < 12  # the ten concurrent calls shared inferences
    assert values[f"simulacra_sampling_batch_size_sum{{{label}}}"] == 36  # the warm-up at load is not served work
    assert f"simulacra_sampling_queue_seconds_bucket{{{label}" in text and "grpc_server_handled_total" in text


async def test_polling_moves_latest_to_a_new_version(tmp_path: Path) -> None:
    async for sampling in started(local_settings(tmp_path), replace(SMALL, poll_seconds=0.1)):
        sampling.register("digits")
        first = await sampling.sample("models/digits/versions/latest", 1, seed=1)
        assert first.generator == "models/digits/versions/1"
        sampling.register("digits", weights_seed=1)
        for _ in range(200):
            response = await sampling.sample("models/digits/versions/latest", 1, seed=1)
            if response.generator == "models/digits/versions/2":
                break
            await asyncio.sleep(0.05)
        assert response.generator == "models/digits/versions/2"
        loaded = await sampling.stub.ListGenerators(api.ListGeneratorsRequest(loaded_only=True))
        assert [g.name for g in loaded.generators] == ["models/digits/versions/2"]  # version 1 was freed


async def test_load_options_pin_and_provider(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.register("digits", weights_seed=1)
    sampling.registry.set_alias("digits", "production", 1)
    alias = "models/digits/versions/production"
    pinned = await sampling.stub.LoadGenerator(
        api.LoadGeneratorRequest(name=alias, options=gen_pb.LoadOptions(pin=True, provider="cpu", warmup_batch_size=4))
    )
    assert pinned.generator.pinned and pinned.generator.device == "CPUExecutionProvider"
    sampling.registry.set_alias("digits", "production", 2)
    await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name=alias))
    loaded = await sampling.stub.ListGenerators(api.ListGeneratorsRequest(loaded_only=True))
    assert [g.name for g in loaded.generators] == ["models/digits/versions/2", "models/digits/versions/1"]  # pinned stays
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name=alias, options=gen_pb.LoadOptions(provider="quantum")))
    assert rpc_error(raised.value).reason == "UNKNOWN_PROVIDER"
    if gpu_present():  # the CPU path where there is no GPU; on a GPU machine CUDA must load
        cuda = await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name="models/digits/versions/1", options=gen_pb.LoadOptions(provider="cuda")))
        assert cuda.generator.device == "CUDAExecutionProvider"
    else:
        sampling.register("plain", PLAIN)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name="models/plain/versions/1", options=gen_pb.LoadOptions(provider="cuda")))
        error = rpc_error(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "PROVIDER_UNAVAILABLE")


async def test_stream_and_generator_limits(tmp_path: Path) -> None:
    async for sampling in started(local_settings(tmp_path), replace(SMALL, max_concurrent_streams=1, max_loaded_generators=1)):
        sampling.register("digits")
        sampling.register("plain", PLAIN)
        endless = sampling.stub.StreamSamples(api.StreamSamplesRequest(generator="models/digits/versions/1", batch_size=4))
        await endless.read()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await sampling.stream("models/digits/versions/1", count=4)
        assert rpc_error(raised.value).reason == "TOO_MANY_STREAMS"
        endless.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await sampling.sample("models/plain/versions/1", 1)
        error = rpc_error(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_GENERATORS")
        for _ in range(100):  # the cancelled stream ends on the server soon after
            try:
                await sampling.stream("models/digits/versions/1", count=4)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the cancelled stream still counts against the limit")


async def test_a_slow_client_bounds_what_the_server_computes(tmp_path: Path) -> None:
    config = replace(SMALL, max_sample_count=2048, batching=BatchingPolicy(max_batch_size=2048, max_queue_delay_us=0))
    async for sampling in started(local_settings(tmp_path), config):
        sampling.register("digits")
        batch = 2048  # 2048 x 1 x 8 x 8 float32 = 512 KiB a message: the transport window holds few
        call = sampling.stub.StreamSamples(
            api.StreamSamplesRequest(generator="models/digits/versions/1", batch_size=batch, max_in_flight=2)
        )
        await call.read()
        await asyncio.sleep(1.0)  # a slow client: the server may run ahead only as far as its bounds allow
        stats = await inference_grpc.GRPCInferenceServiceStub(sampling.channel).ModelStatistics(
            inference_pb.ModelStatisticsRequest(name="digits")
        )
        call.cancel()
        inferred = stats.model_stats[0].inference_count
        # read 1, 2 waiting in the queue, 1 being written, and what the HTTP/2 windows hold (a few MiB at most)
        assert inferred <= batch * (1 + 2 + 1 + 12)


async def test_cancelling_a_stream_stops_its_work_and_deadlines_are_honoured(sampling: Sampling) -> None:
    sampling.register("digits")
    statistics = inference_grpc.GRPCInferenceServiceStub(sampling.channel)

    async def inferred() -> int:
        stats = await statistics.ModelStatistics(inference_pb.ModelStatisticsRequest(name="digits"))
        return stats.model_stats[0].inference_count

    call = sampling.stub.StreamSamples(api.StreamSamplesRequest(generator="models/digits/versions/1", batch_size=32, max_in_flight=2))
    await call.read()
    await call.read()
    call.cancel()
    # Nothing runs for a stream nobody reads: once the cancellation has reached the server (and an
    # inference already running has finished) the count stops. An endless stream that ran on would
    # never hold still for half a second; a loaded machine only delays the moment it does.
    deadline = time.monotonic() + 20
    after_cancel = await inferred()
    while True:
        await asyncio.sleep(0.5)
        now = await inferred()
        if now == after_cancel:
            break
        assert time.monotonic() < deadline, f"inference went on after the stream was cancelled ({after_cancel} -> {now})"
        after_cancel = now

    limited = sampling.stub.StreamSamples(api.StreamSamplesRequest(generator="models/digits/versions/1", batch_size=32), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in limited:  # an endless stream: only the deadline ends it
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    response = await sampling.sample("models/digits/versions/1", 4, seed=1)  # the server is fine afterwards
    assert len(response.indices) == 4
