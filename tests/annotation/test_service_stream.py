"""StreamItems (interrupted and resumed, sharded) and the blob RPCs."""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api

from .conftest import Annotations, item_upload, png, rpc_error

COUNT = 150


async def _committed(annotation: Annotations) -> tuple[str, dict[str, bytes]]:
    dataset = await annotation.create_dataset(categories=[pb.Category(category_id=1, display_name="digit")])
    images = {f"s{i:03d}": png(8, 8, seed=i) for i in range(COUNT)}
    uploads = [
        item_upload(item_id, image=data, annotations=[pb.Annotation(category_id=1, class_label=pb.ClassLabel())], split="train" if i % 3 else "val")
        for i, (item_id, data) in enumerate(images.items())
    ]
    await annotation.upload(dataset.name, [uploads[i : i + 64] for i in range(0, COUNT, 64)])
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    return dataset.name, images


async def _take(call: grpc.aio.UnaryStreamCall, count: int | None) -> list[api.StreamItemsResponse]:
    """Read ``count`` responses (all when None), then cancel the call as a broken client would."""
    got = []
    async for response in call:
        got.append(response)
        if count is not None and len(got) == count:
            call.cancel()
            break
    return got


async def test_an_interrupted_stream_resumes_and_yields_every_item_once(annotation: Annotations) -> None:
    parent, images = await _committed(annotation)
    version = f"{parent}/versions/latest"
    received: list[api.StreamItemsResponse] = []
    cursor = ""
    for stop_after in (37, 1, 64, None):  # three interruptions, then to the end
        call = annotation.stub.StreamItems(api.StreamItemsRequest(parent=version, start_cursor=cursor))
        part = await _take(call, stop_after)
        received.extend(part)
        cursor = part[-1].cursor
    ids = [r.item.name.rsplit("/", 1)[1] for r in received]
    assert ids == sorted(images)
    assert all(r.item.image.data == images[i] and r.item.version == 1 for r, i in zip(received, ids))
    assert len({r.cursor for r in received}) == COUNT


async def test_a_cursor_pins_the_version_it_started_on(annotation: Annotations) -> None:
    parent, images = await _committed(annotation)
    call = annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{parent}/versions/latest", view=pb.ITEM_VIEW_BASIC))
    first = await _take(call, 10)
    await annotation.stub.DeleteItem(api.DeleteItemRequest(name=f"{parent}/items/s100"))
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=parent))
    rest = await _take(
        annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{parent}/versions/latest", view=pb.ITEM_VIEW_BASIC, start_cursor=first[-1].cursor)),
        None,
    )
    assert [r.item.name.rsplit("/", 1)[1] for r in first + rest] == sorted(images)
    assert {r.item.version for r in rest} == {1} and all(r.item.image.data == b"" for r in rest)
    with pytest.raises(grpc.RpcError) as caught:
        await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{parent}/versions/2", start_cursor=first[-1].cursor)), None)
    assert rpc_error(caught.value).reason == "INVALID_CURSOR"


async def test_shards_partition_a_filtered_stream(annotation: Annotations) -> None:
    parent, images = await _committed(annotation)
    version = f"{parent}/versions/1"
    shards = []
    for index in range(3):
        responses = await _take(
            annotation.stub.StreamItems(
                api.StreamItemsRequest(parent=version, filter='split = "train"', shard_index=index, shard_count=3, view=pb.ITEM_VIEW_BASIC)
            ),
            None,
        )
        shards.append([r.item.name.rsplit("/", 1)[1] for r in responses])
    expected = sorted(item_id for i, item_id in enumerate(images) if i % 3)
    assert sorted(sum(shards, [])) == expected
    assert all(shards) and sum(len(s) for s in shards) == len(set(sum(shards, [])))
    # A cursor of one shard does not fit another shard or filter.
    cursor = (await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=version, filter='split = "train"', shard_index=0, shard_count=3)), 1))[0].cursor
    for other in (
        api.StreamItemsRequest(parent=version, filter='split = "train"', shard_index=1, shard_count=3, start_cursor=cursor),
        api.StreamItemsRequest(parent=version, start_cursor=cursor),
        api.StreamItemsRequest(parent=version, start_cursor=cursor[:-3] + "abc"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            await _take(annotation.stub.StreamItems(other), None)
        assert rpc_error(caught.value).reason == "INVALID_CURSOR"
    for bad in ((3, 3), (-1, 2), (1, 0)):
        with pytest.raises(grpc.RpcError) as caught:
            await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=version, shard_index=bad[0], shard_count=bad[1])), None)
        assert rpc_error(caught.value).reason == "INVALID_SHARD"


async def test_streams_read_committed_versions_only(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset()
    for parent, reason in ((dataset.name, "INVALID_NAME"), (f"{dataset.name}/versions/latest", "VERSION_NOT_FOUND")):
        with pytest.raises(grpc.RpcError) as caught:
            await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=parent)), None)
        assert rpc_error(caught.value).reason == reason


def _chunks(data: bytes, sha256: str, size: int = 1024 * 1024) -> list[api.UploadBlobsRequest]:
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return [
        api.UploadBlobsRequest(sha256=sha256, size_bytes=len(data), offset=i * size, data=piece) for i, piece in enumerate(pieces)
    ]


async def _read(annotation: Annotations, sha256: str, offset: int = 0, limit: int = 0) -> bytes:
    return b"".join([r.data async for r in annotation.stub.ReadBlob(api.ReadBlobRequest(sha256=sha256, offset=offset, limit=limit))])


async def test_blobs_upload_in_chunks_and_read_back_in_ranges(annotation: Annotations) -> None:
    big = os.urandom(2 * 1024 * 1024 + 12345)
    small = b"manifest,line\n" * 10
    empty = b""
    digests = [hashlib.sha256(d).hexdigest() for d in (big, small, empty)]
    missing = await annotation.stub.FindMissingBlobs(api.FindMissingBlobsRequest(sha256s=digests))
    assert list(missing.missing_sha256s) == digests

    requests = _chunks(big, digests[0]) + _chunks(small, digests[1], size=7) + _chunks(empty, digests[2])
    response = await annotation.stub.UploadBlobs(iter(requests))
    assert [(b.sha256, b.size_bytes) for b in response.blobs] == [(digests[0], len(big)), (digests[1], len(small)), (digests[2], 0)]
    assert list((await annotation.stub.FindMissingBlobs(api.FindMissingBlobsRequest(sha256s=digests))).missing_sha256s) == []

    assert await _read(annotation, digests[0]) == big
    assert await _read(annotation, digests[0], offset=1_500_000, limit=700_000) == big[1_500_000:2_200_000]
    assert await _read(annotation, digests[1], offset=5) == small[5:]
    assert await _read(annotation, digests[2]) == b""
    # Uploading a blob the server has is accepted (and its bytes discarded).
    again = await annotation.stub.UploadBlobs(iter(_chunks(small, digests[1])))
    assert [(b.sha256, b.size_bytes) for b in again.blobs] == [(digests[1], len(small))]


async def test_bad_blob_uploads_store_nothing(annotation: Annotations) -> None:
    data = b"payload" * 100
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.UploadBlobs(iter(_chunks(data, wrong)))
    assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (grpc.StatusCode.DATA_LOSS, "SHA256_MISMATCH")
    right = hashlib.sha256(data).hexdigest()
    cut = _chunks(data, right, size=100)[:-1]
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.UploadBlobs(iter(cut))
    assert rpc_error(caught.value).reason == "INCOMPLETE_BLOB"
    gap = _chunks(data, right, size=100)
    del gap[2]
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.UploadBlobs(iter(gap))
    assert rpc_error(caught.value).reason == "INVALID_CHUNK"
    missing = await annotation.stub.FindMissingBlobs(api.FindMissingBlobsRequest(sha256s=[wrong, right]))
    assert list(missing.missing_sha256s) == [wrong, right]

    with pytest.raises(grpc.RpcError) as caught:
        await _read(annotation, right)
    assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (grpc.StatusCode.NOT_FOUND, "BLOB_NOT_FOUND")
    await annotation.stub.UploadBlobs(iter(_chunks(data, right)))
    with pytest.raises(grpc.RpcError) as caught:
        await _read(annotation, right, offset=len(data) + 1)
    assert rpc_error(caught.value).code == grpc.StatusCode.OUT_OF_RANGE
    for bad in ("ABC", "0" * 63, "g" * 64):
        with pytest.raises(grpc.RpcError) as caught:
            await annotation.stub.FindMissingBlobs(api.FindMissingBlobsRequest(sha256s=[right, bad]))
        error = rpc_error(caught.value)
        assert (error.reason, error.metadata["field"]) == ("INVALID_SHA256", "sha256s[1]")
