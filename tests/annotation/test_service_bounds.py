"""Behaviour a mutation trial found untested: the page-size default and cap, UpdateItem's box
bounds policy, and which rows a version made right after a delete or an update holds."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_services.core.api.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

from .conftest import Annotations, item_upload, png, rpc_error

W, H = 16, 12  # the conftest's default image size
CATEGORIES = [pb.Category(category_id=1, display_name="car")]
IMAGE = png(plain=True)


def _box(x: float, y: float, w: float, h: float) -> pb.Annotation:
    return pb.Annotation(category_id=1, box=pb.Box(x=x, y=y, w=w, h=h))


async def test_page_size_zero_means_the_default_and_large_sizes_are_capped(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    total = MAX_PAGE_SIZE + 5
    batches = [[item_upload(f"i{n:05d}", image=IMAGE) for n in range(start, min(start + 256, total))] for start in range(0, total, 256)]
    await annotation.upload(dataset.name, batches)

    default = await annotation.stub.ListItems(api.ListItemsRequest(parent=dataset.name))
    assert len(default.items) == DEFAULT_PAGE_SIZE == 100 and default.next_page_token
    capped = await annotation.stub.ListItems(api.ListItemsRequest(parent=dataset.name, page_size=50_000))
    assert len(capped.items) == MAX_PAGE_SIZE == 1000 and capped.next_page_token
    rest = await annotation.stub.ListItems(api.ListItemsRequest(parent=dataset.name, page_size=50_000, page_token=capped.next_page_token))
    assert len(rest.items) == 5 and not rest.next_page_token
    exact = await annotation.stub.ListItems(api.ListItemsRequest(parent=dataset.name, page_size=7))
    assert len(exact.items) == 7


async def test_update_item_rejects_a_box_outside_the_image_unless_asked_to_clip(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    name = await annotation.upload_one(dataset.name, item_upload("a", annotations=[_box(1, 1, 2, 2)]))
    outside = pb.Item(name=name, annotations=[_box(-2, 3, 6, 20)])  # left of and below the 16x12 image
    mask = field_mask_pb2.FieldMask(paths=["annotations"])

    with pytest.raises(grpc.RpcError) as rejected:
        await annotation.stub.UpdateItem(api.UpdateItemRequest(item=outside, update_mask=mask))
    error = rpc_error(rejected.value)
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "BOX_OUT_OF_BOUNDS")
    assert error.metadata["field"].startswith("item.annotations[0].box")
    unchanged = (await annotation.stub.GetItem(api.GetItemRequest(name=name, view=pb.ITEM_VIEW_BASIC))).item
    assert [(a.box.x, a.box.y, a.box.w, a.box.h) for a in unchanged.annotations] == [(1, 1, 2, 2)]

    explicit_reject = api.UpdateItemRequest(item=outside, update_mask=mask, box_bounds_policy=pb.BOX_BOUNDS_POLICY_REJECT)
    with pytest.raises(grpc.RpcError):
        await annotation.stub.UpdateItem(explicit_reject)

    clipped = await annotation.stub.UpdateItem(api.UpdateItemRequest(item=outside, update_mask=mask, box_bounds_policy=pb.BOX_BOUNDS_POLICY_CLIP))
    (box,) = [a.box for a in clipped.item.annotations]
    assert (box.x, box.y, box.w, box.h) == (0, 3, 4, H - 3)


async def test_a_version_committed_right_after_a_delete_or_update_holds_the_state_at_its_sequence(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    names = [await annotation.upload_one(dataset.name, item_upload(i, image=IMAGE, split="train")) for i in ("a", "b", "c")]
    first = await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))

    # The delete takes the dataset's next sequence number and the commit is made at that same
    # number: the removed row must be outside the new version and still inside the old one.
    await annotation.stub.DeleteItem(api.DeleteItemRequest(name=names[1]))
    second = await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    # An update removes the old row and adds the new one at one sequence number: the version has only the new one.
    updated = pb.Item(name=names[2], split="val")
    await annotation.stub.UpdateItem(api.UpdateItemRequest(item=updated, update_mask=field_mask_pb2.FieldMask(paths=["split"])))
    third = await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))

    def ids(items: list[pb.Item]) -> list[tuple[str, str]]:
        return sorted((i.name.rsplit("/", 1)[1], i.split) for i in items)

    assert ids(await annotation.list_all(first.version.name)) == [("a", "train"), ("b", "train"), ("c", "train")]
    assert ids(await annotation.list_all(second.version.name)) == [("a", "train"), ("c", "train")]
    assert ids(await annotation.list_all(third.version.name)) == [("a", "train"), ("c", "val")]
    assert (second.version.item_count, third.version.item_count) == (2, 2)
    with pytest.raises(grpc.RpcError) as gone:
        await annotation.stub.GetItem(api.GetItemRequest(name=f"{second.version.name}/items/b"))
    assert rpc_error(gone.value).reason == "ITEM_NOT_FOUND"
    streamed = [item async for response in annotation.stub.StreamItems(api.StreamItemsRequest(parent=second.version.name)) for item in response.items]
    assert ids(streamed) == [("a", "train"), ("c", "train")]
