"""Versions: committed content never changes, whatever happens to the working state afterwards."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api

from .conftest import Annotations, item_upload, png, rpc_error

CATEGORIES = [
    pb.Category(category_id=1, display_name="car"),
    pb.Category(category_id=2, display_name="bus"),
    pb.Category(category_id=3, display_name="road"),
]


def _box(category_id: int, x: float) -> pb.Annotation:
    return pb.Annotation(category_id=category_id, box=pb.Box(x=x, y=1, w=2, h=3))


async def _snapshot(annotation: Annotations, version_parent: str) -> list[bytes]:
    """Everything a client can read of one version, serialized (deterministic)."""
    stub = annotation.stub
    out = [(await stub.GetVersion(api.GetVersionRequest(name=version_parent))).SerializeToString(deterministic=True)]
    listing = await stub.ListItems(api.ListItemsRequest(parent=version_parent, page_size=1000, view=pb.ITEM_VIEW_FULL))
    out.append(listing.SerializeToString(deterministic=True))
    for item in listing.items:
        item_id = item.name.rsplit("/", 1)[1]
        got = await stub.GetItem(api.GetItemRequest(name=f"{version_parent}/items/{item_id}"))
        out.append(got.SerializeToString(deterministic=True))
    out.append((await stub.ListCategories(api.ListCategoriesRequest(parent=version_parent))).SerializeToString(deterministic=True))
    out.append((await stub.GetStatistics(api.GetStatisticsRequest(parent=version_parent))).SerializeToString(deterministic=True))
    out.append(
        (await stub.ListItems(api.ListItemsRequest(parent=version_parent, filter='category = "road"'))).SerializeToString(deterministic=True)
    )
    streamed = [r async for r in stub.StreamItems(api.StreamItemsRequest(parent=version_parent))]
    out.extend(r.SerializeToString(deterministic=True) for r in streamed)
    return out


async def test_a_version_reads_the_same_after_edits_deletes_and_category_deletion(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await annotation.upload(
        dataset.name,
        [[
            item_upload("a", annotations=[_box(1, 1), _box(3, 4)], attributes={"weather": "fog"}),
            item_upload("b", image=png(seed=2), annotations=[_box(2, 0)], split="val"),
            item_upload("c", image=png(seed=3)),
        ]],
    )
    first = await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name, description="first"))
    assert first.created and first.version.version == 1 and first.version.item_count == 3 and first.version.annotation_count == 3
    v1 = f"{dataset.name}/versions/1"
    before = await _snapshot(annotation, v1)

    # Change everything the working state allows.
    item_a = f"{dataset.name}/items/a"
    await stub.UpdateItem(api.UpdateItemRequest(
        item=pb.Item(name=item_a, split="test", attributes={"weather": "rain"}, annotations=[_box(2, 5)]),
        update_mask=FieldMask(paths=["split", "attributes", "annotations"]),
    ))
    await stub.DeleteItem(api.DeleteItemRequest(name=f"{dataset.name}/items/b"))
    await stub.DeleteCategory(api.DeleteCategoryRequest(name=f"{dataset.name}/categories/3"))
    await stub.CreateCategory(api.CreateCategoryRequest(parent=dataset.name, category=pb.Category(display_name="truck")))
    await annotation.upload(dataset.name, [[item_upload("d", image=png(seed=4), annotations=[_box(4, 0)])]])
    second = await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    assert second.created and second.version.version == 2

    assert await _snapshot(annotation, v1) == before
    # The deleted category and item are still there in version 1, and gone from the working state.
    old_road = (await stub.GetCategory(api.GetCategoryRequest(name=f"{v1}/categories/3"))).category
    assert old_road.display_name == "road"
    with pytest.raises(grpc.RpcError) as caught:
        await stub.GetCategory(api.GetCategoryRequest(name=f"{dataset.name}/categories/3"))
    assert rpc_error(caught.value).reason == "CATEGORY_NOT_FOUND"
    assert (await stub.GetItem(api.GetItemRequest(name=f"{v1}/items/b"))).item.version == 1
    with pytest.raises(grpc.RpcError) as caught:
        await stub.GetItem(api.GetItemRequest(name=f"{v1}/items/d"))
    missing = rpc_error(caught.value)
    assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "ITEM_NOT_FOUND")

    latest = await _snapshot(annotation, f"{dataset.name}/versions/latest")
    assert latest == await _snapshot(annotation, f"{dataset.name}/versions/2")
    assert latest != before
    v2_items = await annotation.list_all(f"{dataset.name}/versions/2")
    assert [i.name.rsplit("/", 1)[1] for i in v2_items] == ["a", "c", "d"]
    assert v2_items[0].split == "test" and v2_items[0].version == 2


async def test_commit_without_changes_returns_the_latest_version(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await annotation.upload_one(dataset.name, item_upload("x", annotations=[_box(1, 0)]))
    first = await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    again = await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name, description="retry"))
    assert first.created and not again.created and again.version == first.version
    # An empty batch, a failed delete and a refused category change nothing either.
    (ack,) = await annotation.upload(dataset.name, [[]])
    assert list(ack.item_names) == [] and not ack.replayed
    with pytest.raises(grpc.RpcError) as no_item:
        await stub.DeleteItem(api.DeleteItemRequest(name=f"{dataset.name}/items/missing"))
    assert rpc_error(no_item.value).reason == "ITEM_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as in_use:
        await stub.DeleteCategory(api.DeleteCategoryRequest(name=f"{dataset.name}/categories/1"))
    assert rpc_error(in_use.value).reason == "CATEGORY_IN_USE"
    assert not (await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))).created
    await annotation.upload_one(dataset.name, item_upload("y", image=png(seed=8)))
    third = await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    assert third.created and third.version.version == 2
    got = (await stub.GetDataset(api.GetDatasetRequest(name=dataset.name))).dataset
    assert got.latest_version == 2


async def test_equal_content_gives_equal_digests(annotation: Annotations) -> None:
    stub = annotation.stub
    digests = []
    for dataset_id in ("left", "right"):
        dataset = await annotation.create_dataset(dataset_id, categories=CATEGORIES)
        await annotation.upload(dataset.name, [[item_upload("p", annotations=[_box(1, 1)]), item_upload("q", image=png(seed=1))]])
        digests.append((await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))).version.content_sha256)
    assert digests[0] == digests[1]
    # One changed number, another digest.
    await stub.UpdateItem(api.UpdateItemRequest(
        item=pb.Item(name="datasets/right/items/p", annotations=[_box(1, 1.5)]), update_mask=FieldMask(paths=["annotations"])
    ))
    changed = (await stub.CommitVersion(api.CommitVersionRequest(parent="datasets/right"))).version
    assert changed.content_sha256 != digests[0] and len(changed.content_sha256) == 64


async def test_list_versions_newest_first_over_pages(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset()
    for index in range(5):
        await annotation.upload_one(dataset.name, item_upload(f"i{index}", image=png(seed=index)))
        await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name, description=f"v{index + 1}"))
    seen = []
    token = ""
    while True:
        page = await stub.ListVersions(api.ListVersionsRequest(parent=dataset.name, page_size=2, page_token=token))
        seen.extend((v.version, v.description, v.item_count) for v in page.versions)
        token = page.next_page_token
        if not token:
            break
    assert seen == [(n, f"v{n}", n) for n in range(5, 0, -1)]
    with pytest.raises(grpc.RpcError) as caught:
        await stub.GetVersion(api.GetVersionRequest(name=f"{dataset.name}/versions/6"))
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.NOT_FOUND, "VERSION_NOT_FOUND")
