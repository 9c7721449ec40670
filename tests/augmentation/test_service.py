"""The augmentation service on a real server: batch, stream, preview, stored pipelines, errors."""

from __future__ import annotations

import asyncio
import random

import cv2
import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from simulacra_client.api.annotation.v1 import annotation_pb2
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.api.augmentation.v1 import pipeline_pb2
from simulacra_client.augmentation import AugmentationClient, ItemInput, Pipeline
from simulacra_client.errors import NotFoundError, SimulacraRpcError, from_rpc_error
from simulacra_services.annotation.api.convert import annotation_from_proto, annotation_to_proto
from simulacra_services.augmentation.engine import Augmenter, Item, parse_spec
from simulacra_services.augmentation.service import DEFINITION
from tests.augmentation.conftest import stub
from tests.augmentation.support import photo
from tests.harness import backend_settings, running_service

PIPELINE = {
    "ops": [
        {"random_resized_crop": {"height": 48, "width": 48, "scale": {"min": 0.3, "max": 1.0}}},
        {"horizontal_flip": {}, "probability": 0.5},
        {"affine": {"rotate_degrees": {"min": -15, "max": 15}, "scale": {"min": 0.9, "max": 1.1}}},
        {"color_jitter": {"brightness": {"min": 0.7, "max": 1.3}, "hue": {"min": -0.05, "max": 0.05}}},
        {"one_of": {"ops": [{"gaussian_noise": {}}, {"rain": {}}, {"jpeg": {}}]}, "probability": 0.5},
    ],
    "annotation_policy": {"min_visibility": 0.1},
}


def spec() -> pipeline_pb2.PipelineSpec:
    return json_format.ParseDict(PIPELINE, pipeline_pb2.PipelineSpec())


def item(index: int) -> pb.AugmentItem:
    image = photo(40 + index % 5, 60, seed=index)
    box = annotation_pb2.Annotation(id="b", category_id=2, box=annotation_pb2.Box(x=5, y=5, w=20, h=15))
    return pb.AugmentItem(
        key=f"datasets/d/items/{index}",
        image={"dtype": "DATA_TYPE_UINT8", "shape": list(image.shape), "data": image.tobytes()},
        annotations=[box],
    )


def rpc_error(error: BaseException) -> SimulacraRpcError:
    assert isinstance(error, grpc.RpcError), error
    return from_rpc_error(error)


def fingerprint(items) -> list[tuple]:  # noqa: ANN001
    return [(i.key, i.seed, i.image.data, tuple(i.applied_op_paths), tuple(a.SerializeToString() for a in i.annotations)) for i in items]


async def batch(service, items, seed: int = 5) -> list:  # noqa: ANN001
    response = await stub(service).AugmentBatch(pb.AugmentBatchRequest(pipeline=pb.PipelineSource(pipeline_spec=spec()), seed=seed, items=items))
    return list(response.items)


async def test_same_bytes_across_batch_sizes_orders_workers_transports_and_in_process(augmentation, tmp_path) -> None:
    items = [item(i) for i in range(64)]
    whole = fingerprint(await batch(augmentation, items))
    by_seven = []
    for start in range(0, 64, 7):
        by_seven += fingerprint(await batch(augmentation, items[start : start + 7]))
    ones = [fingerprint(await batch(augmentation, [i]))[0] for i in items[:9]]
    order = list(range(64))
    random.Random(3).shuffle(order)
    shuffled = fingerprint(await batch(augmentation, [items[i] for i in order]))
    assert by_seven == whole and ones == whole[:9]
    assert sorted(shuffled) == sorted(whole)
    # A server with one worker thread.
    async with running_service(DEFINITION, backend_settings(None, tmp_path / "one", "local"), workers=1) as single:
        assert fingerprint(await batch(single, items)) == whole
    # The stream, in requests of uneven sizes.
    sizes = [1, 5, 20, 38]
    requests = [pb.AugmentStreamRequest(config=pb.AugmentStreamConfig(pipeline=pb.PipelineSource(pipeline_spec=spec()), seed=5))]
    start = 0
    for size in sizes:
        requests.append(pb.AugmentStreamRequest(items=items[start : start + size]))
        start += size
    streamed = []
    async for response in stub(augmentation).AugmentStream(iter(requests)):
        streamed += fingerprint(response.items)
    assert streamed == whole
    # In process, with the engine itself.
    augmenter = Augmenter(parse_spec(PIPELINE))
    for message, expected in zip(items[:5], whole[:5]):
        image = np.frombuffer(message.image.data, np.uint8).reshape(tuple(message.image.shape))
        annotations = [annotation_from_proto(a, "a") for a in message.annotations]
        local = augmenter.run_batch([Item(image, annotations, key=message.key)], request_seed=5)[0]
        assert (local.seed, local.image.tobytes(), local.applied_paths) == (expected[1], expected[2], expected[3])
        assert tuple(annotation_to_proto(a).SerializeToString() for a in local.annotations) == expected[4]
    assert len({f[3] for f in whole}) > 3  # items do get different augmentations


async def test_stream_resumes_from_a_position(augmentation) -> None:
    position_spec = json_format.ParseDict({**PIPELINE, "seed_policy": "SEED_POLICY_POSITION"}, pipeline_pb2.PipelineSpec())
    anonymous = [pb.AugmentItem(image=item(i).image) for i in range(12)]

    async def run(start: int, chunks: list) -> list:  # noqa: ANN001
        config = pb.AugmentStreamConfig(pipeline=pb.PipelineSource(pipeline_spec=position_spec), seed=9, start_position=start)
        requests = [pb.AugmentStreamRequest(config=config)] + [pb.AugmentStreamRequest(items=c) for c in chunks]
        out, positions = [], []
        async for response in stub(augmentation).AugmentStream(iter(requests)):
            positions.append(response.position)
            out += fingerprint(response.items)
        return out, positions

    unbroken, positions = await run(0, [anonymous[0:4], anonymous[4:8], anonymous[8:12]])
    assert positions == [0, 4, 8]
    resumed, _ = await run(5, [anonymous[5:12]])
    assert resumed == unbroken[5:]


async def test_stream_answers_each_request_before_the_next_arrives(augmentation) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    await queue.put(pb.AugmentStreamRequest(config=pb.AugmentStreamConfig(pipeline=pb.PipelineSource(pipeline_spec=spec()), seed=1)))
    await queue.put(pb.AugmentStreamRequest(items=[item(0)]))

    async def requests():  # noqa: ANN202
        while (request := await queue.get()) is not None:
            yield request

    call = stub(augmentation).AugmentStream(requests())
    first = await call.read()
    assert [i.key for i in first.items] == ["datasets/d/items/0"]
    await queue.put(pb.AugmentStreamRequest(items=[item(1), item(2)]))
    second = await call.read()
    assert [i.key for i in second.items] == ["datasets/d/items/1", "datasets/d/items/2"]
    await queue.put(None)
    assert await call.read() == grpc.aio.EOF


def _bad_spec(data: dict) -> pb.PipelineSource:
    return pb.PipelineSource(pipeline_spec=json_format.ParseDict(data, pipeline_pb2.PipelineSpec()))


@pytest.mark.parametrize(
    ("source", "reason", "field"),
    [
        (_bad_spec({"ops": [{"horizontal_flip": {}, "probability": 1.5}]}), "INVALID_PROBABILITY", "pipeline.pipeline_spec.ops[0].probability"),
        (_bad_spec({"ops": [{"rotate": {"angle_degrees": {"min": 5, "max": -5}}}]}), "INVALID_RANGE", "pipeline.pipeline_spec.ops[0].rotate.angle_degrees"),
        (_bad_spec({"ops": [{"gaussian_blur": {"kernel_size": 6}}]}), "EVEN_KERNEL_SIZE", "pipeline.pipeline_spec.ops[0].gaussian_blur.kernel_size"),
        (_bad_spec({"ops": [{"registered": {"name": "swirl"}}]}), "UNKNOWN_OP", "pipeline.pipeline_spec.ops[0].registered.name"),
        (_bad_spec({"ops": [{"random_resized_crop": {"height": 10}}]}), "MISSING_PARAM", "pipeline.pipeline_spec.ops[0].random_resized_crop.width"),
        (_bad_spec({"ops": [{"cutout": {"count": 0}}]}), "PARAM_OUT_OF_RANGE", "pipeline.pipeline_spec.ops[0].cutout.count"),
        (_bad_spec({"ops": [{"sequential": {"ops": [{"sequential": {"ops": [{"sequential": {"ops": [{"sequential": {"ops": [{"sequential": {"ops": [{"sequential": {"ops": [{"sequential": {"ops": [{"sequential": {"ops": [{"grayscale": {}}]}}]}}]}}]}}]}}]}}]}}]}}]}), "PIPELINE_TOO_DEEP", None),
        (_bad_spec({"ops": [{"grayscale": {}}] * 300}), "PIPELINE_TOO_LARGE", "pipeline.pipeline_spec.ops[256]"),
        (pb.PipelineSource(), "MISSING_PIPELINE", "pipeline"),
    ],
)
async def test_bad_pipelines_get_a_precise_status(augmentation, source: pb.PipelineSource, reason: str, field: str | None) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub(augmentation).AugmentBatch(pb.AugmentBatchRequest(pipeline=source, items=[item(0)]))
    error = rpc_error(raised.value)
    assert (error.code, error.reason, error.domain) == (grpc.StatusCode.INVALID_ARGUMENT, reason, "augmentation.simulacra.dev")
    if field:
        assert error.metadata["field"] == field


def _with(index: int, **changes) -> pb.AugmentItem:  # noqa: ANN003
    message = item(index)
    for key, value in changes.items():
        if key == "data":
            message.image.data = value
        elif key == "annotations":
            del message.annotations[:]
            message.annotations.extend(value)
        else:
            setattr(message, key, value)
    return message


@pytest.mark.parametrize(
    ("items", "code", "reason", "field"),
    [
        ([item(0)] * 257, grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_ITEMS", "items"),
        ([_with(0, data=b"short")], grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IMAGE", "items[0].image.data"),
        ([item(0), _with(1, key="")], grpc.StatusCode.INVALID_ARGUMENT, "MISSING_ITEM_KEY", "items[1].key"),
        ([item(0), item(0)], grpc.StatusCode.INVALID_ARGUMENT, "DUPLICATE_ITEM_KEY", "items[1].key"),
        (
            [_with(0, annotations=[annotation_pb2.Annotation(category_id=1, keypoints=annotation_pb2.Keypoints(points=[annotation_pb2.Keypoint(x=1, y=1, visibility=2)]))])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "CATEGORY_REQUIRED",
            "items[0].annotations[0].category_id",
        ),
        (
            [_with(0, annotations=[annotation_pb2.Annotation(category_id=2, box=annotation_pb2.Box(x=1, y=1, w=-3, h=2))])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_BOX_SIZE",
            "items[0].annotations[0].box.w",
        ),
        ([pb.AugmentItem(key="k", image={"dtype": "DATA_TYPE_UINT8", "shape": [3000, 3000, 3], "data": b""})], grpc.StatusCode.RESOURCE_EXHAUSTED, "IMAGE_TOO_LARGE", "items[0].image"),
        ([pb.AugmentItem(key="k", image=item(0).image, partners=[item(1)] * 9)], grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_PARTNERS", "items[0].partners"),
        ([pb.AugmentItem(key="k", image=item(0).image, partners=[pb.AugmentItem(image=item(1).image, partners=[item(2)])])], grpc.StatusCode.INVALID_ARGUMENT, "TOO_MANY_PARTNERS", "items[0].partners[0].partners"),
    ],
)
async def test_bad_items_get_a_precise_status(request, tmp_path, items: list, code: grpc.StatusCode, reason: str, field: str) -> None:
    settings = backend_settings(request, tmp_path, "local", max_image_pixels=1_000_000)
    async with running_service(DEFINITION, settings, workers=1) as service:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await batch(service, items)
    error = rpc_error(raised.value)
    assert (error.code, error.reason, error.metadata["field"]) == (code, reason, field)


async def test_stream_errors(augmentation) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stub(augmentation).AugmentStream(iter([pb.AugmentStreamRequest(items=[item(0)])])):
            pass
    assert rpc_error(raised.value).reason == "MISSING_CONFIG"
    config = pb.AugmentStreamConfig(pipeline=pb.PipelineSource(pipeline_spec=spec()))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for response in stub(augmentation).AugmentStream(iter([pb.AugmentStreamRequest(config=config, items=[item(0)]), pb.AugmentStreamRequest(config=config)])):
            received.append(response)
    assert rpc_error(raised.value).reason == "CONFIG_ALREADY_SENT"
    assert len(received) <= 1


async def test_preview_is_a_png_grid_and_reproducible(augmentation) -> None:
    request = pb.PreviewAugmentationsRequest(pipeline=pb.PipelineSource(pipeline_spec=spec()), seed=3, item=item(1), count=6, columns=3)
    first = await stub(augmentation).PreviewAugmentations(request)
    again = await stub(augmentation).PreviewAugmentations(request)
    assert first.png == again.png and len(set(first.seeds)) == 6
    grid = cv2.imdecode(np.frombuffer(first.png, np.uint8), cv2.IMREAD_COLOR)
    assert grid.shape[:2] == (first.height, first.width) == (2 * 48 + 3 * 4, 3 * 48 + 4 * 4)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub(augmentation).PreviewAugmentations(pb.PreviewAugmentationsRequest(pipeline=pb.PipelineSource(pipeline_spec=spec()), item=item(1), count=65))
    assert (rpc_error(raised.value).reason, rpc_error(raised.value).metadata["field"]) == ("PARAM_OUT_OF_RANGE", "count")


async def test_a_preview_larger_than_the_pixel_limit_is_refused(request, tmp_path) -> None:
    settings = backend_settings(request, tmp_path, "local", max_image_pixels=20_000)
    async with running_service(DEFINITION, settings, workers=1) as service:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub(service).PreviewAugmentations(pb.PreviewAugmentationsRequest(pipeline=pb.PipelineSource(pipeline_spec=spec()), item=item(1), count=16))
    assert (rpc_error(raised.value).code, rpc_error(raised.value).reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PREVIEW_TOO_LARGE")


async def test_stored_pipelines(stored) -> None:
    api = stub(stored)
    created = (await api.CreatePipeline(pb.CreatePipelineRequest(pipeline_id="flips", pipeline=pipeline_pb2.Pipeline(description="d", spec=spec())))).pipeline
    assert created.name == "pipelines/flips" and len(created.digest) == 64
    again = (await api.CreatePipeline(pb.CreatePipelineRequest(pipeline_id="flips", pipeline=pipeline_pb2.Pipeline(spec=spec())))).pipeline
    assert again.digest == created.digest and again.create_time == created.create_time
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.CreatePipeline(pb.CreatePipelineRequest(pipeline_id="flips", pipeline=pipeline_pb2.Pipeline(spec=_bad_spec({"ops": [{"grayscale": {}}]}).pipeline_spec)))
    assert (rpc_error(raised.value).code, rpc_error(raised.value).reason) == (grpc.StatusCode.ALREADY_EXISTS, "PIPELINE_EXISTS")
    # A refused pipeline is not stored.
    deep: dict = {"grayscale": {}}
    for _ in range(8):
        deep = {"sequential": {"ops": [deep]}}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.CreatePipeline(pb.CreatePipelineRequest(pipeline_id="deep", pipeline=pipeline_pb2.Pipeline(spec=_bad_spec({"ops": [deep]}).pipeline_spec)))
    assert (rpc_error(raised.value).code, rpc_error(raised.value).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PIPELINE_TOO_DEEP")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.GetPipeline(pb.GetPipelineRequest(name="pipelines/deep"))
    assert rpc_error(raised.value).reason == "PIPELINE_NOT_FOUND"
    for name in ("b-two", "c-three"):
        await api.CreatePipeline(pb.CreatePipelineRequest(pipeline_id=name, pipeline=pipeline_pb2.Pipeline(spec=spec())))
    first = await api.ListPipelines(pb.ListPipelinesRequest(page_size=2))
    second = await api.ListPipelines(pb.ListPipelinesRequest(page_size=2, page_token=first.next_page_token))
    assert [p.name for p in first.pipelines] + [p.name for p in second.pipelines] == ["pipelines/b-two", "pipelines/c-three", "pipelines/flips"]
    assert second.next_page_token == ""
    # By name and inline: the same bytes.
    named = await api.AugmentBatch(pb.AugmentBatchRequest(pipeline=pb.PipelineSource(pipeline_name="pipelines/flips"), seed=5, items=[item(3)]))
    assert named.pipeline_digest == created.digest
    assert fingerprint(named.items) == fingerprint(await batch(stored, [item(3)]))
    await api.DeletePipeline(pb.DeletePipelineRequest(name="pipelines/flips"))
    for call in (
        api.GetPipeline(pb.GetPipelineRequest(name="pipelines/flips")),
        api.AugmentBatch(pb.AugmentBatchRequest(pipeline=pb.PipelineSource(pipeline_name="pipelines/flips"), items=[item(0)])),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert (rpc_error(raised.value).code, rpc_error(raised.value).reason) == (grpc.StatusCode.NOT_FOUND, "PIPELINE_NOT_FOUND")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.GetPipeline(pb.GetPipelineRequest(name="pipelines/../x"))
    assert rpc_error(raised.value).reason == "INVALID_PIPELINE_ID"


async def test_sdk_numpy_in_and_out(augmentation) -> None:
    def use_sdk() -> tuple:
        with AugmentationClient(augmentation.address) as client:
            pipeline = Pipeline().add("resize", height=20, width=30).add("horizontal_flip").one_of([Pipeline.op("fog"), Pipeline.op("night")])
            images = [photo(seed=i) for i in range(3)]
            out = client.augment(images, pipeline, seed=2, keys=["a", "b", "c"])
            streamed = list(client.stream([ItemInput(img, key) for img, key in zip(images, "abc")], pipeline, seed=2, batch_size=2))
            grey = client.augment([photo(channels=1).astype(np.float32) / 255], pipeline, keys=["g"])
            png = client.preview(images[0], pipeline, count=2)
            with pytest.raises(NotFoundError) as missing:  # the SDK's typed error, from bytes it serialized itself
                client.augment(images[:1], "pipelines/missing")
            assert missing.value.reason == "PIPELINE_NOT_FOUND"
            return out, streamed, grey, png

    out, streamed, grey, png = await asyncio.to_thread(use_sdk)
    assert [o.image.shape for o in out] == [(20, 30, 3)] * 3 and out[0].image.dtype == np.uint8
    assert [o.image.tobytes() for o in out] == [s.image.tobytes() for s in streamed]
    assert grey[0].image.dtype == np.float32 and grey[0].image.shape == (20, 30, 1)
    assert png.startswith(b"\x89PNG")


async def test_mosaic_over_the_wire_reports_its_partners(augmentation) -> None:
    mosaic = json_format.ParseDict({"ops": [{"mosaic": {}}]}, pipeline_pb2.PipelineSpec())
    message = item(0)
    message.partners.extend([item(1), item(2), item(3)])
    response = await stub(augmentation).AugmentBatch(pb.AugmentBatchRequest(pipeline=pb.PipelineSource(pipeline_spec=mosaic), seed=1, items=[message]))
    (out,) = response.items
    assert sorted(out.partner_keys) == [f"datasets/d/items/{k}" for k in (1, 2, 3)]
    assert {a.id for a in out.annotations} <= {"b", "p0.b", "p1.b", "p2.b"} and len(out.annotations) >= 1


async def test_the_stream_on_the_torch_path_gives_the_same_draws(augmentation) -> None:
    import torch

    items = [item(i) for i in range(6)]

    async def stream(device: str) -> list:
        config = pb.AugmentStreamConfig(pipeline=pb.PipelineSource(pipeline_spec=spec()), seed=5, device=device)
        out = []
        async for response in stub(augmentation).AugmentStream(iter([pb.AugmentStreamRequest(config=config), pb.AugmentStreamRequest(items=items)])):
            out += list(response.items)
        return out

    plain, torched = await stream(""), await stream("cpu")
    for a, b in zip(plain, torched):
        assert (a.seed, list(a.applied_op_paths), list(a.annotations)) == (b.seed, list(b.applied_op_paths), list(b.annotations))
        difference = np.abs(np.frombuffer(a.image.data, np.uint8).astype(int) - np.frombuffer(b.image.data, np.uint8).astype(int))
        assert difference.max() <= 3
    for device, code, reason in (("tpu", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DEVICE"), ("cuda", grpc.StatusCode.FAILED_PRECONDITION, "DEVICE_UNAVAILABLE")):
        if device == "cuda" and torch.cuda.is_available():
            continue  # a machine with a GPU serves it; the CPU build refuses it
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stream(device)
        assert (rpc_error(raised.value).code, rpc_error(raised.value).reason) == (code, reason)
