"""Staged versions: items uploaded with a staging_id are invisible until CommitStagedVersion makes them a
version at once; the working state never changes; derived_from and multi-source lineage round-trip."""

from __future__ import annotations

import uuid

import grpc
import pytest

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.common.v1 import common_pb2

from .conftest import Annotations, item_upload, png, rpc_error

CATEGORIES = [pb.Category(category_id=1, display_name="car")]
DIGEST = "ab" * 32


def _box(x: float) -> pb.Annotation:
    return pb.Annotation(category_id=1, box=pb.Box(x=x, y=1, w=2, h=3))


async def _stage(
    annotation: Annotations, parent: str, staging_id: str, uploads: list, request_id: str = "", categories: tuple = ()
) -> api.UploadItemsResponse:
    request = api.UploadItemsRequest(
        parent=parent, request_id=request_id or str(uuid.uuid4()), items=uploads, staging_id=staging_id, categories=categories
    )

    async def one():  # noqa: ANN202
        yield request

    (ack,) = [a async for a in annotation.stub.UploadItems(one())]
    return ack


async def test_a_staged_version_appears_at_commit_only_and_leaves_the_working_state_alone(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await annotation.upload(dataset.name, [[item_upload("w", annotations=[_box(0)])]])
    first = (await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))).version
    working_before = await annotation.list_all(dataset.name)

    lineage = common_pb2.Lineage(augmented=common_pb2.AugmentedSource(
        source_item=f"{dataset.name}/items/w", pipeline_digest=DIGEST, seed=5, copy_index=1,
        sources=[common_pb2.VersionedItem(item=f"{dataset.name}/items/w", version=first.name),
                 common_pb2.VersionedItem(item=f"{dataset.name}/items/x", version=first.name)],
    ))
    ack = await _stage(annotation, dataset.name, "job-1", [item_upload("a", annotations=[_box(1)], lineage=lineage)], request_id="b1")
    replay = await _stage(annotation, dataset.name, "job-1", [item_upload("a", annotations=[_box(1)], lineage=lineage)], request_id="b1")
    assert replay.replayed and list(replay.item_names) == list(ack.item_names)
    await _stage(annotation, dataset.name, "job-1", [item_upload("w", image=png(seed=4))])  # ids are per staging
    # Invisible: not in the working state, no version yet, not the latest.
    assert [i.name for i in await annotation.list_all(dataset.name)] == [i.name for i in working_before]
    assert (await stub.GetDataset(api.GetDatasetRequest(name=dataset.name))).dataset.latest_version == 1

    derived = pb.DerivedFrom(source_version=first.name, pipeline_digest=DIGEST)
    committed = await stub.CommitStagedVersion(api.CommitStagedVersionRequest(
        parent=dataset.name, staging_id="job-1", description="derived", derived_from=derived))
    assert committed.created and committed.version.version == 2 and committed.version.item_count == 2
    assert committed.version.annotation_count == 1 and committed.version.derived_from == derived
    again = await stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="job-1"))
    assert not again.created and again.version == committed.version
    got = (await stub.GetVersion(api.GetVersionRequest(name=f"{dataset.name}/versions/2"))).version
    assert got.derived_from == derived and not first.HasField("derived_from")
    v2 = f"{dataset.name}/versions/2"
    assert sorted(i.name.rsplit("/", 1)[1] for i in await annotation.list_all(v2)) == ["a", "w"]
    item = (await stub.GetItem(api.GetItemRequest(name=f"{v2}/items/a"))).item
    assert item.lineage == lineage and [a.box.x for a in item.annotations] == [1]
    streamed = [i for r in [r async for r in stub.StreamItems(api.StreamItemsRequest(parent=v2))] for i in r.items]
    assert [i.lineage for i in streamed if i.name.endswith("/a")] == [lineage]
    assert [c.display_name for c in (await stub.ListCategories(api.ListCategoriesRequest(parent=v2))).categories] == ["car"]
    # The working state is what it was; version 1 too; a plain commit of it is a new version 3 with its content.
    assert [i.name for i in await annotation.list_all(dataset.name)] == [i.name for i in working_before]
    assert [i.name.rsplit("/", 1)[1] for i in await annotation.list_all(first.name)] == ["w"]
    third = await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    assert third.created and third.version.version == 3 and third.version.content_sha256 == first.content_sha256
    # A committed staging takes no more items.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _stage(annotation, dataset.name, "job-1", [item_upload("z")])
    assert (raised.value.code(), rpc_error(raised.value).reason) == (grpc.StatusCode.FAILED_PRECONDITION, "STAGING_COMMITTED")


async def test_a_discarded_staging_leaves_no_version_and_no_item(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await _stage(annotation, dataset.name, "job-2", [item_upload("a", annotations=[_box(1)])])
    await stub.DiscardStaging(api.DiscardStagingRequest(parent=dataset.name, staging_id="job-2"))
    await stub.DiscardStaging(api.DiscardStagingRequest(parent=dataset.name, staging_id="job-2"))  # idempotent
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="job-2"))
    assert (raised.value.code(), rpc_error(raised.value).reason) == (grpc.StatusCode.NOT_FOUND, "STAGING_NOT_FOUND")
    assert (await stub.GetDataset(api.GetDatasetRequest(name=dataset.name))).dataset.latest_version == 0
    assert await annotation.list_all(dataset.name) == []
    # The same staging id starts afresh.
    await _stage(annotation, dataset.name, "job-2", [item_upload("b")])
    done = await stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="job-2"))
    assert [i.name.rsplit("/", 1)[1] for i in await annotation.list_all(done.version.name)] == ["b"]


@pytest.mark.parametrize(
    ("request_fields", "code", "reason"),
    [
        ({"staging_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STAGING_ID"),
        ({"staging_id": "a/b"}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_STAGING_ID"),
        ({"staging_id": "never"}, grpc.StatusCode.NOT_FOUND, "STAGING_NOT_FOUND"),
        ({"derived_from": pb.DerivedFrom(source_version="datasets/x/versions/latest")}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DERIVED_FROM"),
        ({"derived_from": pb.DerivedFrom(source_version="datasets/x/versions/1", pipeline_digest="XY")}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DERIVED_FROM"),
        ({"derived_from": pb.DerivedFrom(pipeline_digest=DIGEST)}, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DERIVED_FROM"),
        ({"derived_from": pb.DerivedFrom(source_version="datasets/nope/versions/1")}, grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND"),
    ],
)
async def test_bad_staged_version_commits_get_a_precise_status(annotation: Annotations, request_fields: dict, code: grpc.StatusCode, reason: str) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    fields = {"staging_id": "s", **request_fields}
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await annotation.stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, **fields))
    assert (raised.value.code(), rpc_error(raised.value).reason) == (code, reason)


async def test_bad_lineage_sources_are_rejected_with_their_field(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    lineage = common_pb2.Lineage(augmented=common_pb2.AugmentedSource(
        sources=[common_pb2.VersionedItem(item=f"{dataset.name}/items/w", version="datasets/other/versions/1")]))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _stage(annotation, dataset.name, "s", [item_upload("a", lineage=lineage)])
    error = rpc_error(raised.value)
    assert (raised.value.code(), error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_LINEAGE")
    assert error.metadata["field"].endswith("augmented.sources[0].version")
    synthetic = common_pb2.Lineage(synthetic=common_pb2.SyntheticSource(generator="models/g", truncation=0.7, attributes=[1, 0], label=3))
    await _stage(annotation, dataset.name, "s", [item_upload("b", lineage=synthetic)])
    done = await annotation.stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="s"))
    item = (await annotation.stub.GetItem(api.GetItemRequest(name=f"{done.version.name}/items/b"))).item
    assert item.lineage == synthetic and item.lineage.synthetic.HasField("truncation")


async def test_a_category_deleted_after_staging_fails_the_commit_and_nothing_is_committed(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=[*CATEGORIES, pb.Category(category_id=2, display_name="bus")])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _stage(annotation, dataset.name, "s", [item_upload("a", annotations=[pb.Annotation(category_id=9, box=pb.Box(x=1, y=1, w=2, h=2))])])
    assert (raised.value.code(), rpc_error(raised.value).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_CATEGORY")
    await _stage(annotation, dataset.name, "s", [item_upload("a", annotations=[pb.Annotation(category_id=2, box=pb.Box(x=1, y=1, w=2, h=2))])])
    # Staged items do not hold a category in the working state: it can go, and then the commit is refused.
    await stub.DeleteCategory(api.DeleteCategoryRequest(name=f"{dataset.name}/categories/2"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="s"))
    error = rpc_error(raised.value)
    assert (raised.value.code(), error.reason, error.metadata["category_id"]) == (grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_DELETED", "2")
    assert (await stub.GetDataset(api.GetDatasetRequest(name=dataset.name))).dataset.latest_version == 0
    # Created again, the commit goes through, with the working state's categories.
    await stub.CreateCategory(api.CreateCategoryRequest(parent=dataset.name, category=pb.Category(category_id=2, display_name="bus")))
    done = await stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="s"))
    listed = await stub.ListCategories(api.ListCategoriesRequest(parent=done.version.name))
    assert [c.category_id for c in listed.categories] == [1, 2] and done.version.annotation_count == 1


DEER = pb.Category(category_id=3, display_name="deer", keypoint_names=["left_ear", "right_ear"])


def _deer(x: float) -> pb.Annotation:
    return pb.Annotation(category_id=3, box=pb.Box(x=x, y=1, w=2, h=3))


async def _names(annotation: Annotations, parent: str) -> list[str]:
    return [c.display_name for c in (await annotation.stub.ListCategories(api.ListCategoriesRequest(parent=parent))).categories]


async def test_staged_categories_reach_the_version_and_never_the_working_state(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    # The first batch stages the category its items use; a later batch may use it too, or repeat it unchanged.
    await _stage(annotation, dataset.name, "job", [item_upload("a", annotations=[_deer(1), _box(2)])], request_id="open", categories=(DEER,))
    await _stage(annotation, dataset.name, "job", [item_upload("b", annotations=[_deer(3)])], categories=(DEER,))
    await _stage(annotation, dataset.name, "job", [item_upload("c", annotations=[_deer(4)])])
    assert await _names(annotation, dataset.name) == ["car"]
    # The working state may not use it (it has no such category), and a new category cannot take its id.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await annotation.upload(dataset.name, [[item_upload("w", annotations=[_deer(1)])]])
    assert rpc_error(raised.value).reason == "UNKNOWN_CATEGORY"
    # The working state moves on: a category of its own, under another id and name.
    await stub.CreateCategory(api.CreateCategoryRequest(parent=dataset.name, category=pb.Category(category_id=4, display_name="bus")))
    done = await stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="job"))
    assert done.version.item_count == 3 and done.version.annotation_count == 4
    assert await _names(annotation, done.version.name) == ["car", "deer", "bus"]
    listed = (await stub.ListCategories(api.ListCategoriesRequest(parent=done.version.name))).categories
    assert [list(c.keypoint_names) for c in listed if c.category_id == 3] == [["left_ear", "right_ear"]]
    assert await _names(annotation, dataset.name) == ["car", "bus"]
    # A replayed batch answers as the first time, even though its staging is committed now.
    replay = await _stage(annotation, dataset.name, "job", [item_upload("a", annotations=[_deer(1), _box(2)])], request_id="open", categories=(DEER,))
    assert replay.replayed and [n.rsplit("/", 1)[1] for n in replay.item_names] == ["a"]


async def test_a_discarded_staging_takes_its_categories_with_it(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await _stage(annotation, dataset.name, "job", [item_upload("a", annotations=[_deer(1)])], categories=(DEER,))
    await annotation.stub.DiscardStaging(api.DiscardStagingRequest(parent=dataset.name, staging_id="job"))
    # The same staging id starts afresh: another definition of category 3 is no conflict now.
    moose = pb.Category(category_id=3, display_name="moose")
    await _stage(annotation, dataset.name, "job", [item_upload("a", annotations=[_deer(1)])], categories=(moose,))
    done = await annotation.stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="job"))
    assert await _names(annotation, done.version.name) == ["car", "moose"]
    assert await _names(annotation, dataset.name) == ["car"]


@pytest.mark.parametrize(
    ("categories", "staging_id", "code", "reason", "field"),
    [
        ((pb.Category(category_id=1, display_name="truck"),), "job", grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_CONFLICT", "categories[0]"),
        ((DEER, pb.Category(category_id=5, display_name="car")), "job", grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_CONFLICT", "categories[1]"),
        ((pb.Category(category_id=3, display_name="deer"),), "staged", grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_CONFLICT", "categories[0]"),
        ((pb.Category(category_id=0, display_name="x"),), "job", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CATEGORY", "categories[0].category_id"),
        ((DEER, DEER), "job", grpc.StatusCode.INVALID_ARGUMENT, "DUPLICATE_CATEGORY", "categories[1].category_id"),
        ((DEER,), "", grpc.StatusCode.INVALID_ARGUMENT, "CATEGORIES_NEED_STAGING", "categories"),
    ],
)
async def test_bad_staged_categories_get_a_precise_status_and_write_nothing(
    annotation: Annotations, categories: tuple, staging_id: str, code: grpc.StatusCode, reason: str, field: str
) -> None:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await _stage(annotation, dataset.name, "staged", [item_upload("s", annotations=[_deer(1)])], categories=(DEER,))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _stage(annotation, dataset.name, staging_id, [item_upload("a", annotations=[_box(1)])], categories=categories)
    error = rpc_error(raised.value)
    assert (raised.value.code(), error.reason, error.metadata["field"]) == (code, reason, field)
    assert await annotation.list_all(dataset.name) == [] and await _names(annotation, dataset.name) == ["car"]
    if staging_id == "job":  # the refused batch opened no staging
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await annotation.stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="job"))
        assert rpc_error(raised.value).reason == "STAGING_NOT_FOUND"
    done = await annotation.stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="staged"))
    assert await _names(annotation, done.version.name) == ["car", "deer"]


async def test_a_working_category_that_takes_a_staged_name_fails_the_commit(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    await _stage(annotation, dataset.name, "job", [item_upload("a", annotations=[_deer(1)])], categories=(DEER,))
    other = await stub.CreateCategory(api.CreateCategoryRequest(parent=dataset.name, category=pb.Category(category_id=7, display_name="deer")))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="job"))
    error = rpc_error(raised.value)
    assert (raised.value.code(), error.reason, error.metadata["category_id"]) == (grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_CONFLICT", "7")
    assert (await stub.GetDataset(api.GetDatasetRequest(name=dataset.name))).dataset.latest_version == 0
    await stub.DeleteCategory(api.DeleteCategoryRequest(name=other.category.name))
    done = await stub.CommitStagedVersion(api.CommitStagedVersionRequest(parent=dataset.name, staging_id="job"))
    assert await _names(annotation, done.version.name) == ["car", "deer"]
