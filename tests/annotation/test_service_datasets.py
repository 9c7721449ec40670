"""Datasets and categories: create, get, list (filters, pages), delete."""

from __future__ import annotations

import grpc
import pytest

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api

from .conftest import Annotations, item_upload, rpc_error


async def test_create_get_list_and_delete_datasets(annotation: Annotations) -> None:
    stub = annotation.stub
    created = await annotation.create_dataset(
        "streets", display_name="Street scenes", description="Cars\nand people", labels={"team": "vision", "tier": "gold"},
        categories=[pb.Category(display_name="car"), pb.Category(category_id=9, display_name="person"), pb.Category(display_name="bike")],
    )
    assert (created.name, created.display_name, created.description) == ("datasets/streets", "Street scenes", "Cars\nand people")
    assert (dict(created.labels), created.category_count, created.item_count, created.latest_version) == ({"team": "vision", "tier": "gold"}, 3, 0, 0)
    got = (await stub.GetDataset(api.GetDatasetRequest(name="datasets/streets"))).dataset
    assert got == created
    # Ids left at 0 get the next free ids after the ones given.
    ids = [(c.category_id, c.display_name) for c in (await stub.ListCategories(api.ListCategoriesRequest(parent=got.name))).categories]
    assert ids == [(9, "person"), (10, "car"), (11, "bike")]

    for index, dataset_id in enumerate(["alpha", "beta", "gamma", "delta"]):
        await annotation.create_dataset(dataset_id, labels={"team": "vision" if index % 2 else "audio"})
    names = []
    token = ""
    while True:
        page = await stub.ListDatasets(api.ListDatasetsRequest(page_size=2, page_token=token))
        names.extend(d.name for d in page.datasets)
        token = page.next_page_token
        if not token:
            break
    assert names == [f"datasets/{n}" for n in ("alpha", "beta", "delta", "gamma", "streets")]
    vision = await stub.ListDatasets(api.ListDatasetsRequest(filter='labels.team = "vision"', order_by="create_time desc"))
    assert [d.name for d in vision.datasets] == ["datasets/delta", "datasets/beta", "datasets/streets"]

    await stub.DeleteDataset(api.DeleteDatasetRequest(name="datasets/beta"))
    with pytest.raises(grpc.RpcError) as caught:
        await stub.GetDataset(api.GetDatasetRequest(name="datasets/beta"))
    error = rpc_error(caught.value)
    assert (error.code, error.reason, error.metadata["dataset"]) == (grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND", "datasets/beta")


async def test_deleting_a_dataset_with_content_needs_force(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset("full", categories=[pb.Category(category_id=1, display_name="x")])
    await annotation.upload_one(dataset.name, item_upload("one", annotations=[pb.Annotation(category_id=1, class_label=pb.ClassLabel())]))
    await stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    with pytest.raises(grpc.RpcError) as caught:
        await stub.DeleteDataset(api.DeleteDatasetRequest(name=dataset.name))
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "DATASET_NOT_EMPTY")
    await stub.DeleteDataset(api.DeleteDatasetRequest(name=dataset.name, force=True))
    # The name is free again, and nothing of the old dataset shows through.
    again = await annotation.create_dataset("full")
    assert (again.item_count, again.category_count, again.latest_version) == (0, 0, 0)
    assert await annotation.list_all(again.name) == []


async def test_categories_create_get_list_delete(annotation: Annotations) -> None:
    stub = annotation.stub
    dataset = await annotation.create_dataset()
    person = pb.Category(
        display_name="person", supercategory="human", keypoint_names=["nose", "left_eye", "right_eye"],
        skeleton=[pb.KeypointPair(first=0, second=1)], flip_pairs=[pb.KeypointPair(first=1, second=2)],
    )
    made = (await stub.CreateCategory(api.CreateCategoryRequest(parent=dataset.name, category=person))).category
    expected = pb.Category()
    expected.CopyFrom(person)
    expected.category_id, expected.name = 1, f"{dataset.name}/categories/1"
    assert made == expected
    assert (await stub.GetCategory(api.GetCategoryRequest(name=made.name))).category == expected
    for name in ("a", "b", "c", "d"):
        await stub.CreateCategory(api.CreateCategoryRequest(parent=dataset.name, category=pb.Category(display_name=name)))
    listed, token = [], ""
    while True:
        page = await stub.ListCategories(api.ListCategoriesRequest(parent=dataset.name, page_size=2, page_token=token))
        listed.extend(c.category_id for c in page.categories)
        token = page.next_page_token
        if not token:
            break
    assert listed == [1, 2, 3, 4, 5]

    for duplicate, field in ((pb.Category(category_id=2, display_name="new"), "category.category_id"), (pb.Category(display_name="a"), "category.display_name")):
        with pytest.raises(grpc.RpcError) as caught:
            await stub.CreateCategory(api.CreateCategoryRequest(parent=dataset.name, category=duplicate))
        error = rpc_error(caught.value)
        assert (error.code, error.reason, error.metadata["field"]) == (grpc.StatusCode.ALREADY_EXISTS, "CATEGORY_ALREADY_EXISTS", field)

    await annotation.upload_one(dataset.name, item_upload("uses-a", annotations=[pb.Annotation(category_id=2, class_label=pb.ClassLabel())]))
    with pytest.raises(grpc.RpcError) as caught:
        await stub.DeleteCategory(api.DeleteCategoryRequest(name=f"{dataset.name}/categories/2"))
    error = rpc_error(caught.value)
    assert (error.code, error.reason, error.metadata["annotation_count"]) == (grpc.StatusCode.FAILED_PRECONDITION, "CATEGORY_IN_USE", "1")
    await stub.DeleteCategory(api.DeleteCategoryRequest(name=f"{dataset.name}/categories/3"))
    remaining = (await stub.ListCategories(api.ListCategoriesRequest(parent=dataset.name))).categories
    assert [c.category_id for c in remaining] == [1, 2, 4, 5]
    # A deleted id is not handed out again.
    fresh = (await stub.CreateCategory(api.CreateCategoryRequest(parent=dataset.name, category=pb.Category(display_name="e")))).category
    assert fresh.category_id == 6
