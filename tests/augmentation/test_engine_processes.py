"""AugmentStream with its engine in child processes (``engine_processes``): the same bytes as the worker
threads, the same errors, and a child that dies fails only its request."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from simulacra_client.api.annotation.v1 import annotation_pb2
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.api.augmentation.v1 import pipeline_pb2
from simulacra_client.augmentation import AugmentationClient, ItemInput
from simulacra_services.augmentation.api.engine_processes import stream_items
from simulacra_services.augmentation.service import DEFINITION
from tests.augmentation.conftest import stub
from tests.augmentation.test_service import PIPELINE, fingerprint, item, rpc_error, spec
from tests.harness import backend_settings, running_service


def requests(sizes: list[int], *, seed_policy: str = "", start: int = 0, first_items: int = 0) -> list[pb.AugmentStreamRequest]:
    data = {**PIPELINE, "seed_policy": seed_policy} if seed_policy else PIPELINE
    config = pb.AugmentStreamConfig(pipeline=pb.PipelineSource(pipeline_spec=json_format.ParseDict(data, pipeline_pb2.PipelineSpec())), seed=5, start_position=start)
    items = [item(i) for i in range(first_items + sum(sizes))]
    out = [pb.AugmentStreamRequest(config=config, items=items[:first_items])]
    at = first_items
    for size in sizes:
        out.append(pb.AugmentStreamRequest(items=items[at : at + size]))
        at += size
    return out


async def streamed(service, messages: list[pb.AugmentStreamRequest]) -> tuple[list, list[int]]:  # noqa: ANN001
    out, positions = [], []
    async for response in stub(service).AugmentStream(iter(messages)):
        out += fingerprint(response.items)
        positions.append(response.position)
    return out, positions


@pytest.mark.parametrize("seed_policy", ["", "SEED_POLICY_POSITION"])
async def test_engine_processes_give_the_threads_bytes(request, tmp_path, seed_policy: str) -> None:
    shapes = [dict(sizes=[1, 5, 20, 38]), dict(sizes=[7, 7], first_items=3), dict(sizes=[4, 9], start=11)]
    async with running_service(DEFINITION, backend_settings(request, tmp_path / "threads", "local"), workers=1) as threads:
        expected = [await streamed(threads, requests(seed_policy=seed_policy, **shape)) for shape in shapes]  # type: ignore[arg-type]
    async with running_service(DEFINITION, backend_settings(request, tmp_path / "processes", "local"), workers=1, engine_processes=2) as processes:
        found = [await streamed(processes, requests(seed_policy=seed_policy, **shape)) for shape in shapes]  # type: ignore[arg-type]
        # The SDK's stream (requests serialized by the SDK itself) too.
        inputs = [ItemInput(photo_of(i), f"datasets/d/items/{i}", [annotation_pb2.Annotation(id="b", category_id=2, box=annotation_pb2.Box(x=5, y=5, w=20, h=15))]) for i in range(20)]

        def sdk_stream() -> list:
            with AugmentationClient(processes.address) as client:
                return [(o.image.tobytes(), o.seed, o.applied_op_paths) for o in client.stream(inputs, PIPELINE, seed=5, batch_size=6)]

        sdk = await asyncio.to_thread(sdk_stream)  # a blocking client: off the loop the server runs on
    assert found == expected
    assert found[0][1] == [0, 1, 6, 26] and found[2][1] == [11, 15]
    if not seed_policy:  # keyed seeds: the same items give the same bytes whatever the request sizes
        assert [(f[2], f[1], f[3]) for f in expected[0][0][:20]] == sdk


def photo_of(index: int) -> np.ndarray:
    message = item(index).image
    return np.frombuffer(message.data, np.uint8).reshape(tuple(message.shape))


async def test_engine_processes_give_the_same_errors(request, tmp_path) -> None:
    bad = pb.AugmentItem(key="k", image={"dtype": "DATA_TYPE_UINT8", "shape": [4, 4, 3], "data": b"short"})
    async with running_service(DEFINITION, backend_settings(request, tmp_path, "local"), workers=1, engine_processes=1) as service:
        cases = [
            (requests([2]) + [pb.AugmentStreamRequest(items=[item(0), bad])], "INVALID_IMAGE", "items[1].image.data"),
            (requests([2]) + [pb.AugmentStreamRequest(items=[item(0), item(0)])], "DUPLICATE_ITEM_KEY", "items[1].key"),
            (requests([2]) + [pb.AugmentStreamRequest(config=pb.AugmentStreamConfig(pipeline=pb.PipelineSource(pipeline_spec=spec())))], "CONFIG_ALREADY_SENT", "config"),
            ([pb.AugmentStreamRequest(items=[item(0)])], "MISSING_CONFIG", "config"),
        ]
        for messages, reason, field in cases:
            received = []
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for response in stub(service).AugmentStream(iter(messages)):
                    received.append(response)
            error = rpc_error(raised.value)
            assert (error.code, error.reason, error.metadata.get("field")) == (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
            assert len(received) <= 1
        # Bytes that are no AugmentStreamRequest, after a good config.
        raw = service.channel.stream_stream("/simulacra.augmentation.v1.AugmentationService/AugmentStream", request_serializer=lambda b: b, response_deserializer=pb.AugmentStreamResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in raw(iter([requests([])[0].SerializeToString(), b"\x12\xff\xff\xff\x0f"])):
                pass
        assert rpc_error(raised.value).reason == "UNDECODABLE_REQUEST"
        # The service still answers.
        assert (await streamed(service, requests([3])))[1] == [0]


async def test_a_dead_engine_process_fails_its_request_and_is_replaced(request, tmp_path) -> None:
    before = {p.pid for p in multiprocessing.active_children()}
    async with running_service(DEFINITION, backend_settings(request, tmp_path, "local"), workers=1, engine_processes=1) as service:
        expected = await streamed(service, requests([4]))
        children = [p for p in multiprocessing.active_children() if p.pid not in before and p.name == "augmentation-engine"]
        assert len(children) == 1
        os.kill(children[0].pid, signal.SIGKILL)
        children[0].join(10)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await streamed(service, requests([4]))
        error = rpc_error(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.UNAVAILABLE, "ENGINE_PROCESS_EXITED")
        assert await streamed(service, requests([4])) == expected
    assert not [p for p in multiprocessing.active_children() if p.pid not in before and p.name == "augmentation-engine"]


def test_stream_items_counts_the_items_of_a_request() -> None:
    for messages in (requests([0]), requests([5]), requests([3], first_items=2)):
        for message in messages:
            assert stream_items(message.SerializeToString()) == len(message.items)
    assert stream_items(b"\x12\xff\xff\xff\x0f") == -1
    assert stream_items(b"\x12\x05ab") == -1
    assert stream_items(b"\x12" + b"\xff" * 64 + b"\x01") == -1  # a length varint past 10 bytes


async def test_a_stream_on_the_torch_path_stays_on_the_worker_threads(request, tmp_path) -> None:
    """device="cpu" asks for the batched torch path, which the engine processes do not run: such a
    stream's requests (bytes here) are parsed and augmented on the worker threads as usual."""
    config = pb.AugmentStreamConfig(pipeline=pb.PipelineSource(pipeline_spec=spec()), seed=5, device="cpu")
    messages = [pb.AugmentStreamRequest(config=config), pb.AugmentStreamRequest(items=[item(i) for i in range(3)]), pb.AugmentStreamRequest(items=[item(3)])]
    async with running_service(DEFINITION, backend_settings(request, tmp_path / "threads", "local"), workers=1) as threads:
        expected = await streamed(threads, messages)
    async with running_service(DEFINITION, backend_settings(request, tmp_path / "processes", "local"), workers=1, engine_processes=1) as processes:
        assert await streamed(processes, messages) == expected
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await streamed(processes, messages[:2] + [pb.AugmentStreamRequest(config=config)])
        assert rpc_error(raised.value).reason == "CONFIG_ALREADY_SENT"
    assert expected[1] == [0, 3]
