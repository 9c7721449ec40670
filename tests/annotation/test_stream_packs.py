"""Stream packs (annotation/persistence/packs.py, annotation/api/stream.py) on the real server, both backends.

What is checked: a pack answers with the very bytes the rows and blobs give
(every request shape it answers, resumed streams included); the requests it
cannot answer read the rows; a build that stopped before its manifest, a pack
whose segment changed and a manifest of another layout are never used; the
limits and the switch hold; deleting the dataset removes its packs.

Whether a response came from the pack is told by what the pack does not need:
once the image blobs are deleted, only the pack can still send the images.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_services.annotation.persistence.packs import PACK_ROOT
from simulacra_services.annotation.service import DEFINITION
from simulacra_services.core.config import Settings
from simulacra_services.core.storage import ObjectStore, open_object_store
from tests.harness import BACKENDS, backend_settings, running_service

from .conftest import Annotations, item_upload, png, rpc_error
from .test_service_items import CATEGORIES, every_kind

_METHOD = "/simulacra.annotation.v1.AnnotationService/StreamItems"
SEGMENT = 256 * 1024  # several segments per pack, and items that span none but fill one alone


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return backend_settings(request, tmp_path, request.param)


@pytest.fixture
def objects(settings: Settings) -> Any:
    store = open_object_store(settings)
    yield store
    store.close()


async def raw(channel: grpc.aio.Channel, request: api.StreamItemsRequest) -> list[bytes]:
    """The responses as the server sent them (not parsed)."""
    call = channel.unary_stream(_METHOD, request_serializer=api.StreamItemsRequest.SerializeToString, response_deserializer=None)
    return [response async for response in call(request)]


def cursors(responses: list[bytes]) -> list[str]:
    return [api.StreamItemsResponse.FromString(r).cursor for r in responses]


def pack_keys(objects: ObjectStore, dataset: str = "") -> list[str]:
    return [info.key for info in objects.list(f"{PACK_ROOT}/{dataset}")]


def manifests(objects: ObjectStore) -> list[str]:
    return [key for key in pack_keys(objects) if key.endswith("/manifest")]


async def until(condition: Callable[[], Any], what: str) -> Any:
    for _ in range(200):
        found = await asyncio.to_thread(condition)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"waited 10 s for {what}")


def delete_blobs(objects: ObjectStore) -> int:
    keys = [info.key for info in objects.list("blobs/")]
    for key in keys:
        objects.delete(key)
    return len(keys)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Callable[..., Any]]:
    """Starts the service over the test's storage and database, with pack segments of ``SEGMENT`` bytes."""

    def start(**overrides: Any) -> Any:
        return running_service(DEFINITION, settings.replace(**overrides), pack_segment_bytes=SEGMENT)

    yield start


async def _dataset(stub: api_grpc.AnnotationServiceStub) -> str:
    """A version with what makes responses differ: many small items, large images (a response of
    their own, one larger than 1 MiB), pixel maps (items sent without a stored encoding), long polygons."""
    annotations = Annotations(stub, None, None, "")  # type: ignore[arg-type]
    dataset = await annotations.create_dataset("packed", categories=CATEGORIES)
    rng = np.random.default_rng(5)
    uploads = [
        item_upload(f"i{i:03d}", image=png(8 + i % 5, 8, seed=i), split=("train", "val", "test")[i % 3],
                    annotations=[pb.Annotation(category_id=1, box=pb.Box(x=1, y=1, w=2, h=2 + i % 4))])
        for i in range(130)
    ]
    uploads += [item_upload(f"k{i}", annotations=every_kind(), split="train") for i in range(3)]  # pixel maps
    uploads += [item_upload(f"m{i}", image=png(300, 300, seed=100 + i)) for i in range(3)]  # ~270 kB each
    uploads += [item_upload("m9", image=png(620, 620, seed=109))]  # over 1 MiB: alone in a response
    # Long polygons (about 160 kB each): a response of them ends by encoded size, not by images.
    uploads += [
        item_upload(f"p{i}", annotations=[pb.Annotation(category_id=1, polygon=pb.Polygon(parts=[pb.PolygonPart(coordinates=rng.uniform(0, 8, size=20_000).tolist())]))])
        for i in range(8)
    ]
    for start in range(0, len(uploads), 40):
        await annotations.upload(dataset.name, [uploads[start : start + 40]])
    await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    return dataset.name


def _requests(parent: str) -> dict[str, api.StreamItemsRequest]:
    version = f"{parent}/versions/1"
    return {
        "default": api.StreamItemsRequest(parent=version),
        "latest": api.StreamItemsRequest(parent=f"{parent}/versions/latest"),
        "one_per_response": api.StreamItemsRequest(parent=version, max_items_per_response=1),
        "seven": api.StreamItemsRequest(parent=version, max_items_per_response=7),
        "max": api.StreamItemsRequest(parent=version, max_items_per_response=5000),
        "shard_1_of_3": api.StreamItemsRequest(parent=version, shard_index=1, shard_count=3, max_items_per_response=20),
        "shard_0_of_2_by_5": api.StreamItemsRequest(parent=version, shard_index=0, shard_count=2, max_items_per_response=5),
    }


async def _expected(channel: grpc.aio.Channel, requests: dict[str, api.StreamItemsRequest]) -> dict[str, list[bytes]]:
    """Every request, and each one resumed from each of its cursors (the remaining responses)."""
    out: dict[str, list[bytes]] = {}
    for name, request in requests.items():
        responses = out[name] = await raw(channel, request)
        for index, cursor in enumerate(cursors(responses)[:-1]):
            if name in ("default", "seven", "shard_0_of_2_by_5") or index % 10 == 0:
                resumed = api.StreamItemsRequest()
                resumed.CopyFrom(request)
                resumed.start_cursor = cursor
                out[f"{name}@{index}"] = await raw(channel, resumed)
    return out


async def _replayed(channel: grpc.aio.Channel, requests: dict[str, api.StreamItemsRequest], expected: dict[str, list[bytes]]) -> None:
    for name, responses in expected.items():
        base, _, index = name.partition("@")
        request = api.StreamItemsRequest()
        request.CopyFrom(requests[base])
        if index:
            request.start_cursor = cursors(expected[base])[int(index)]
        got = await raw(channel, request)
        assert got == responses, f"{name}: the pack's responses differ from the rows' ({len(got)} vs {len(responses)} responses)"


async def test_a_pack_sends_the_bytes_the_rows_send(service: Callable[..., Any], objects: ObjectStore) -> None:
    async with service(stream_packs=False) as running:
        stub = api_grpc.AnnotationServiceStub(running.channel)
        parent = await _dataset(stub)
        requests = _requests(parent)
        expected = await _expected(running.channel, requests)
        assert len(expected["default"]) > 3 and len(expected["shard_1_of_3"]) > 1
        assert pack_keys(objects) == []  # switched off: nothing built
    async with service() as running:
        # The first whole stream reads the rows and builds the pack as it goes.
        assert await raw(running.channel, requests["default"]) == expected["default"]
        await until(lambda: manifests(objects), "the pack's manifest")
        segments = [key for key in pack_keys(objects) if not key.endswith("/manifest")]
        assert len(segments) > 3
        # Only the pack can still send the images now.
        assert delete_blobs(objects) > 100
        await _replayed(running.channel, requests, expected)
        # A request the pack does not answer reads the rows (and finds the blobs gone).
        for request in (
            api.StreamItemsRequest(parent=requests["default"].parent, filter='split = "train"'),
            api.StreamItemsRequest(parent=requests["default"].parent, filter="width > 0"),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                await raw(running.channel, request)
            assert rpc_error(caught.value).reason == "BLOB_NOT_FOUND"
        # The BASIC view never carries images: the same bytes as before, no pack needed.
        basic = api.StreamItemsRequest(parent=requests["default"].parent, view=pb.ITEM_VIEW_BASIC)
        assert all(not item.image.data for r in await raw(running.channel, basic) for item in api.StreamItemsResponse.FromString(r).items)


async def test_unusable_packs_are_never_used(service: Callable[..., Any], objects: ObjectStore) -> None:
    async with service(stream_packs=False) as running:
        parent = await _dataset(api_grpc.AnnotationServiceStub(running.channel))
        requests = _requests(parent)
        expected = {name: await raw(running.channel, requests[name]) for name in ("default", "seven")}
    async with service() as running:
        await raw(running.channel, requests["default"])
        (manifest,) = await until(lambda: manifests(objects), "the pack's manifest")
        first = json.loads(objects.get(manifest))
        # A segment that is not the one the manifest names (replaced, or corrupt): the stream goes on
        # from the rows with the same bytes, the manifest goes, the next whole stream builds a new pack.
        key = first["segments"][2]["key"]
        data = bytearray(objects.get(key))
        data[len(data) // 2] ^= 0xFF
        objects.put(key, bytes(data))
        assert await raw(running.channel, requests["seven"]) == expected["seven"]
        assert manifests(objects) == []
        assert await raw(running.channel, requests["default"]) == expected["default"]
        await until(lambda: manifests(objects), "the rebuilt pack's manifest")
        second = json.loads(objects.get(manifest))
        assert {s["key"] for s in second["segments"]}.isdisjoint({s["key"] for s in first["segments"]})
        assert await raw(running.channel, requests["seven"]) == expected["seven"]
    async with service() as running:  # a fresh process: nothing of the pack cached
        # What a build killed before its manifest leaves: segments only. They are never read.
        objects.delete(manifest)
        assert len(pack_keys(objects)) > 3
        assert delete_blobs(objects) > 0
        with pytest.raises(grpc.RpcError) as caught:
            await raw(running.channel, requests["seven"])
        assert rpc_error(caught.value).reason == "BLOB_NOT_FOUND"
        # A manifest of another layout is not used either.
        objects.put(manifest, json.dumps({**second, "layout": 999}).encode())
        with pytest.raises(grpc.RpcError) as caught:
            await raw(running.channel, requests["seven"])
        assert rpc_error(caught.value).reason == "BLOB_NOT_FOUND"


async def test_no_pack_past_the_limit_and_delete_removes_packs(service: Callable[..., Any], objects: ObjectStore) -> None:
    async with service(stream_pack_max_bytes=100_000) as running:  # less than the version's stream
        stub = api_grpc.AnnotationServiceStub(running.channel)
        parent = await _dataset(stub)
        version = api.StreamItemsRequest(parent=f"{parent}/versions/1")
        expected = await raw(running.channel, version)
        await asyncio.sleep(0.3)
        assert pack_keys(objects) == []
    async with service() as running:
        stub = api_grpc.AnnotationServiceStub(running.channel)
        # A stream that breaks off builds nothing.
        call = running.channel.unary_stream(_METHOD, request_serializer=api.StreamItemsRequest.SerializeToString, response_deserializer=None)(version)
        async for _ in call:
            call.cancel()
            break
        await asyncio.sleep(0.3)
        assert pack_keys(objects) == []
        assert await raw(running.channel, version) == expected
        await until(lambda: manifests(objects), "the pack's manifest")
        assert await raw(running.channel, version) == expected
        # Leftovers of a build that died go with the dataset too.
        objects.put(f"{PACK_ROOT}/packed/19700101T000000000000/v1/deadbeef/00000", b"left over")
        await stub.DeleteDataset(api.DeleteDatasetRequest(name=parent, force=True))
        assert pack_keys(objects) == []
        # A dataset created again under the same id meets no pack of the old one.
        annotations = Annotations(stub, None, None, "")  # type: ignore[arg-type]
        dataset = await annotations.create_dataset("packed")
        await annotations.upload(dataset.name, [[item_upload("only", image=png(9, 9, seed=1))]])
        await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
        (response,) = [api.StreamItemsResponse.FromString(r) for r in await raw(running.channel, version)]
        assert [item.name for item in response.items] == [f"{dataset.name}/items/only"]


@pytest.mark.parametrize("settings", ["local"], indirect=True)  # the failure is made on local files: a file where the packs' directory must go
async def test_a_build_that_fails_leaves_no_pack_and_the_stream_is_whole(
    service: Callable[..., Any], objects: ObjectStore, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    assert settings.storage_backend == "local"
    blocker = settings.resolved_storage_dir / "packs"
    async with service(stream_packs=False) as running:
        parent = await _dataset(api_grpc.AnnotationServiceStub(running.channel))
        request = api.StreamItemsRequest(parent=f"{parent}/versions/1", max_items_per_response=9)
        expected = await raw(running.channel, request)
    async with service() as running:
        blocker.write_bytes(b"not a directory")  # every put under packs/ fails now
        with caplog.at_level(logging.WARNING, logger="simulacra.annotation.packs"):
            assert await raw(running.channel, request) == expected  # the stream does not depend on its build
            # The build runs after the stream, in a thread: wait for its failure, not for a fixed time.
            await until(lambda: [r for r in caplog.records if "not published" in r.getMessage()], "the failed build's warning")
        blocker.unlink()
        assert pack_keys(objects) == []
        # Nothing was left that a stream uses: the next one reads the rows (and builds the pack).
        assert await raw(running.channel, request) == expected
        await until(lambda: manifests(objects), "the pack's manifest")
        delete_blobs(objects)
        assert await raw(running.channel, request) == expected
