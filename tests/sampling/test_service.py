"""SamplingService on a real server: samples, determinism across calls, streams, generators, errors."""

from __future__ import annotations

import asyncio
import io

import grpc
import numpy as np
import pytest
from PIL import Image

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api
from tests.sampling.conftest import Sampling, rpc_error
from tests.sampling.generators import PLAIN, SCENES

_NP = {common_pb2.DATA_TYPE_FLOAT32: np.float32, common_pb2.DATA_TYPE_UINT8: np.uint8, common_pb2.DATA_TYPE_INT64: np.int64}


def array(tensor: common_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype=_NP[tensor.dtype]).reshape(tuple(tensor.shape))


def stream_arrays(responses: list[api.StreamSamplesResponse]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    samples = np.concatenate([array(r.samples) for r in responses])
    labels = np.concatenate([np.array(r.labels, np.int64) for r in responses])
    indices = [i for r in responses for i in r.indices]
    return samples, labels, indices


async def test_sample_returns_what_was_asked_with_its_lineage(sampling_any: Sampling) -> None:
    sampling = sampling_any
    sampling.register("digits")
    response = await sampling.sample("models/digits/versions/latest", 5, seed=3, start_index=10)
    assert response.generator == "models/digits/versions/1"
    samples = array(response.samples)
    assert samples.shape == (5, 1, 8, 8) and samples.dtype == np.float32 and np.abs(samples).max() <= 1
    assert list(response.indices) == list(range(10, 15)) and response.seed == 3 and not response.HasField("truncation")
    assert len(response.labels) == 5 and all(0 <= label < 10 for label in response.labels)

    as_uint8 = await sampling.sample("models/digits/versions/1", 5, seed=3, start_index=10, format=gen_pb.SAMPLE_FORMAT_UINT8)
    expected = np.clip(np.rint((samples + np.float32(1)) * np.float32(127.5)), 0, 255).astype(np.uint8)
    assert np.array_equal(array(as_uint8.samples), expected)
    nhwc = await sampling.sample(
        "models/digits/versions/1", 5, seed=3, start_index=10, format=gen_pb.SAMPLE_FORMAT_UINT8, layout=gen_pb.SAMPLE_LAYOUT_NHWC
    )
    assert np.array_equal(array(nhwc.samples), expected.transpose(0, 2, 3, 1))
    pngs = await sampling.sample("models/digits/versions/1", 5, seed=3, start_index=10, format=gen_pb.SAMPLE_FORMAT_PNG)
    assert not pngs.HasField("samples") and len(pngs.images) == 5
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(pngs.images[2]))), expected[2, 0])


async def test_explicit_labels_class_mix_attributes_and_truncation(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.register("scenes", SCENES)
    labelled = await sampling.sample("models/digits/versions/1", 3, seed=1, labels=[7, 0, 7])
    assert list(labelled.labels) == [7, 0, 7]
    mixed = await sampling.sample("models/digits/versions/1", 64, seed=1, class_mix=gen_pb.ClassMix(weights={2: 1.0, 5: 1.0}))
    assert set(mixed.labels) == {2, 5}
    plain = await sampling.sample("models/digits/versions/1", 64, seed=1)
    cut = await sampling.sample("models/digits/versions/1", 64, seed=1, truncation=0.5)
    assert cut.truncation == pytest.approx(0.5) and not np.array_equal(array(cut.samples), array(plain.samples))
    assert list(cut.labels) == list(plain.labels)

    scenes = await sampling.sample(
        "models/scenes/versions/1", 32, seed=2,
        attribute_mix=[gen_pb.AttributeMix(name="weather", weights={"fog": 1.0})],
    )
    attributes = array(scenes.attributes)
    assert attributes.shape == (32, 2) and set(attributes[:, 0]) == {1} and set(attributes[:, 1]) <= {0, 1}
    assert array(scenes.samples).shape == (32, 3, 8, 8)


async def test_samples_are_bit_identical_across_batches_transports_and_a_restart(sampling: Sampling) -> None:
    sampling.register("digits")
    name = "models/digits/versions/1"
    whole = await sampling.sample(name, 40, seed=11, start_index=100)
    reference = array(whole.samples)
    ones = await asyncio.gather(*(sampling.sample(name, 1, seed=11, start_index=100 + i) for i in range(40)))  # batched together
    assert np.array_equal(np.concatenate([array(r.samples) for r in ones]), reference)
    assert [r.labels[0] for r in ones] == list(whole.labels)
    pieces = [await sampling.sample(name, n, seed=11, start_index=100 + s) for s, n in ((0, 7), (7, 30), (37, 3))]
    assert np.array_equal(np.concatenate([array(r.samples) for r in pieces]), reference)
    for batch_size in (1, 6, 40):
        samples, labels, indices = stream_arrays(await sampling.stream(name, seed=11, start_index=100, count=40, batch_size=batch_size))
        assert np.array_equal(samples, reference) and list(labels) == list(whole.labels) and indices == list(range(100, 140))
    await sampling.restart()
    again = await sampling.sample("models/digits/versions/latest", 40, seed=11, start_index=100)
    assert np.array_equal(array(again.samples), reference)
    other_seed = await sampling.sample(name, 40, seed=12, start_index=100)
    assert not np.array_equal(array(other_seed.samples), reference)


async def test_a_resumed_stream_equals_the_uninterrupted_one(sampling: Sampling) -> None:
    sampling.register("digits")
    name = "models/digits/versions/1"
    full = await sampling.stream(name, seed=5, count=50, batch_size=8, format=gen_pb.SAMPLE_FORMAT_UINT8)
    call = sampling.stub.StreamSamples(api.StreamSamplesRequest(generator=name, seed=5, count=50, batch_size=8, format=gen_pb.SAMPLE_FORMAT_UINT8))
    received = []
    async for response in call:
        received.append(response)
        if len(received) == 3:
            call.cancel()
            break
    last = received[-1].indices[-1]
    rest = await sampling.stream(name, seed=5, start_index=last + 1, count=50 - (last + 1), batch_size=5, format=gen_pb.SAMPLE_FORMAT_UINT8)
    resumed, full_arrays = stream_arrays(received + rest), stream_arrays(full)
    assert resumed[2] == full_arrays[2] == list(range(50))
    assert np.array_equal(resumed[0], full_arrays[0]) and np.array_equal(resumed[1], full_arrays[1])


async def test_shards_partition_the_index_set(sampling: Sampling) -> None:
    sampling.register("digits")
    name = "models/digits/versions/1"
    reference = await sampling.sample(name, 60, seed=9, start_index=3)
    seen: dict[int, np.ndarray] = {}
    for shard in range(4):
        responses = await sampling.stream(name, seed=9, start_index=3, count=15, batch_size=4, shard_index=shard, shard_count=4)
        samples, _, indices = stream_arrays(responses)
        assert all(i % 4 == shard for i in indices) and indices == sorted(indices) and len(indices) == 15
        assert responses[0].start_index == indices[0]
        for i, sample in zip(indices, samples):
            assert i not in seen
            seen[i] = sample
    assert sorted(seen) == list(range(3, 63))
    assert np.array_equal(np.stack([seen[i] for i in range(3, 63)]), array(reference.samples))


async def test_an_endless_stream_runs_until_the_client_stops(sampling: Sampling) -> None:
    sampling.register("digits")
    call = sampling.stub.StreamSamples(api.StreamSamplesRequest(generator="models/digits/versions/1", seed=1, batch_size=16))
    got = 0
    async for response in call:
        got += len(response.indices)
        if got >= 200:
            break
    call.cancel()
    assert got >= 200


async def test_generators_are_listed_loaded_and_unloaded(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.register("digits", weights_seed=1)
    sampling.register("plain", PLAIN)
    sampling.registry.set_alias("digits", "production", 1)
    listed = await sampling.stub.ListGenerators(api.ListGeneratorsRequest())
    assert [g.name for g in listed.generators] == ["models/digits/versions/2", "models/digits/versions/1", "models/plain/versions/1"]
    assert all(g.state == gen_pb.GENERATOR_STATE_UNLOADED for g in listed.generators)
    assert list(listed.generators[1].aliases) == ["production"]
    first = await sampling.stub.ListGenerators(api.ListGeneratorsRequest(page_size=2))
    second = await sampling.stub.ListGenerators(api.ListGeneratorsRequest(page_size=2, page_token=first.next_page_token))
    assert [g.name for g in [*first.generators, *second.generators]] == [g.name for g in listed.generators] and not second.next_page_token
    only = await sampling.stub.ListGenerators(api.ListGeneratorsRequest(model="models/plain"))
    assert [g.name for g in only.generators] == ["models/plain/versions/1"]

    loaded = (await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name="models/digits/versions/production"))).generator
    assert loaded.name == "models/digits/versions/1" and loaded.state == gen_pb.GENERATOR_STATE_LOADED
    assert loaded.device == "CPUExecutionProvider" and loaded.batching.max_batch_size == 32 and loaded.latent_dim == 16
    assert list(loaded.output_shape) == [1, 8, 8] and loaded.num_classes == 10 and list(loaded.category_ids) == list(range(1, 11))
    assert loaded.onnx_sha256 == sampling.registry.get_version("digits", 1).onnx_sha256
    only_loaded = await sampling.stub.ListGenerators(api.ListGeneratorsRequest(loaded_only=True))
    assert [g.name for g in only_loaded.generators] == ["models/digits/versions/1"]
    got = (await sampling.stub.GetGenerator(api.GetGeneratorRequest(name="models/digits/versions/latest"))).generator
    assert got.name == "models/digits/versions/2" and got.state == gen_pb.GENERATOR_STATE_UNLOADED
    unloaded = (await sampling.stub.UnloadGenerator(api.UnloadGeneratorRequest(name="models/digits/versions/production"))).generator
    assert unloaded.name == "models/digits/versions/1" and unloaded.state == gen_pb.GENERATOR_STATE_UNLOADED
    assert not (await sampling.stub.ListGenerators(api.ListGeneratorsRequest(loaded_only=True))).generators


async def test_hot_reload_under_concurrent_streams_drops_nothing(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.register("digits", weights_seed=1)
    sampling.registry.set_alias("digits", "production", 1)
    alias = "models/digits/versions/production"
    await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name=alias))
    expected_v1 = array((await sampling.sample("models/digits/versions/1", 60, seed=4)).samples)

    started = asyncio.Semaphore(0)

    async def one_stream(k: int) -> list[api.StreamSamplesResponse]:
        call = sampling.stub.StreamSamples(api.StreamSamplesRequest(generator=alias, seed=4, count=60, batch_size=3, max_in_flight=1))
        responses = []
        async for response in call:
            responses.append(response)
            if len(responses) == 1:
                started.release()
        return responses

    streams = [asyncio.ensure_future(one_stream(k)) for k in range(16)]
    for _ in range(16):  # every stream is under way (19 of its 20 messages still to come) before the alias moves
        await asyncio.wait_for(started.acquire(), 30)
    sampling.registry.set_alias("digits", "production", 2)
    expected_v2 = array((await sampling.sample("models/digits/versions/2", 60, seed=4)).samples)

    async def unary_during_swap() -> list[api.SampleResponse]:
        return [await sampling.sample(alias, 1, seed=4, start_index=i) for i in range(20)]

    unary = asyncio.ensure_future(unary_during_swap())
    reloaded = (await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name=alias))).generator
    assert reloaded.name == "models/digits/versions/2"
    after = await sampling.sample(alias, 2, seed=4)
    results = await asyncio.gather(*streams)
    for responses in results:
        samples, _, indices = stream_arrays(responses)
        assert indices == list(range(60))
        assert {r.generator for r in responses} == {"models/digits/versions/1"}
        assert np.array_equal(samples, expected_v1)
    for i, response in enumerate(await unary):  # none failed; each is whole on one version
        expected = {"models/digits/versions/1": expected_v1, "models/digits/versions/2": expected_v2}[response.generator]
        assert np.array_equal(array(response.samples)[0], expected[i])
    assert after.generator == "models/digits/versions/2"
    assert not np.array_equal(array(after.samples), expected_v1[:2])


async def test_a_failed_load_keeps_the_previous_version_serving(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.registry.set_alias("digits", "production", 1)
    alias = "models/digits/versions/production"
    await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name=alias))
    broken = sampling.register("digits", weights_seed=1)
    sampling.registry.objects.put(broken.onnx_key, b"corrupted bytes")  # the object is valid, its sha256 is not the registered one
    sampling.registry.set_alias("digits", "production", 2)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await sampling.stub.LoadGenerator(api.LoadGeneratorRequest(name=alias))
    assert rpc_error(raised.value).code is grpc.StatusCode.DATA_LOSS
    assert rpc_error(raised.value).reason == "ONNX_CHECKSUM_MISMATCH"
    still = await sampling.sample(alias, 2, seed=1)
    assert still.generator == "models/digits/versions/1"
    failed = (await sampling.stub.GetGenerator(api.GetGeneratorRequest(name="models/digits/versions/2"))).generator
    assert failed.state == gen_pb.GENERATOR_STATE_FAILED and failed.load_error.reason == "ONNX_CHECKSUM_MISMATCH"


BAD_SAMPLES = [
    ({"generator": "models/nope/versions/1", "count": 1}, grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
    ({"generator": "models/digits/versions/7", "count": 1}, grpc.StatusCode.NOT_FOUND, "MODEL_VERSION_NOT_FOUND"),
    ({"generator": "models/digits/versions/staging", "count": 1}, grpc.StatusCode.NOT_FOUND, "ALIAS_NOT_FOUND"),
    ({"generator": "models/digits/versions/Bad_Alias", "count": 1}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ALIAS"),
    ({"generator": "digits", "count": 1}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL_VERSION_NAME"),
    ({"generator": "models/digits/versions/1", "count": 0}, grpc.StatusCode.OUT_OF_RANGE, "COUNT_OUT_OF_RANGE"),
    ({"generator": "models/digits/versions/1", "count": 257}, grpc.StatusCode.OUT_OF_RANGE, "COUNT_OUT_OF_RANGE"),
    ({"generator": "models/digits/versions/1", "count": 2, "labels": [1, 10]}, grpc.StatusCode.INVALID_ARGUMENT, "LABEL_OUT_OF_RANGE"),
    ({"generator": "models/digits/versions/1", "count": 2, "labels": [1]}, grpc.StatusCode.INVALID_ARGUMENT, "LABEL_COUNT_MISMATCH"),
    ({"generator": "models/plain/versions/1", "count": 1, "labels": [0]}, grpc.StatusCode.INVALID_ARGUMENT, "GENERATOR_UNCONDITIONAL"),
    ({"generator": "models/digits/versions/1", "count": 1, "truncation": -1.0}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TRUNCATION"),
    ({"generator": "models/digits/versions/1", "count": 1, "class_mix": gen_pb.ClassMix(weights={3: 0.0})}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CLASS_MIX"),
    ({"generator": "models/digits/versions/1", "count": 1, "class_mix": gen_pb.ClassMix(weights={12: 1.0})}, grpc.StatusCode.INVALID_ARGUMENT, "LABEL_OUT_OF_RANGE"),
    ({"generator": "models/digits/versions/1", "count": 1, "attribute_mix": [gen_pb.AttributeMix(name="weather")]}, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_ATTRIBUTE"),
    ({"generator": "models/scenes/versions/1", "count": 1, "attribute_mix": [gen_pb.AttributeMix(name="weather", weights={"snow": 1.0})]}, grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_ATTRIBUTE_VALUE"),
    ({"generator": "models/digits/versions/1", "count": 1, "start_index": 2**64 - 1}, None, None),
    ({"generator": "models/digits/versions/1", "count": 2, "start_index": 2**64 - 1}, grpc.StatusCode.OUT_OF_RANGE, "INDEX_OUT_OF_RANGE"),
    ({"generator": "models/digits/versions/1", "count": 1, "format": 9}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FORMAT"),
]


async def test_bad_sample_requests_get_precise_statuses(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.register("plain", PLAIN)
    sampling.register("scenes", SCENES)
    for fields, code, reason in BAD_SAMPLES:
        if code is None:
            await sampling.stub.Sample(api.SampleRequest(**fields), timeout=30)
            continue
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await sampling.stub.Sample(api.SampleRequest(**fields), timeout=30)
        error = rpc_error(raised.value)
        assert (error.code, error.reason) == (code, reason), fields
        assert error.domain == "sampling.simulacra.dev"


BAD_STREAMS = [
    ({"batch_size": 300}, grpc.StatusCode.OUT_OF_RANGE, "COUNT_OUT_OF_RANGE"),
    ({"shard_index": 4, "shard_count": 4}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHARD"),
    ({"shard_index": 1}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHARD"),
    ({"max_in_flight": 1000}, grpc.StatusCode.OUT_OF_RANGE, "MAX_IN_FLIGHT_OUT_OF_RANGE"),
    ({"truncation": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TRUNCATION"),
    ({"generator": "models/digits/versions/9"}, grpc.StatusCode.NOT_FOUND, "MODEL_VERSION_NOT_FOUND"),
    ({"start_index": 2**64 - 2, "count": 5}, grpc.StatusCode.OUT_OF_RANGE, "INDEX_OUT_OF_RANGE"),
]


async def test_bad_stream_requests_get_precise_statuses(sampling: Sampling) -> None:
    sampling.register("digits")
    for fields, code, reason in BAD_STREAMS:
        request = {"generator": "models/digits/versions/1", "count": 4, **fields}
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await sampling.stream(**request)  # type: ignore[arg-type]
        error = rpc_error(raised.value)
        assert (error.code, error.reason) == (code, reason), fields
