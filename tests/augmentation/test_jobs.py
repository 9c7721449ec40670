"""Dataset jobs end to end: a real annotation-store and a real augmentation service on loopback."""

from __future__ import annotations

import asyncio

import cv2
import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from simulacra_client.annotation import AnnotationClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as apb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as arpc
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.api.augmentation.v1 import pipeline_pb2
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2_grpc as api_grpc
from simulacra_client.errors import NotFoundError, from_rpc_error
from simulacra_services.augmentation.engine.spec import MAX_DEPTH, MAX_OPS
from simulacra_services.augmentation.service import DEFINITION
from tests.augmentation.conftest import Services, _png, make_source
from tests.augmentation.support import photo
from tests.harness import local_settings, running_service

PIPELINE = {
    "ops": [
        {"horizontal_flip": {}, "probability": 0.5},
        {"affine": {"rotate_degrees": {"min": -20, "max": 20}, "scale": {"min": 0.9, "max": 1.1}}},
        {"color_jitter": {"brightness": {"min": 0.7, "max": 1.3}}},
    ]
}


async def finish(services: Services, name: str) -> pb.AugmentDatasetJob:
    last = None
    async for event in services.stub.WatchAugmentDatasetJob(pb.WatchAugmentDatasetJobRequest(name=name), timeout=120):
        last = event.augment_dataset_job
    assert last is not None
    return last


def job(source: str, **fields) -> pb.AugmentDatasetJob:  # noqa: ANN003
    spec = json_format.ParseDict(PIPELINE, pipeline_pb2.PipelineSpec())
    return pb.AugmentDatasetJob(source_dataset_version=source, pipeline=pb.PipelineSource(pipeline_spec=spec), seed=7, **fields)


async def test_a_job_commits_a_derived_version_with_lineage_that_reproduces_each_item(services: Services) -> None:
    source = await asyncio.to_thread(make_source, services)
    created = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job(source, copies_per_item=2, target_dataset="datasets/derived"), request_id="r-1"))).augment_dataset_job
    again = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job(source, copies_per_item=2, target_dataset="datasets/derived"), request_id="r-1"))).augment_dataset_job
    assert again.name == created.name
    done = await finish(services, created.name)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.output_dataset_version == "datasets/derived/versions/1"
    assert done.items_written == 12 and dict(done.class_counts_before) == {1: 6, 2: 1} and dict(done.class_counts_after) == {1: 12, 2: 2}
    assert len(done.pipeline_digest) == 64 and done.resolved_pipeline.ops[1].HasField("affine")

    def read() -> tuple[list, dict]:
        with services.client() as client:
            derived = [s.item for s in client.stream_items(done.output_dataset_version)]
            sources = {s.item.name: s.item for s in client.stream_items(source)}
            return derived, sources

    derived, sources = await asyncio.to_thread(read)
    assert len(derived) == 12 and {i.split for i in derived} == {"train"}
    assert {i.lineage.augmented.source_item for i in derived} == {f"datasets/src/items/img{k}" for k in range(6)}
    assert {i.attributes["augment_copy"] for i in derived} == {"0", "1"}
    assert all(i.lineage.augmented.pipeline_digest == done.pipeline_digest and i.attributes["augment_source_version"] == source for i in derived)
    assert all([(v.item, v.version) for v in i.lineage.augmented.sources] == [(i.lineage.augmented.source_item, source)] for i in derived)
    assert {i.lineage.augmented.copy_index for i in derived} == {0, 1}
    # Each stored item is AugmentBatch of its source with the seed of its lineage, bit for bit.
    for item in derived[:3]:
        src = sources[item.lineage.augmented.source_item]
        image = cv2.cvtColor(cv2.imdecode(np.frombuffer(src.image.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        request = pb.AugmentBatchRequest(
            pipeline=pb.PipelineSource(pipeline_spec=done.resolved_pipeline),
            items=[pb.AugmentItem(key=src.name, image={"dtype": "DATA_TYPE_UINT8", "shape": list(image.shape), "data": image.tobytes()},
                                  annotations=list(src.annotations), seed=item.lineage.augmented.seed)],
        )
        (again_item,) = (await services.stub.AugmentBatch(request)).items
        stored = cv2.cvtColor(cv2.imdecode(np.frombuffer(item.image.data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert again_item.image.data == stored.tobytes()
        assert [v for a in again_item.annotations for v in (a.category_id, a.box.x, a.box.y, a.box.w, a.box.h)] == pytest.approx(
            [v for a in item.annotations for v in (a.category_id, a.box.x, a.box.y, a.box.w, a.box.h)], abs=1e-3
        )
    listed = await services.stub.ListAugmentDatasetJobs(pb.ListAugmentDatasetJobsRequest(state=common_pb2.JOB_STATE_SUCCEEDED))
    assert [j.name for j in listed.augment_dataset_jobs] == [created.name]


async def test_rebalancing_raises_the_rare_class_to_the_ratio(services: Services) -> None:
    source = await asyncio.to_thread(make_source, services)
    request = job(source, mode=pb.AUGMENT_MODE_REBALANCE, max_imbalance_ratio=2.0, target_dataset="datasets/balanced", include_source_items=True)
    created = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(augment_dataset_job=request))).augment_dataset_job
    done = await finish(services, created.name)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    after = dict(done.class_counts_after)
    assert dict(done.class_counts_before) == {1: 6, 2: 1}
    assert after[1] <= 2 * after[2] and done.items_written == after[2] - 1

    def statistics() -> int:
        with AnnotationClient(services.annotation_address) as client:
            return sum(1 for _ in client.stream_items(done.output_dataset_version))

    assert await asyncio.to_thread(statistics) == 6 + done.items_written  # the source's train items and the copies


async def test_a_failed_or_cancelled_job_leaves_nothing_behind(services: Services) -> None:
    source = await asyncio.to_thread(make_source, services)
    missing = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job("datasets/src/versions/9", target_dataset="datasets/never")))).augment_dataset_job
    failed = await finish(services, missing.name)
    assert failed.state == common_pb2.JOB_STATE_FAILED
    assert failed.error.code == grpc.StatusCode.NOT_FOUND.value[0] and failed.error.reason == "VERSION_NOT_FOUND", failed.error
    # A bad pipeline for stored items (float output) fails after the target was created: it is removed again.
    normalize = job(source, target_dataset="datasets/floats")
    normalize.pipeline.pipeline_spec.ops.add().normalize.SetInParent()
    floats = await finish(services, (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(augment_dataset_job=normalize))).augment_dataset_job.name)
    assert (floats.state, floats.error.reason) == (common_pb2.JOB_STATE_FAILED, "FLOAT_OUTPUT_NOT_STORABLE")
    cancelled_job = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job(source, copies_per_item=64, target_dataset="datasets/stopped")))).augment_dataset_job
    await services.stub.CancelAugmentDatasetJob(pb.CancelAugmentDatasetJobRequest(name=cancelled_job.name))
    cancelled = await finish(services, cancelled_job.name)
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED and not cancelled.output_dataset_version

    def absent(dataset: str) -> bool:
        with services.client() as client:
            try:
                client.get_dataset(dataset)
            except NotFoundError:
                return True
            return False

    for dataset in ("never", "floats", "stopped"):
        assert await asyncio.to_thread(absent, dataset), dataset
    # Listing: newest first, page by page, and by state.
    first = await services.stub.ListAugmentDatasetJobs(pb.ListAugmentDatasetJobsRequest(page_size=2))
    rest = await services.stub.ListAugmentDatasetJobs(pb.ListAugmentDatasetJobsRequest(page_size=2, page_token=first.next_page_token))
    assert [j.name for j in first.augment_dataset_jobs] + [j.name for j in rest.augment_dataset_jobs] == [cancelled.name, floats.name, failed.name]
    assert rest.next_page_token == ""
    only_failed = await services.stub.ListAugmentDatasetJobs(pb.ListAugmentDatasetJobsRequest(state=common_pb2.JOB_STATE_FAILED))
    assert [j.name for j in only_failed.augment_dataset_jobs] == [floats.name, failed.name]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services.stub.ListAugmentDatasetJobs(pb.ListAugmentDatasetJobsRequest(page_size=2, page_token=first.next_page_token, state=common_pb2.JOB_STATE_FAILED))
    assert from_rpc_error(raised.value).reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize(
    ("fields", "reason", "field"),
    [
        ({"source_dataset_version": "datasets/src"}, "INVALID_NAME", "augment_dataset_job.source_dataset_version"),
        ({"target_dataset": "datasets/Bad"}, "INVALID_NAME", "augment_dataset_job.target_dataset"),
        ({"copies_per_item": 65}, "PARAM_OUT_OF_RANGE", "augment_dataset_job.copies_per_item"),
        ({"mode": pb.AUGMENT_MODE_REBALANCE, "max_imbalance_ratio": 0.5}, "PARAM_OUT_OF_RANGE", "augment_dataset_job.max_imbalance_ratio"),
        ({"splits": ["Train!"]}, "INVALID_SPLIT", "augment_dataset_job.splits[0]"),
        ({"category_ids": [0]}, "PARAM_OUT_OF_RANGE", "augment_dataset_job.category_ids[0]"),
    ],
)
async def test_bad_job_requests_get_a_precise_status(services: Services, fields: dict, reason: str, field: str) -> None:
    request = job("datasets/src/versions/1")
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(request, key).extend(value)
        else:
            setattr(request, key, value)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(augment_dataset_job=request))
    error = from_rpc_error(raised.value)
    assert (error.code, error.reason, error.metadata["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, reason, field)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await services.stub.GetAugmentDatasetJob(pb.GetAugmentDatasetJobRequest(name="augmentDatasetJobs/nope"))
    assert from_rpc_error(raised.value).code == grpc.StatusCode.NOT_FOUND


async def test_copy_paste_spreads_a_rare_object_through_a_dataset(services: Services) -> None:
    def make_scenes() -> str:
        with services.client() as client:
            client.create_dataset("scenes", categories=[apb.Category(category_id=1, display_name="car"), apb.Category(category_id=3, display_name="deer")])
            items = []
            for index in range(4):
                items.append((f"road{index}", apb.Item(image=apb.Image(data=_png(photo(48, 48, seed=index))),
                                                     annotations=[apb.Annotation(category_id=1, box=apb.Box(x=2, y=2, w=20, h=10))])))
            deer = apb.Polygon(parts=[apb.PolygonPart(coordinates=[20, 20, 40, 22, 36, 40, 18, 36])])
            items.append(("rare", apb.Item(image=apb.Image(data=_png(photo(48, 48, seed=9))),
                                           annotations=[apb.Annotation(category_id=3, instance_id="deer", polygon=deer)])))
            client.upload_items("scenes", items)
            return client.commit("scenes").version.name

    source = await asyncio.to_thread(make_scenes)
    spec = json_format.ParseDict({"ops": [{"copy_paste": {"category_ids": [3]}}]}, pipeline_pb2.PipelineSpec())
    request = pb.AugmentDatasetJob(source_dataset_version=source, pipeline=pb.PipelineSource(pipeline_spec=spec), seed=2,
                                   target_dataset="datasets/with-deer", partners_per_item=1, partner_category_ids=[3])
    created = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(augment_dataset_job=request))).augment_dataset_job
    done = await finish(services, created.name)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    # Every road scene got the deer (a polygon and a box: one object); the deer item has no other partner.
    assert done.class_counts_after[3] == 4 + 1

    def read() -> list:
        with services.client() as client:
            return [s.item for s in client.stream_items(done.output_dataset_version)]

    derived = await asyncio.to_thread(read)
    roads = [i for i in derived if i.lineage.augmented.source_item != "datasets/scenes/items/rare"]
    assert len(roads) == 4
    for item in roads:
        # Every source pinned to the version it was read from: the scene first, then the partner.
        assert [(v.item, v.version) for v in item.lineage.augmented.sources] == [
            (item.lineage.augmented.source_item, source), ("datasets/scenes/items/rare", source)]
        assert "augment_partners" not in item.attributes
        kinds = {(a.category_id, a.WhichOneof("kind")) for a in item.annotations}
        assert {(1, "box"), (3, "polygon"), (3, "box")} <= kinds


async def test_a_job_into_its_source_dataset_commits_a_version_and_leaves_the_working_state_alone(services: Services) -> None:
    source = await asyncio.to_thread(make_source, services)

    def edit_working_state() -> list[str]:
        # The working state moves on after the source version: an item deleted, one added.
        with services.client() as client:
            client.stub.DeleteItem(arpc.DeleteItemRequest(name="datasets/src/items/img5"))
            client.upload_items("src", [("later", apb.Item(image=apb.Image(data=_png(photo(40, 48, seed=20)))))])
            return sorted(i.name for i in client.list_items("src"))

    working = await asyncio.to_thread(edit_working_state)
    # A job cancelled at once commits nothing and leaves the working state and the versions as they were.
    stopped = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job(source, copies_per_item=64)))).augment_dataset_job
    await services.stub.CancelAugmentDatasetJob(pb.CancelAugmentDatasetJobRequest(name=stopped.name))
    assert (await finish(services, stopped.name)).state == common_pb2.JOB_STATE_CANCELLED

    def state() -> tuple[list[str], int]:
        with services.client() as client:
            return sorted(i.name for i in client.list_items("src")), client.get_dataset("src").latest_version

    assert await asyncio.to_thread(state) == (working, 1)
    created = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job(source, copies_per_item=1)))).augment_dataset_job
    done = await finish(services, created.name)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    assert done.output_dataset_version == "datasets/src/versions/2"
    assert await asyncio.to_thread(state) == (working, 2)

    def read() -> tuple[apb.DatasetVersion, list[apb.Item], apb.Item]:
        with services.client() as client:
            version = client.get_version(done.output_dataset_version)
            items = [s.item for s in client.stream_items(done.output_dataset_version)]
            got = client.stub.GetItem(arpc.GetItemRequest(
                name=f"{done.output_dataset_version}/items/img0.aug-{created.name.rsplit('/', 1)[1][:8]}-0")).item
            return version, items, got

    version, items, got = await asyncio.to_thread(read)
    assert (version.derived_from.source_version, version.derived_from.pipeline_digest) == (source, done.pipeline_digest)
    # The source version's 8 items (val included, img5 too, "later" not) and one copy of each of the 6 train items.
    names = sorted(i.name.rsplit("/", 1)[1] for i in items)
    assert len(names) == 14 and "img5" in names and "later" not in names and version.item_count == 14
    assert [(v.item, v.version) for v in got.lineage.augmented.sources] == [("datasets/src/items/img0", source)]
    assert got.lineage.augmented.copy_index == 0 and got.lineage.augmented.pipeline_digest == done.pipeline_digest


async def test_a_job_into_an_existing_dataset_brings_the_source_categories_into_its_version_only(services: Services) -> None:
    source = await asyncio.to_thread(make_source, services)

    def categories(parent: str) -> list[tuple[int, str]]:
        with services.client() as client:
            listed = client.stub.ListCategories(arpc.ListCategoriesRequest(parent=parent)).categories
            return [(c.category_id, c.display_name) for c in listed]

    # "cars" has the source's category 1 and one of its own, but not the source's "bike" (2).
    await asyncio.to_thread(create_target, services, "cars", [apb.Category(category_id=1, display_name="car"), apb.Category(category_id=5, display_name="truck")])
    stopped = (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job(source, copies_per_item=64, target_dataset="datasets/cars")))).augment_dataset_job
    await services.stub.CancelAugmentDatasetJob(pb.CancelAugmentDatasetJobRequest(name=stopped.name))
    assert (await finish(services, stopped.name)).state == common_pb2.JOB_STATE_CANCELLED
    assert await asyncio.to_thread(categories, "datasets/cars") == [(1, "car"), (5, "truck")]
    done = await finish(services, (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job(source, copies_per_item=1, target_dataset="datasets/cars")))).augment_dataset_job.name)
    assert done.state == common_pb2.JOB_STATE_SUCCEEDED, done.error
    assert await asyncio.to_thread(categories, done.output_dataset_version) == [(1, "car"), (2, "bike"), (5, "truck")]
    assert await asyncio.to_thread(categories, "datasets/cars") == [(1, "car"), (5, "truck")]
    # A target whose category 2 is another class refuses the job, precisely, and is left as it was.
    await asyncio.to_thread(create_target, services, "lorries", [apb.Category(category_id=2, display_name="lorry")])
    refused = await finish(services, (await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
        augment_dataset_job=job(source, target_dataset="datasets/lorries")))).augment_dataset_job.name)
    assert (refused.state, refused.error.code, refused.error.reason) == (
        common_pb2.JOB_STATE_FAILED, grpc.StatusCode.FAILED_PRECONDITION.value[0], "CATEGORY_CONFLICT"), refused.error
    assert await asyncio.to_thread(categories, "datasets/lorries") == [(2, "lorry")]


def create_target(services: Services, dataset: str, categories: list[apb.Category]) -> None:
    with services.client() as client:
        client.create_dataset(dataset, categories=categories)


def _nested(depth: int) -> dict:
    node: dict = {"horizontal_flip": {}}
    for _ in range(depth):
        node = {"sequential": {"ops": [node]}}
    return {"ops": [node]}


async def test_bad_pipelines_and_too_large_images_write_nothing(services: Services, tmp_path) -> None:
    source = await asyncio.to_thread(make_source, services)

    def absent(dataset: str) -> bool:
        with services.client() as client:
            try:
                client.get_dataset(dataset)
            except NotFoundError:
                return True
            return False

    # Refused at creation with the exact field: no job, no dataset.
    for data, reason, field in (
        (_nested(MAX_DEPTH), "PIPELINE_TOO_DEEP", "augment_dataset_job.pipeline.pipeline_spec.ops[0]"),
        ({"ops": [{"grayscale": {}}] * (MAX_OPS + 1)}, "PIPELINE_TOO_LARGE", f"augment_dataset_job.pipeline.pipeline_spec.ops[{MAX_OPS}]"),
        ({"ops": [{"rotate": {"angle_degrees": {"min": 3, "max": -3}}}]}, "INVALID_RANGE", "augment_dataset_job.pipeline.pipeline_spec.ops[0].rotate.angle_degrees"),
    ):
        request = job(source, target_dataset="datasets/refused")
        request.pipeline.pipeline_spec.CopyFrom(json_format.ParseDict(data, pipeline_pb2.PipelineSpec()))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await services.stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(augment_dataset_job=request))
        error = from_rpc_error(raised.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert error.metadata["field"].startswith(field), error.metadata
    assert not (await services.stub.ListAugmentDatasetJobs(pb.ListAugmentDatasetJobsRequest())).augment_dataset_jobs
    assert await asyncio.to_thread(absent, "refused")
    # A version holding an image above the service's pixel limit: the job fails with the item's field, nothing is left.
    settings = local_settings(tmp_path / "small", annotation_address=services.annotation_address, max_image_pixels=40 * 48 - 1)
    async with running_service(DEFINITION, settings, workers=1) as small:
        small_stub = api_grpc.AugmentationServiceStub(small.channel)
        created = (await small_stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(
            augment_dataset_job=job(source, target_dataset="datasets/large")))).augment_dataset_job
        last = None
        async for event in small_stub.WatchAugmentDatasetJob(pb.WatchAugmentDatasetJobRequest(name=created.name), timeout=120):
            last = event.augment_dataset_job
    assert last is not None and last.state == common_pb2.JOB_STATE_FAILED
    assert (last.error.code, last.error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "IMAGE_TOO_LARGE")
    assert not last.output_dataset_version
    assert await asyncio.to_thread(absent, "large")
