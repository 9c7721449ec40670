"""Inputs a hostile client sends: each gets INVALID_ARGUMENT with its stable reason, never
INTERNAL, and an error that repeats a client's value still fits gRPC's metadata limit."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_services.annotation.formats.coco import load_coco
from simulacra_services.core import errors
from simulacra_services.core.errors import MAX_MESSAGE_BYTES, MAX_METADATA_VALUE_BYTES

from .conftest import Annotations, item_upload, rpc_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
HUGE = "1" + "0" * 30  # far outside int64
CATEGORIES = [pb.Category(category_id=1, display_name="car")]


async def _dataset_with_item(annotation: Annotations) -> tuple[str, str]:
    dataset = await annotation.create_dataset(categories=CATEGORIES)
    item = await annotation.upload_one(dataset.name, item_upload("a", split="train"))
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    return dataset.name, item


# ---- integers outside int64 in filters ---------------------------------------------------


@pytest.mark.parametrize("text", [f"width > {HUGE}", f"height < -{HUGE}", "width = 9223372036854775808"])
async def test_filter_integers_outside_int64_are_invalid_filter_in_every_rpc(annotation: Annotations, text: str) -> None:
    parent, _ = await _dataset_with_item(annotation)
    version = parent + "/versions/latest"
    calls = {
        "ListItems": annotation.stub.ListItems(api.ListItemsRequest(parent=parent, filter=text)),
        "ListDatasets": annotation.stub.ListDatasets(api.ListDatasetsRequest(filter=text.replace("width", "item_count").replace("height", "item_count"))),
        "GetStatistics": annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=version, filter=text)),
        "StreamItems": annotation.stub.StreamItems(api.StreamItemsRequest(parent=version, filter=text)).read(),
        "CreateExportJob": annotation.stub.CreateExportJob(
            api.CreateExportJobRequest(parent=parent, export_job=pb.ExportJob(version=version, format=pb.EXPORT_FORMAT_COCO, filter=text))
        ),
    }
    for rpc, call in calls.items():
        with pytest.raises(grpc.RpcError) as raised:
            await call
        error = rpc_error(raised.value)
        assert (error.code, error.reason) == (INVALID, "INVALID_FILTER"), rpc
        assert "64-bit" in error.message, rpc


async def test_the_int64_bounds_themselves_are_accepted(annotation: Annotations) -> None:
    parent, item = await _dataset_with_item(annotation)
    inside = await annotation.list_all(parent, filter="width < 9223372036854775807 AND height > -9223372036854775808")
    assert [i.name for i in inside] == [item]
    # Beyond 32 bits (PostgreSQL's INTEGER columns) but inside int64: a valid filter that matches nothing.
    assert await annotation.list_all(parent, filter="width > 3000000000 OR category_id = 4294967296") == []
    datasets = await annotation.stub.ListDatasets(api.ListDatasetsRequest(filter="item_count > 3000000000"))
    assert list(datasets.datasets) == []


# ---- long values echoed in errors ----------------------------------------------------------

LONG = "x" * 6000
LONG_UNICODE = "\U0001f600" * 6000  # 4 UTF-8 bytes each: 24 kB, percent-encoded x3 in grpc-message


def _check_bounded(error: errors.SimulacraError | object) -> None:
    assert len(error.message.encode()) <= MAX_MESSAGE_BYTES  # type: ignore[attr-defined]
    assert all(len(v.encode()) <= MAX_METADATA_VALUE_BYTES for v in error.metadata.values())  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [LONG, LONG_UNICODE], ids=["ascii", "emoji"])
async def test_errors_that_repeat_a_huge_value_keep_their_reason(annotation: Annotations, value: str) -> None:
    parent, item = await _dataset_with_item(annotation)
    bad_key = "K" + value  # upper case: never a valid attribute or label key
    cases = {
        "dataset_id": (annotation.stub.CreateDataset(api.CreateDatasetRequest(dataset_id=value)), "INVALID_DATASET_ID"),
        "item_id": (annotation.upload(parent, [[item_upload(value)]]), None),
        "split": (annotation.upload(parent, [[item_upload("s", split=value)]]), None),
        "attribute key": (annotation.upload(parent, [[item_upload("k", attributes={bad_key: "v"})]]), None),
        "instance_id": (
            annotation.upload(parent, [[item_upload("i", annotations=[pb.Annotation(category_id=1, instance_id=value, class_label=pb.ClassLabel())])]]),
            None,
        ),
        "label key": (annotation.stub.CreateDataset(api.CreateDatasetRequest(dataset_id="labels", dataset=pb.Dataset(labels={bad_key: "v"}))), None),
        "order_by": (annotation.stub.ListItems(api.ListItemsRequest(parent=parent, order_by=value)), "INVALID_ORDER_BY"),
        "update_mask": (
            annotation.stub.UpdateItem(api.UpdateItemRequest(item=pb.Item(name=item), update_mask=field_mask_pb2.FieldMask(paths=[value]))),
            "INVALID_UPDATE_MASK",
        ),
        "item name": (annotation.stub.GetItem(api.GetItemRequest(name=parent + "/items/" + value)), "INVALID_NAME"),
        # The upload handler adds the request id to the error's metadata after it was raised.
        "request_id": (annotation.upload(parent, [[item_upload("r")]], request_ids=[value]), "INVALID_REQUEST_ID"),
    }
    for what, (call, reason) in cases.items():
        with pytest.raises(grpc.RpcError) as raised:
            await call
        error = rpc_error(raised.value)
        # RESOURCE_EXHAUSTED here would mean the error itself outgrew the metadata limit.
        assert error.code is INVALID, (what, error.code, error.message[:100])
        assert error.reason and error.reason != "INTERNAL", what
        if reason:
            assert error.reason == reason, what
        _check_bounded(error)


def test_shown_cuts_long_values_and_keeps_short_ones() -> None:
    assert errors.shown("abc") == "abc"
    assert errors.shown("a" * 500) == "a" * 200 + "..."
    assert errors.shown(12345, limit=3) == "123..."
    error = errors.InvalidArgument("BAD", "m" * 5000, {"k" * 100: "v" * 5000, **{f"e{i}": i for i in range(40)}})
    assert len(error.message.encode()) <= MAX_MESSAGE_BYTES and error.message.endswith("...")
    assert len(error.metadata) == errors.MAX_METADATA_ENTRIES
    assert all(len(k) <= errors.MAX_METADATA_KEY_BYTES and len(v.encode()) <= MAX_METADATA_VALUE_BYTES for k, v in error.metadata.items())
    multibyte = errors.InvalidArgument("BAD", "\u00e9" * 5000)  # never cut inside a character
    assert multibyte.message.encode("utf-8").decode("utf-8") == multibyte.message


# ---- unknown enum values ----------------------------------------------------------------------


@pytest.mark.parametrize("policy", [99, -1])
async def test_unknown_box_bounds_policy_is_refused_by_upload_and_update(annotation: Annotations, policy: int) -> None:
    parent, item = await _dataset_with_item(annotation)
    with pytest.raises(grpc.RpcError) as upload:
        await annotation.upload(parent, [[item_upload("new")]], policy=policy)
    with pytest.raises(grpc.RpcError) as update:
        await annotation.stub.UpdateItem(
            api.UpdateItemRequest(item=pb.Item(name=item, split="val"), update_mask=field_mask_pb2.FieldMask(paths=["split"]), box_bounds_policy=policy)
        )
    for raised in (upload, update):
        error = rpc_error(raised.value)
        assert (error.code, error.reason, error.metadata["field"]) == (INVALID, "INVALID_BOX_BOUNDS_POLICY", "box_bounds_policy")
    # Nothing was written by either.
    assert [(i.name, i.split) for i in await annotation.list_all(parent)] == [(item, "train")]


@pytest.mark.parametrize("rpc", ["GetItem", "ListItems", "StreamItems"])
async def test_unknown_item_view_is_refused(annotation: Annotations, rpc: str) -> None:
    parent, item = await _dataset_with_item(annotation)
    call = {
        "GetItem": lambda: annotation.stub.GetItem(api.GetItemRequest(name=item, view=7)),
        "ListItems": lambda: annotation.stub.ListItems(api.ListItemsRequest(parent=parent, view=7)),
        "StreamItems": lambda: annotation.stub.StreamItems(api.StreamItemsRequest(parent=parent + "/versions/1", view=7)).read(),
    }[rpc]
    with pytest.raises(grpc.RpcError) as raised:
        await call()
    error = rpc_error(raised.value)
    assert (error.code, error.reason, error.metadata) == (INVALID, "INVALID_ENUM_VALUE", {"field": "view", "value": "7"})


# ---- COCO nesting -----------------------------------------------------------------------------


def test_a_coco_file_nested_100000_levels_deep_is_invalid_coco() -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        load_coco(b"[" * 100_000 + b"]" * 100_000)
    assert raised.value.reason == "INVALID_COCO"
    with pytest.raises(errors.InvalidArgument) as nested_objects:
        load_coco(b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
    assert nested_objects.value.reason == "INVALID_COCO"


# ---- image library errors ---------------------------------------------------------------------


async def test_image_decoding_errors_have_clean_messages_and_a_stable_problem(annotation: Annotations) -> None:
    from .conftest import png

    dataset = await annotation.create_dataset(categories=CATEGORIES)
    whole = png(64, 48)
    cases = {
        "unrecognized_format": b"GIF89a not an image we take",
        "truncated": whole[: len(whole) // 2],
    }
    for problem, data in cases.items():
        with pytest.raises(grpc.RpcError) as raised:
            await annotation.upload(dataset.name, [[item_upload("bad", image=data)]])
        error = rpc_error(raised.value)
        assert (error.code, error.reason, error.metadata["problem"]) == (INVALID, "INVALID_IMAGE", problem)
        for library_word in ("Error", "PIL", "cannot identify"):
            assert library_word not in error.message, (problem, error.message)
