"""Bad input of every kind: the precise status, a stable reason, the field, and nothing written."""

from __future__ import annotations

import asyncio
import hashlib
import io
import struct
import zlib

from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from simulacra_client.annotation import AnnotationClient, JobFailedError
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.channel import open_aio_channel
from simulacra_services.annotation.service import DEFINITION
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceServer

from .conftest import Annotations, item_upload, png, rpc_error

W, H = 16, 12
INVALID = grpc.StatusCode.INVALID_ARGUMENT
CATEGORIES = [
    pb.Category(category_id=1, display_name="car"),
    pb.Category(category_id=2, display_name="person", keypoint_names=["a", "b", "c"]),
]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes whose header announces width x height grayscale pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 4)  # a few rows; the rest would follow
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def _encoded(mode: str, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (W, H)).save(buffer, format=fmt)
    return buffer.getvalue()


def _one(annotation: pb.Annotation) -> api.UploadItemsRequest.ItemUpload:
    return item_upload("bad", annotations=[annotation])


BAD_ITEMS = [
    # (what, upload, code, reason, field)
    ("unknown category", _one(pb.Annotation(category_id=99, box=pb.Box(x=0, y=0, w=1, h=1))), INVALID, "UNKNOWN_CATEGORY", "items[0].annotations[0].category_id"),
    ("no category", _one(pb.Annotation(box=pb.Box(x=0, y=0, w=1, h=1))), INVALID, "MISSING_CATEGORY", "items[0].annotations[0].category_id"),
    ("box outside", _one(pb.Annotation(category_id=1, box=pb.Box(x=-1, y=0, w=2, h=2))), INVALID, "BOX_OUT_OF_BOUNDS", "items[0].annotations[0].box.x"),
    ("empty box", _one(pb.Annotation(category_id=1, box=pb.Box(x=0, y=0, w=0, h=2))), INVALID, "INVALID_BOX_SIZE", "items[0].annotations[0].box.w"),
    ("nan", _one(pb.Annotation(category_id=1, box=pb.Box(x=float("nan"), y=0, w=1, h=1))), INVALID, "NON_FINITE_NUMBER", "items[0].annotations[0].box.x"),
    ("rle size", _one(pb.Annotation(category_id=1, mask=pb.Mask(height=H + 1, width=W, uncompressed=pb.RleCounts(counts=[(H + 1) * W])))), INVALID, "RLE_SIZE_MISMATCH", "items[0].annotations[0].mask.height"),
    ("rle sum", _one(pb.Annotation(category_id=1, mask=pb.Mask(height=H, width=W, uncompressed=pb.RleCounts(counts=[5, 5])))), INVALID, "INVALID_RLE", "items[0].annotations[0].mask.uncompressed.counts"),
    ("rle text", _one(pb.Annotation(category_id=1, mask=pb.Mask(height=H, width=W, compressed="\x01bad"))), INVALID, "INVALID_RLE", "items[0].annotations[0].mask.compressed"),
    ("rle unset", _one(pb.Annotation(category_id=1, mask=pb.Mask(height=H, width=W))), INVALID, "INVALID_RLE", "items[0].annotations[0].mask"),
    ("keypoint count", _one(pb.Annotation(category_id=2, keypoints=pb.Keypoints(points=[pb.Keypoint(x=1, y=1, visibility=2)]))), INVALID, "KEYPOINT_COUNT_MISMATCH", "items[0].annotations[0].keypoints.points"),
    ("visibility", _one(pb.Annotation(category_id=2, keypoints=pb.Keypoints(points=[pb.Keypoint(visibility=3)] * 3))), INVALID, "INVALID_KEYPOINT_VISIBILITY", "items[0].annotations[0].keypoints.points[0].visibility"),
    ("quaternion", _one(pb.Annotation(category_id=1, cuboid=pb.Cuboid3d(
        center=pb.Vector3(z=3), dimensions=pb.CuboidDimensions(length=1, width=1, height=1),
        rotation=pb.Quaternion(w=1, x=0.1), frame_id="cam"))), INVALID, "QUATERNION_NOT_NORMALIZED", "items[0].annotations[0].cuboid.rotation"),
    ("polygon", _one(pb.Annotation(category_id=1, polygon=pb.Polygon(parts=[pb.PolygonPart(coordinates=[1, 2, 3, 4])]))), INVALID, "INVALID_POLYGON", "items[0].annotations[0].polygon.parts[0].coordinates"),
    ("pixel map size", _one(pb.Annotation(pixel_map=pb.PixelMap(kind=pb.PIXEL_MAP_KIND_DEPTH, tensor=common_pb2.Tensor(
        dtype=common_pb2.DATA_TYPE_FLOAT32, shape=[H, W + 1], data=b"\0" * 4 * H * (W + 1))))), INVALID, "PIXEL_MAP_SIZE_MISMATCH", "items[0].annotations[0].pixel_map.tensor.shape"),
    ("no kind", _one(pb.Annotation(category_id=1)), INVALID, "MISSING_ANNOTATION_KIND", "items[0].annotations[0]"),
    ("duplicate annotation id", item_upload("bad", annotations=[pb.Annotation(id="x", category_id=1, class_label=pb.ClassLabel())] * 2), INVALID, "DUPLICATE_ANNOTATION_ID", "items[0].annotations[1].id"),
    ("duplicate instance kind", item_upload("bad", annotations=[
        pb.Annotation(category_id=1, instance_id="p1", box=pb.Box(x=0, y=0, w=4, h=4)),
        pb.Annotation(category_id=1, instance_id="p1", polygon=pb.Polygon(parts=[pb.PolygonPart(coordinates=[0, 0, 4, 0, 4, 4])])),
        pb.Annotation(category_id=1, instance_id="p1", box=pb.Box(x=1, y=1, w=2, h=2)),
    ]), INVALID, "DUPLICATE_INSTANCE_KIND", "items[0].annotations[2].instance_id"),
    ("corrupt image", item_upload("bad", image=b"\x89PNG\r\n\x1a\n" + b"garbage" * 20), INVALID, "INVALID_IMAGE", "items[0].image.data"),
    ("truncated image", item_upload("bad", image=png(64, 64, seed=1)[:300]), INVALID, "INVALID_IMAGE", "items[0].image.data"),
    ("gif", item_upload("bad", image=_encoded("L", "GIF")), INVALID, "INVALID_IMAGE", "items[0].image.data"),
    ("rgba", item_upload("bad", image=_encoded("RGBA", "PNG")), INVALID, "UNSUPPORTED_IMAGE_MODE", "items[0].image.data"),
    ("bomb", item_upload("bad", image=bomb_png(10_000, 10_000)), INVALID, "IMAGE_TOO_MANY_PIXELS", "items[0].image.data"),
    ("huge bomb", item_upload("bad", image=bomb_png(30_000, 30_000)), INVALID, "IMAGE_TOO_MANY_PIXELS", "items[0].image.data"),
    ("no image", api.UploadItemsRequest.ItemUpload(item_id="bad", item=pb.Item()), INVALID, "MISSING_IMAGE", "items[0].image"),
    ("digest mismatch", item_upload("bad", image=png(), sha256="0" * 64), grpc.StatusCode.DATA_LOSS, "SHA256_MISMATCH", "items[0].image.sha256"),
    ("unknown blob", item_upload("bad", sha256="a" * 64), grpc.StatusCode.FAILED_PRECONDITION, "BLOB_NOT_FOUND", "items[0].image.sha256"),
    ("bad digest", item_upload("bad", sha256="A" * 64), INVALID, "INVALID_SHA256", "items[0].image.sha256"),
    ("item id", item_upload("../etc"), INVALID, "INVALID_ITEM_ID", "items[0].item_id"),
    ("split", item_upload("bad", split="Train Set"), INVALID, "INVALID_SPLIT", "items[0].split"),
    ("attribute key", item_upload("bad", attributes={"Weather": "fog"}), INVALID, "INVALID_ATTRIBUTES", "items[0].attributes['Weather']"),
    ("attribute value", item_upload("bad", attributes={"note": "x" * 1025}), INVALID, "INVALID_ATTRIBUTES", "items[0].attributes['note']"),
    ("too many attributes", item_upload("bad", attributes={f"k{i}": "v" for i in range(65)}), INVALID, "INVALID_ATTRIBUTES", "items[0].attributes"),
    ("file name", item_upload("bad", file_name="../../etc/passwd"), INVALID, "INVALID_PATH", "items[0].file_name"),
    ("too many annotations", item_upload("bad", annotations=[pb.Annotation(category_id=1, class_label=pb.ClassLabel())] * 10_001), INVALID, "TOO_MANY_ANNOTATIONS", "items[0].annotations"),
    ("lineage", item_upload("bad", lineage=common_pb2.Lineage(augmented=common_pb2.AugmentedSource(source_item="../x"))), INVALID, "INVALID_LINEAGE", "items[0].lineage.augmented.source_item"),
]


@pytest.mark.parametrize("what", [case[0] for case in BAD_ITEMS])
async def test_bad_items_are_refused_with_a_reason_and_field(annotation: Annotations, what: str) -> None:
    _, upload, code, reason, field = next(case for case in BAD_ITEMS if case[0] == what)
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.upload(dataset.name, [[item_upload("fine"), upload]])
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (code, reason), error
    assert error.metadata["field"] == field.replace("items[0]", "items[1]")
    assert error.metadata["item_index"] == "1"
    assert error.domain == "annotation.simulacra.dev"
    assert await annotation.list_all(dataset.name) == []


async def test_oversize_batches_and_texts_are_refused(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset()
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.upload(dataset.name, [[item_upload() for _ in range(257)]])
    assert (rpc_error(caught.value).reason, rpc_error(caught.value).metadata["limit"]) == ("TOO_MANY_ITEMS", "256")
    for fields, reason in (
        ({"display_name": "x" * 257}, "INVALID_TEXT"),
        ({"description": "\x00"}, "INVALID_TEXT"),
        ({"labels": {"Bad Key": "v"}}, "INVALID_ATTRIBUTES"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            await annotation.create_dataset("texts", **fields)
        assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (INVALID, reason)
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.create_dataset("bad-keypoints", categories=[pb.Category(display_name="p", keypoint_names=["a"], skeleton=[pb.KeypointPair(first=0, second=3)])])
    assert (rpc_error(caught.value).reason, rpc_error(caught.value).metadata["field"]) == ("INVALID_CATEGORY", "categories[0].skeleton[0]")


async def test_unknown_resources_are_not_found(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    cases = [
        (stub.GetDataset(api.GetDatasetRequest(name="datasets/nowhere")), "DATASET_NOT_FOUND"),
        (stub.GetItem(api.GetItemRequest(name=f"{dataset.name}/items/none")), "ITEM_NOT_FOUND"),
        (stub.GetCategory(api.GetCategoryRequest(name=f"{dataset.name}/categories/42")), "CATEGORY_NOT_FOUND"),
        (stub.GetVersion(api.GetVersionRequest(name=f"{dataset.name}/versions/latest")), "VERSION_NOT_FOUND"),
        (stub.ListItems(api.ListItemsRequest(parent=f"{dataset.name}/versions/3")), "VERSION_NOT_FOUND"),
        (stub.DeleteCategory(api.DeleteCategoryRequest(name=f"{dataset.name}/categories/42")), "CATEGORY_NOT_FOUND"),
        (stub.CommitVersion(api.CommitVersionRequest(parent="datasets/nowhere")), "DATASET_NOT_FOUND"),
    ]
    for call, reason in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await call
        error = rpc_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, reason)
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.upload("datasets/nowhere", [[item_upload()]])
    assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND")
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.create_dataset(dataset.name.split("/")[1])
    assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (grpc.StatusCode.ALREADY_EXISTS, "DATASET_ALREADY_EXISTS")


@pytest.mark.parametrize(
    "name",
    ["", "datasets", "datasets/Bad_Name", "datasets/x/", "datasets/x/items/..", "datasets/x/items/a..b", "datasets/x/versions/0/items/a",
     "datasets/x/items/a/b", "projects/x/datasets/y", "datasets/x/versions/v1/items/a", "datasets/" + "x" * 64 + "/items/a"],
)
async def test_malformed_names_are_invalid(annotation: Annotations, name: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.GetItem(api.GetItemRequest(name=name))
    error = rpc_error(caught.value)
    assert (error.code, error.reason, error.metadata["field"]) == (INVALID, "INVALID_NAME", "name")


async def test_writes_to_a_version_and_bad_requests_are_refused(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await annotation.upload_one(dataset.name, item_upload("x"))
    await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    with pytest.raises(grpc.RpcError) as caught:
        await stub.DeleteItem(api.DeleteItemRequest(name=f"{dataset.name}/versions/1/items/x"))
    assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (INVALID, "VERSION_IS_READ_ONLY")
    with pytest.raises(grpc.RpcError) as caught:
        await stub.DeleteCategory(api.DeleteCategoryRequest(name=f"{dataset.name}/versions/1/categories/1"))
    assert rpc_error(caught.value).reason == "VERSION_IS_READ_ONLY"
    with pytest.raises(grpc.RpcError) as caught:
        await stub.ListItems(api.ListItemsRequest(parent=dataset.name, page_size=-1))
    assert rpc_error(caught.value).reason == "INVALID_PAGE_SIZE"
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.upload(dataset.name, [[item_upload("y", image=png(seed=2))]], request_ids=["has space"])
    assert rpc_error(caught.value).reason == "INVALID_REQUEST_ID"
    requests = [
        api.UploadItemsRequest(parent=dataset.name, request_id="r1", items=[item_upload("p", image=png(seed=3))]),
        api.UploadItemsRequest(parent="datasets/other", request_id="r2", items=[item_upload("q", image=png(seed=4))]),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        _ = [r async for r in stub.UploadItems(iter(requests))]
    assert rpc_error(caught.value).reason == "PARENT_CHANGED"
    sha = hashlib.sha256(png(seed=3)).hexdigest()
    assert [i.image.sha256 for i in await annotation.list_all(dataset.name) if i.name.endswith("/p")] == [sha]


async def test_the_pixel_limit_is_the_servers_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SIMULACRA_MAX_IMAGE_PIXELS"):
        Settings.from_env({"SIMULACRA_MAX_IMAGE_PIXELS": "0"})
    settings = Settings(data_dir=str(tmp_path / "data"), log_level="WARNING", max_image_pixels=150)
    server = ServiceServer(DEFINITION, settings, port=0, metrics_port=METRICS_OFF)
    await server.start()
    channel = open_aio_channel(server.address)
    try:
        service = Annotations(api_grpc.AnnotationServiceStub(channel), channel, server, "local-sqlite")
        dataset = await service.create_dataset()
        with pytest.raises(grpc.RpcError) as caught:  # 16 x 12 = 192 pixels: within the default, above this server's 150
            await service.upload(dataset.name, [[item_upload("fine", image=png(10, 12)), item_upload("large", image=png(16, 12))]])
        error = rpc_error(caught.value)
        assert (error.code, error.reason) == (INVALID, "IMAGE_TOO_MANY_PIXELS")
        assert (error.metadata["field"], error.metadata["limit"]) == ("items[1].image.data", "150")
        assert await service.list_all(dataset.name) == []
        (ack,) = await service.upload(dataset.name, [[item_upload("fine", image=png(10, 12)), item_upload("square", image=png(12, 12, seed=1))]])
        assert sorted(ack.item_names) == [f"{dataset.name}/items/fine", f"{dataset.name}/items/square"]
        # Imports check their images against the same limit: MNIST digits have 28 x 28 = 784 pixels.
        client = AnnotationClient(server.address, timeout=60)
        try:
            digits = np.zeros((2, 28, 28), np.uint8)
            with pytest.raises(JobFailedError) as failed:
                await asyncio.to_thread(client.import_mnist, dataset.name, digits, [3, 4])
        finally:
            client.close()
        assert (failed.value.reason, failed.value.metadata["limit"]) == ("IMAGE_TOO_MANY_PIXELS", "150")
        assert len(await service.list_all(dataset.name)) == 2
    finally:
        await channel.close()
        await server.stop(1.0)
