"""Items through the running service: exact round trips, atomic batches, retries, updates, deletes."""

from __future__ import annotations

import hashlib
import math

import grpc
import numpy as np
import pytest

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.common.v1 import common_pb2
from simulacra_services.annotation.formats import rle
from simulacra_services.core.storage import open_object_store

from .conftest import Annotations, item_upload, jpeg, png, rpc_error

W, H = 16, 12

CATEGORIES = [
    pb.Category(category_id=1, display_name="car", supercategory="vehicle"),
    pb.Category(
        category_id=2,
        display_name="person",
        keypoint_names=["nose", "left_eye", "right_eye"],
        skeleton=[pb.KeypointPair(first=0, second=1), pb.KeypointPair(first=0, second=2)],
        flip_pairs=[pb.KeypointPair(first=1, second=2)],
    ),
    pb.Category(category_id=7, display_name="road"),
]


def _mask_counts() -> list[int]:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[2:7, 3:9] = 1
    mask[0, 0] = 1
    return rle.encode(mask)


def _tensor(dtype: int, array: np.ndarray) -> common_pb2.Tensor:
    return common_pb2.Tensor(dtype=dtype, shape=list(array.shape), data=array.astype(array.dtype.newbyteorder("<")).tobytes())


def every_kind() -> list[pb.Annotation]:
    """One annotation of every kind (and variant), with awkward but valid numbers."""
    semantic = np.zeros((H, W), dtype=np.uint8)
    semantic[:, 8:] = 7
    semantic[0:3, 0:3] = 1
    instance = np.arange(H * W, dtype=np.int32).reshape(H, W) % 5
    depth = np.linspace(0.5, 80.0, H * W, dtype=np.float32).reshape(H, W)
    depth[0, 0] = np.nan
    counts = _mask_counts()
    return [
        pb.Annotation(category_id=1, class_label=pb.ClassLabel(), attributes={"source": "human"}),
        pb.Annotation(
            category_id=1, instance_id="17", iscrowd=False, score=0.75, area=12.5,
            box=pb.Box(x=0.1, y=1.0 / 3.0, w=15.9, h=11.6), attributes={"occluded": "true"},
        ),
        pb.Annotation(category_id=1, rotated_box=pb.RotatedBox(cx=8.0, cy=6.0, w=5.5, h=2.25, angle_degrees=-179.999)),
        pb.Annotation(
            category_id=1, instance_id="17", area=20.0,
            polygon=pb.Polygon(parts=[
                pb.PolygonPart(coordinates=[1.0, 1.0, 5.5, 1.0, 5.5, 4.25, 1.0, 4.25]),
                pb.PolygonPart(coordinates=[10.0, 2.0, 14.0, 2.0, 12.0, 9.75]),
            ]),
        ),
        pb.Annotation(category_id=1, iscrowd=True, mask=pb.Mask(height=H, width=W, uncompressed=pb.RleCounts(counts=counts))),
        pb.Annotation(category_id=1, instance_id="17", mask=pb.Mask(height=H, width=W, compressed=rle.compress(counts))),
        pb.Annotation(
            category_id=2, instance_id="person-1",
            keypoints=pb.Keypoints(points=[
                pb.Keypoint(x=3.5, y=2.25, visibility=2),
                pb.Keypoint(x=-4.0, y=3.0, visibility=1),
                pb.Keypoint(x=0.0, y=0.0, visibility=0),
            ]),
        ),
        pb.Annotation(
            category_id=1,
            cuboid=pb.Cuboid3d(
                center=pb.Vector3(x=1.5, y=-0.25, z=12.0),
                dimensions=pb.CuboidDimensions(length=4.2, width=1.8, height=1.5),
                rotation=pb.Quaternion(w=math.cos(0.3), x=0.0, y=math.sin(0.3), z=0.0),
                frame_id="camera_front",
                intrinsics=pb.CameraIntrinsics(fx=720.5, fy=719.25, cx=7.5, cy=5.5),
                projected_corners=[pb.Point2d(x=float(i) - 2.5, y=float(i * i) / 3.0) for i in range(8)],
            ),
        ),
        pb.Annotation(
            category_id=1,
            cuboid=pb.Cuboid3d(
                center=pb.Vector3(x=0.0, y=0.0, z=5.0),
                dimensions=pb.CuboidDimensions(length=1.0, width=1.0, height=1.0),
                rotation=pb.Quaternion(w=1.0),
                frame_id="lidar_top",
            ),
        ),
        pb.Annotation(pixel_map=pb.PixelMap(kind=pb.PIXEL_MAP_KIND_SEMANTIC_SEGMENTATION, tensor=_tensor(common_pb2.DATA_TYPE_UINT8, semantic))),
        pb.Annotation(pixel_map=pb.PixelMap(kind=pb.PIXEL_MAP_KIND_INSTANCE_SEGMENTATION, tensor=_tensor(common_pb2.DATA_TYPE_INT32, instance))),
        pb.Annotation(category_id=7, pixel_map=pb.PixelMap(kind=pb.PIXEL_MAP_KIND_DEPTH, tensor=_tensor(common_pb2.DATA_TYPE_FLOAT32, depth))),
    ]


def expected_full(uploaded: list[pb.Annotation]) -> list[pb.Annotation]:
    """What a FULL read returns: server-assigned ids "1".."n", pixel maps with their blob reference."""
    out = []
    for index, annotation in enumerate(uploaded, start=1):
        copy = pb.Annotation()
        copy.CopyFrom(annotation)
        copy.id = str(index)
        if copy.HasField("pixel_map"):
            tensor = copy.pixel_map.tensor
            copy.pixel_map.blob.CopyFrom(
                pb.BlobReference(sha256=hashlib.sha256(tensor.data).hexdigest(), size_bytes=len(tensor.data), dtype=tensor.dtype, shape=tensor.shape)
            )
        out.append(copy)
    return out


async def test_every_annotation_kind_round_trips_exactly(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    image = png(W, H, seed=3)
    uploaded = every_kind()
    lineage = common_pb2.Lineage(
        augmented=common_pb2.AugmentedSource(source_item="datasets/other/items/a-1", pipeline_digest="ab" * 32, seed=2**63 + 5)
    )
    name = await annotation.upload_one(
        dataset.name,
        item_upload("scene-1", image=image, annotations=uploaded, split="val", attributes={"weather": "fog", "time": "night"},
                    file_name="images/scene 1.png", lineage=lineage),
    )
    assert name == f"{dataset.name}/items/scene-1"

    full = (await annotation.stub.GetItem(api.GetItemRequest(name=name))).item
    assert list(full.annotations) == expected_full(uploaded)
    assert full.image.data == image
    assert (full.image.sha256, full.image.size_bytes) == (hashlib.sha256(image).hexdigest(), len(image))
    assert (full.image.width, full.image.height, full.image.channels, full.image.format) == (W, H, 3, pb.IMAGE_FORMAT_PNG)
    assert (full.split, dict(full.attributes), full.file_name, full.version) == ("val", {"weather": "fog", "time": "night"}, "images/scene 1.png", 0)
    assert full.lineage == lineage
    assert full.etag and full.create_time.seconds > 0

    basic = (await annotation.stub.GetItem(api.GetItemRequest(name=name, view=pb.ITEM_VIEW_BASIC))).item
    assert basic.image.data == b"" and basic.image.sha256 == full.image.sha256
    for got, want in zip(basic.annotations, full.annotations):
        if want.HasField("pixel_map"):
            assert not got.pixel_map.HasField("tensor") and got.pixel_map.blob == want.pixel_map.blob
        else:
            assert got == want

    # The pixel map blobs hold exactly the tensor bytes.
    for want in full.annotations:
        if want.HasField("pixel_map"):
            chunks = [r.data async for r in annotation.stub.ReadBlob(api.ReadBlobRequest(sha256=want.pixel_map.blob.sha256))]
            assert b"".join(chunks) == want.pixel_map.tensor.data


async def test_grayscale_and_jpeg_images_are_described(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset()
    gray, photo = png(9, 7, mode="L", seed=1), jpeg(20, 10, seed=2)
    await annotation.upload(dataset.name, [[item_upload("gray", image=gray), item_upload("photo", image=photo)]])
    items = {i.name.rsplit("/", 1)[1]: i for i in await annotation.list_all(dataset.name)}
    assert (items["gray"].image.width, items["gray"].image.height, items["gray"].image.channels, items["gray"].image.format) == (9, 7, 1, pb.IMAGE_FORMAT_PNG)
    assert (items["photo"].image.channels, items["photo"].image.format) == (3, pb.IMAGE_FORMAT_JPEG)
    assert items["photo"].split == "train"  # the default split


async def test_same_image_bytes_are_stored_once(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset()
    image = png(seed=11)
    await annotation.upload(dataset.name, [[item_upload("a", image=image), item_upload("b", image=image)], [item_upload("c", image=image)]])
    sha = hashlib.sha256(image).hexdigest()
    # A fourth item may refer to the stored blob by digest alone.
    await annotation.upload_one(dataset.name, item_upload("d", sha256=sha))
    objects = open_object_store(annotation.server.settings)
    try:
        keys = [info.key for info in objects.list("blobs/")]
    finally:
        objects.close()
    assert keys == [f"blobs/sha256/{sha[:2]}/{sha}"]
    items = await annotation.list_all(dataset.name)
    assert [i.image.sha256 for i in items] == [sha] * 4


async def test_a_bad_item_rejects_its_whole_batch_and_names_item_and_field(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await annotation.upload_one(dataset.name, item_upload("before"))
    committed = (await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))).version
    good = pb.Annotation(category_id=1, box=pb.Box(x=1, y=1, w=2, h=2))
    bad = pb.Annotation(category_id=1, box=pb.Box(x=10, y=1, w=7, h=2))  # x + w = 17 > 16
    batch = [
        item_upload("n1", annotations=[good]),
        item_upload("n2", image=png(seed=5), annotations=[good, good]),
        item_upload("n3", annotations=[good, bad]),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.upload(dataset.name, [batch], request_ids=["batch-1"])
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BOX_OUT_OF_BOUNDS")
    assert error.metadata["field"] == "items[2].annotations[1].box.w"
    assert (error.metadata["item_index"], error.metadata["request_id"]) == ("2", "batch-1")

    assert [i.name for i in await annotation.list_all(dataset.name)] == [f"{dataset.name}/items/before"]
    got = (await annotation.stub.GetDataset(api.GetDatasetRequest(name=dataset.name))).dataset
    assert got.item_count == 1
    # The dataset's sequence did not move: committing again makes no new version.
    again = await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    assert not again.created and again.version == committed
    stats = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=dataset.name))).statistics
    assert (stats.item_count, stats.annotation_count) == (1, 0)
    # The request id was not consumed by the rejected batch: the fixed batch goes through with it.
    batch[2] = item_upload("n3", annotations=[good])
    (ack,) = await annotation.upload(dataset.name, [batch], request_ids=["batch-1"])
    assert not ack.replayed and len(ack.item_names) == 3


async def test_acknowledged_batches_stay_when_a_later_batch_fails(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    requests = [
        api.UploadItemsRequest(parent=dataset.name, request_id="one", items=[item_upload("a")]),
        api.UploadItemsRequest(parent=dataset.name, request_id="two", items=[item_upload("b", image=b"not an image")]),
        api.UploadItemsRequest(parent=dataset.name, request_id="three", items=[item_upload("c")]),
    ]
    call = annotation.stub.UploadItems(iter(requests))
    acks = []
    with pytest.raises(grpc.RpcError) as caught:
        async for ack in call:
            acks.append(ack)
    assert [a.request_id for a in acks] == ["one"]
    error = rpc_error(caught.value)
    assert (error.reason, error.metadata["field"], error.metadata["request_id"]) == ("INVALID_IMAGE", "items[0].image.data", "two")
    assert [i.name.rsplit("/", 1)[1] for i in await annotation.list_all(dataset.name)] == ["a"]


async def test_resending_a_batch_duplicates_nothing(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    batch = [item_upload(annotations=[pb.Annotation(category_id=1, class_label=pb.ClassLabel())]) for _ in range(3)]
    (first,) = await annotation.upload(dataset.name, [batch], request_ids=["req-42"])
    assert not first.replayed and len(set(first.item_names)) == 3  # ids generated by the server
    (second, third) = await annotation.upload(dataset.name, [batch, batch], request_ids=["req-42", "req-42"])
    assert second.replayed and third.replayed
    assert list(second.item_names) == list(first.item_names) == list(third.item_names)
    items = await annotation.list_all(dataset.name)
    assert sorted(i.name for i in items) == sorted(first.item_names)
    stats = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=dataset.name))).statistics
    assert (stats.item_count, stats.annotation_count) == (3, 3)

    changed = [item_upload(split="val")]
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.upload(dataset.name, [changed], request_ids=["req-42"])
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    assert len(await annotation.list_all(dataset.name)) == 3


async def test_an_existing_item_id_is_refused(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset()
    await annotation.upload_one(dataset.name, item_upload("dup"))
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.upload(dataset.name, [[item_upload("fresh"), item_upload("dup", image=png(seed=9))]])
    error = rpc_error(caught.value)
    assert (error.code, error.reason, error.metadata["field"]) == (grpc.StatusCode.ALREADY_EXISTS, "ITEM_ALREADY_EXISTS", "items[1].item_id")
    assert [i.name.rsplit("/", 1)[1] for i in await annotation.list_all(dataset.name)] == ["dup"]


async def test_box_clip_policy_cuts_boxes_to_the_image(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    box = pb.Annotation(category_id=1, box=pb.Box(x=-2, y=4, w=10, h=20))
    name = await annotation.upload_one(dataset.name, item_upload("clipped", annotations=[box]), policy=pb.BOX_BOUNDS_POLICY_CLIP)
    got = (await annotation.stub.GetItem(api.GetItemRequest(name=name))).item.annotations[0].box
    assert (got.x, got.y, got.w, got.h) == (0.0, 4.0, 8.0, 8.0)


async def test_update_replaces_fields_and_checks_the_etag(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    name = await annotation.upload_one(
        dataset.name, item_upload("u", annotations=[pb.Annotation(category_id=1, box=pb.Box(x=1, y=1, w=2, h=2))], attributes={"a": "1"})
    )
    before = (await annotation.stub.GetItem(api.GetItemRequest(name=name))).item
    change = pb.Item(name=name, split="test", etag=before.etag, annotations=[pb.Annotation(category_id=7, class_label=pb.ClassLabel())])
    from google.protobuf.field_mask_pb2 import FieldMask

    updated = (await annotation.stub.UpdateItem(api.UpdateItemRequest(item=change, update_mask=FieldMask(paths=["split", "annotations"])))).item
    assert updated.split == "test" and dict(updated.attributes) == {"a": "1"}
    assert [(a.id, a.category_id, a.WhichOneof("kind")) for a in updated.annotations] == [("1", 7, "class_label")]
    assert updated.etag != before.etag and updated.create_time == before.create_time
    assert updated.image.sha256 == before.image.sha256

    stale = pb.Item(name=name, split="val", etag=before.etag)
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.UpdateItem(api.UpdateItemRequest(item=stale, update_mask=FieldMask(paths=["split"])))
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.ABORTED, "ETAG_MISMATCH")

    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.UpdateItem(api.UpdateItemRequest(item=pb.Item(name=name), update_mask=FieldMask(paths=["image"])))
    assert rpc_error(caught.value).reason == "INVALID_UPDATE_MASK"
    stats = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=dataset.name))).statistics
    assert (stats.item_count, stats.annotation_count, dict(stats.items_per_split)) == (1, 1, {"test": 1})


async def test_delete_item_removes_it_from_the_working_state(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset()
    name = await annotation.upload_one(dataset.name, item_upload("gone"))
    await annotation.stub.DeleteItem(api.DeleteItemRequest(name=name))
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.GetItem(api.GetItemRequest(name=name))
    assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (grpc.StatusCode.NOT_FOUND, "ITEM_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.DeleteItem(api.DeleteItemRequest(name=name))
    assert rpc_error(caught.value).reason == "ITEM_NOT_FOUND"
    # The id is free again.
    await annotation.upload_one(dataset.name, item_upload("gone", image=png(seed=4)))
    assert (await annotation.stub.GetDataset(api.GetDatasetRequest(name=dataset.name))).dataset.item_count == 1


async def test_concurrent_resends_of_one_batch_write_it_once(annotation: Annotations) -> None:
    import asyncio

    dataset = await annotation.create_dataset(categories=CATEGORIES)
    batch = [item_upload(image=png(seed=i), annotations=[pb.Annotation(category_id=1, class_label=pb.ClassLabel())]) for i in range(20)]
    results = await asyncio.gather(*(annotation.upload(dataset.name, [batch], request_ids=["same"]) for _ in range(4)))
    acks = [r[0] for r in results]
    assert sorted(a.replayed for a in acks) == [False, True, True, True]
    assert all(list(a.item_names) == list(acks[0].item_names) for a in acks)
    got = (await annotation.stub.GetDataset(api.GetDatasetRequest(name=dataset.name))).dataset
    assert got.item_count == 20
    assert sorted(i.name for i in await annotation.list_all(dataset.name)) == sorted(acks[0].item_names)


async def test_an_item_read_basic_can_be_sent_back_as_an_update(annotation: Annotations) -> None:
    """Pixel maps come back as blob references; an update may keep them by reference."""
    from google.protobuf.field_mask_pb2 import FieldMask

    dataset = await annotation.create_dataset(categories=CATEGORIES)
    name = await annotation.upload_one(dataset.name, item_upload("maps", annotations=every_kind()))
    basic = (await annotation.stub.GetItem(api.GetItemRequest(name=name, view=pb.ITEM_VIEW_BASIC))).item
    basic.split = "val"
    updated = (await annotation.stub.UpdateItem(api.UpdateItemRequest(item=basic))).item
    assert updated.split == "val" and list(updated.annotations) == list(basic.annotations)
    full = (await annotation.stub.GetItem(api.GetItemRequest(name=name))).item
    assert list(full.annotations) == expected_full(every_kind())

    depth = [a for a in basic.annotations if a.pixel_map.kind == pb.PIXEL_MAP_KIND_DEPTH][0]
    wrong = pb.Annotation()
    wrong.CopyFrom(depth)
    wrong.pixel_map.blob.sha256 = "b" * 64
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.UpdateItem(api.UpdateItemRequest(item=pb.Item(name=name, annotations=[wrong]), update_mask=FieldMask(paths=["annotations"])))
    error = rpc_error(caught.value)
    assert (error.code, error.reason, error.metadata["field"]) == (
        grpc.StatusCode.FAILED_PRECONDITION, "BLOB_NOT_FOUND", "item.annotations[0].pixel_map.blob.sha256"
    )
