"""StreamItems (batched responses, interrupted and resumed, sharded) and the blob RPCs."""

from __future__ import annotations

import asyncio
import hashlib
import os

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from google.protobuf.field_mask_pb2 import FieldMask

from simulacra_client.annotation import StreamedItem, split_stream_cursor
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.common.v1 import common_pb2
from simulacra_services.annotation.api.servicer import STREAM_DEFAULT_ITEMS, STREAM_MAX_ITEMS, STREAM_RESPONSE_BYTES, stream_items_per_response
from simulacra_services.annotation.persistence import tables

from simulacra_services.core import db

from .conftest import Annotations, item_upload, png, rpc_error
from .jobs_support import sdk
from .test_service_items import CATEGORIES, H, W, every_kind

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


def _ids(responses: list[api.StreamItemsResponse]) -> list[str]:
    return [item.name.rsplit("/", 1)[1] for r in responses for item in r.items]


async def test_responses_carry_batches_of_the_default_or_requested_size(annotation: Annotations) -> None:
    parent, images = await _committed(annotation)
    version = f"{parent}/versions/1"
    default = await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=version)), None)
    assert [len(r.items) for r in default] == [STREAM_DEFAULT_ITEMS, STREAM_DEFAULT_ITEMS, COUNT - 2 * STREAM_DEFAULT_ITEMS]
    assert _ids(default) == sorted(images)
    assert all(item.image.data == images[item.name.rsplit("/", 1)[1]] for r in default for item in r.items)
    for asked, sizes in ((1, [1] * COUNT), (40, [40, 40, 40, 30]), (STREAM_MAX_ITEMS * 5, [COUNT])):
        responses = await _take(
            annotation.stub.StreamItems(api.StreamItemsRequest(parent=version, view=pb.ITEM_VIEW_BASIC, max_items_per_response=asked)), None
        )
        assert [len(r.items) for r in responses] == sizes
        assert _ids(responses) == sorted(images)
    # A filtered stream packs full batches of matching items.
    train = await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=version, filter='split = "train"', max_items_per_response=30)), None)
    assert [len(r.items) for r in train] == [30, 30, 30, 10]
    assert _ids(train) == sorted(item_id for i, item_id in enumerate(images) if i % 3)


async def test_bad_max_items_per_response_is_rejected(annotation: Annotations) -> None:
    parent, _ = await _committed(annotation)
    for bad in (-1, -(2**31)):
        with pytest.raises(grpc.RpcError) as caught:
            await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{parent}/versions/1", max_items_per_response=bad)), None)
        error = rpc_error(caught.value)
        assert (error.code, error.reason, error.metadata["field"]) == (
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MAX_ITEMS_PER_RESPONSE", "max_items_per_response"
        )
        assert "max_items_per_response" in error.message


def test_max_items_per_response_defaults_and_clamps() -> None:
    assert stream_items_per_response(0) == STREAM_DEFAULT_ITEMS
    assert stream_items_per_response(7) == 7
    assert stream_items_per_response(STREAM_MAX_ITEMS) == STREAM_MAX_ITEMS
    assert stream_items_per_response(STREAM_MAX_ITEMS + 1) == stream_items_per_response(2**31 - 1) == STREAM_MAX_ITEMS


async def test_large_images_split_responses_by_bytes(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset()
    # Random pixels do not compress: each PNG is a little over 3 * side**2 bytes.
    sides = {"a": 300, "b": 300, "c": 300, "d": 300, "e": 620, "f": 40, "g": 40}
    images = {item_id: png(side, side, seed=i) for i, (item_id, side) in enumerate(sides.items())}
    await annotation.upload(dataset.name, [[item_upload(item_id, image=data) for item_id, data in images.items()]])
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    responses = await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{dataset.name}/versions/1")), None)
    # a-c fit in 1 MiB, d would not join them; e is alone above the limit; f and g are small.
    assert [_ids([r]) for r in responses] == [["a", "b", "c"], ["d"], ["e"], ["f", "g"]]
    assert len(images["e"]) > STREAM_RESPONSE_BYTES
    for response in responses:
        assert len(response.items) == 1 or sum(len(i.image.data) for i in response.items) <= STREAM_RESPONSE_BYTES
        assert all(i.image.data == images[i.name.rsplit("/", 1)[1]] for i in response.items)
    # Without image bytes, size does not split responses.
    basic = await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{dataset.name}/versions/1", view=pb.ITEM_VIEW_BASIC)), None)
    assert [len(r.items) for r in basic] == [len(sides)]


async def test_large_annotations_split_responses_by_encoded_size(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=[pb.Category(category_id=1, display_name="outline")])
    rng = np.random.default_rng(3)

    def outline() -> pb.Annotation:  # 10,000 points of 8-byte doubles: about 160 kB per item
        points = rng.uniform(0, 12, size=20_000).tolist()
        return pb.Annotation(category_id=1, polygon=pb.Polygon(parts=[pb.PolygonPart(coordinates=points)]))

    item_ids = [f"p{i}" for i in range(9)]
    await annotation.upload(dataset.name, [[item_upload(item_id, image=png(seed=i), annotations=[outline()]) for i, item_id in enumerate(item_ids)]])
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    for view in (pb.ITEM_VIEW_BASIC, pb.ITEM_VIEW_FULL):
        responses = await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{dataset.name}/versions/1", view=view)), None)
        assert _ids(responses) == item_ids and len(responses) > 1
        sizes = [[item.ByteSize() for item in r.items] for r in responses]
        assert all(sum(s) <= STREAM_RESPONSE_BYTES for s in sizes)
        # Each response is as full as the limit allows: the next item would not have fitted.
        assert all(sum(s) + following[0] > STREAM_RESPONSE_BYTES for s, following in zip(sizes, sizes[1:]))


async def test_an_interrupted_stream_resumes_between_responses_and_yields_every_item_once(annotation: Annotations) -> None:
    parent, images = await _committed(annotation)
    version = f"{parent}/versions/latest"
    received: list[api.StreamItemsResponse] = []
    cursor = ""
    # Three interruptions (with different batch sizes after each resume), then to the end.
    for stop_after, batch in ((2, 16), (1, 7), (1, 0), (None, 25)):
        call = annotation.stub.StreamItems(api.StreamItemsRequest(parent=version, start_cursor=cursor, max_items_per_response=batch))
        part = await _take(call, stop_after)
        assert all(len(r.items) == (batch or STREAM_DEFAULT_ITEMS) for r in part[:-1])
        received.extend(part)
        cursor = part[-1].cursor
    ids = _ids(received)
    assert ids == sorted(images)
    assert all(item.image.data == images[i] and item.version == 1 for item, i in zip((it for r in received for it in r.items), ids))
    assert len({r.cursor for r in received}) == len(received)


async def test_a_stream_cancelled_mid_response_resumes_from_any_item_through_the_sdk(annotation: Annotations) -> None:
    parent, images = await _committed(annotation)
    dataset_id = parent.split("/")[1]
    order = sorted(images)

    def read(start_cursor: str, count: int | None, batch: int) -> list[StreamedItem]:
        with sdk(annotation) as client:
            out = []
            for streamed in client.stream_items(f"{dataset_id}@1", start_cursor=start_cursor, max_items_per_response=batch):
                out.append(streamed)
                if len(out) == count:
                    break  # closing the generator cancels the call, between or inside responses
            return out

    received: list[StreamedItem] = []
    cursor = ""
    for count, batch in ((5, 16), (16, 16), (11, 7), (1, 0), (None, 40)):
        part = await asyncio.to_thread(read, cursor, count, batch)
        received.extend(part)
        cursor = part[-1].cursor
    assert [s.item.name.rsplit("/", 1)[1] for s in received] == order
    assert all(s.item.image.data == images[i] for s, i in zip(received, order))
    # Every cursor resumes right after its own item, whatever batch size the resumed stream uses.
    for index in (0, 4, 15, 16, 63, 64, 100, COUNT - 2):
        rest = await asyncio.to_thread(read, received[index].cursor, 3, 9)
        assert [s.item.name for s in rest] == [s.item.name for s in received[index + 1 : index + 4]]
    assert await asyncio.to_thread(read, received[-1].cursor, None, 0) == []


def test_sdk_cursors_name_a_server_cursor_and_a_skip() -> None:
    assert split_stream_cursor("") == ("", 0)
    assert split_stream_cursor("abc.123") == ("abc.123", 0)
    assert split_stream_cursor("abc.123+7") == ("abc.123", 7)
    assert split_stream_cursor("+3") == ("", 3)
    for bad in ("abc+0", "abc+x", "abc+1001", "abc+", "abc+-2", "abc+\u0663"):
        with pytest.raises(ValueError, match="not a cursor of stream_items"):
            split_stream_cursor(bad)


async def test_a_cursor_pins_the_version_it_started_on(annotation: Annotations) -> None:
    parent, images = await _committed(annotation)
    call = annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{parent}/versions/latest", view=pb.ITEM_VIEW_BASIC, max_items_per_response=10))
    first = await _take(call, 1)
    await annotation.stub.DeleteItem(api.DeleteItemRequest(name=f"{parent}/items/s100"))
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=parent))
    rest = await _take(
        annotation.stub.StreamItems(api.StreamItemsRequest(parent=f"{parent}/versions/latest", view=pb.ITEM_VIEW_BASIC, start_cursor=first[-1].cursor)),
        None,
    )
    assert _ids(first + rest) == sorted(images)
    assert {i.version for r in rest for i in r.items} == {1} and all(i.image.data == b"" for r in rest for i in r.items)
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
                api.StreamItemsRequest(parent=version, filter='split = "train"', shard_index=index, shard_count=3, view=pb.ITEM_VIEW_BASIC, max_items_per_response=8)
            ),
            None,
        )
        assert all(len(r.items) == 8 for r in responses[:-1])
        shards.append(_ids(responses))
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


def _encodings(annotation: Annotations, dataset_name: str) -> dict[str, bytes | None]:
    """``encoded_item`` of every live row of a dataset, read straight from the service's database."""
    engine = db.create_engine(annotation.server.settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            dataset_pk = conn.execute(sa.select(tables.datasets.c.id).where(tables.datasets.c.dataset_id == dataset_name.split("/")[1])).scalar_one()
            rows = conn.execute(
                sa.select(tables.items.c.item_id, tables.items.c.encoded_item).where(tables.items.c.dataset == dataset_pk, tables.items.c.removed_seq.is_(None))
            )
            return {row.item_id: row.encoded_item for row in rows}
    finally:
        engine.dispose()


def _set_encoding(annotation: Annotations, item_ids: list[str], value: bytes | None) -> None:
    engine = db.create_engine(annotation.server.settings.resolved_database_url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(tables.items).where(tables.items.c.item_id.in_(item_ids)).values(encoded_item=value))
    finally:
        engine.dispose()


async def _streamed_and_read_one_by_one(annotation: Annotations, version: str, view: int) -> tuple[list[pb.Item], list[pb.Item]]:
    """The items of a stream (a few per response), and the same items read with GetItem (converted from decoded rows)."""
    streamed = [
        item for r in await _take(annotation.stub.StreamItems(api.StreamItemsRequest(parent=version, view=view, max_items_per_response=5)), None)
        for item in r.items
    ]
    read = []
    for item in streamed:
        name = f"{version}/items/{item.name.rsplit('/', 1)[1]}"
        read.append((await annotation.stub.GetItem(api.GetItemRequest(name=name, view=view))).item)
    return streamed, read


async def test_items_sent_from_their_stored_encoding_equal_converted_items(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    kinds = every_kind()
    plain = [a for a in kinds if not a.HasField("pixel_map")]
    lineages = [
        common_pb2.Lineage(real=common_pb2.RealSource(origin="camera-7")),
        common_pb2.Lineage(augmented=common_pb2.AugmentedSource(source_item="datasets/o/items/x", pipeline_digest="cd" * 32, seed=2**64 - 1)),
        common_pb2.Lineage(synthetic=common_pb2.SyntheticSource(generator="gan", generator_version=3, seed=9, sample_index=2**40)),
    ]
    uploads = [
        item_upload("a-all", image=png(W, H, seed=1), annotations=plain, split="val", attributes={"weather": "fog", "t": ""},
                    file_name="dir/a b.png", lineage=lineages[1]),
        item_upload("b-bare", image=png(W, H, seed=2)),
        item_upload("c-pixel-maps", image=png(W, H, seed=3), annotations=kinds, lineage=lineages[2]),
        *(
            item_upload(f"d-{i:02d}", image=png(W, H, seed=10 + i), annotations=[kind], lineage=lineages[i % 3], attributes={"i": str(i)})
            for i, kind in enumerate(plain)
        ),
    ]
    await annotation.upload(dataset.name, [uploads])
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    # Rows written by updates: one with its annotations copied, one with new annotations.
    for item_id, change, paths in (
        ("d-00", pb.Item(split="test"), ["split"]),
        ("d-01", pb.Item(annotations=[pb.Annotation(category_id=7, score=0.5, box=pb.Box(x=1, y=2, w=3, h=4))]), ["annotations"]),
    ):
        change.name = f"{dataset.name}/items/{item_id}"
        await annotation.stub.UpdateItem(api.UpdateItemRequest(item=change, update_mask=FieldMask(paths=paths)))
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))

    # Every row was written with its encoding, except the item with pixel maps (its FULL reads inline their data).
    encodings = _encodings(annotation, dataset.name)
    assert {item_id for item_id, value in encodings.items() if value is None} == {"c-pixel-maps"}
    for version in (f"{dataset.name}/versions/1", f"{dataset.name}/versions/2"):
        for view in (pb.ITEM_VIEW_FULL, pb.ITEM_VIEW_BASIC):
            streamed, read = await _streamed_and_read_one_by_one(annotation, version, view)
            assert len(streamed) == len(uploads) and streamed == read
            assert all(item.image.data for item in streamed) == (view == pb.ITEM_VIEW_FULL)
    assert [a.WhichOneof("kind") for a in streamed[0].annotations] == [a.WhichOneof("kind") for a in plain]

    # Rows without an encoding (written before the column existed) or with one of another format
    # are decoded and converted: the same items, in responses that mix both kinds of rows.
    version = f"{dataset.name}/versions/2"
    before, _ = await _streamed_and_read_one_by_one(annotation, version, pb.ITEM_VIEW_FULL)
    _set_encoding(annotation, ["a-all", "d-03"], None)
    _set_encoding(annotation, ["d-04"], b"\xff" + b"not an item")
    after, read = await _streamed_and_read_one_by_one(annotation, version, pb.ITEM_VIEW_FULL)
    assert after == before == read


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
