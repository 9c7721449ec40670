"""A dataset job goes on after its process is killed (kill -9) in the middle of it.

The augmentation service runs as a real process (``simulacra serve augmentation``, a one-second
job lease) beside a real annotation-store. The test starts a job of 32 upload batches, kills the
process with SIGKILL once a few batches are staged, starts the service again on the same data and
checks that the new process took the job over once the dead one's lease ran out, went on from the
batches already staged (their request ids make a batch sent again a replay, not a duplicate) and
committed exactly one version holding every item once. The job's stored result says how many source
items its last attempt read: only those after the checkpoint it resumed from (the annotation-store
stream restarts at the checkpoint's cursor), none of the items already staged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from google.protobuf import json_format

from simulacra_client.api.annotation.v1 import annotation_pb2 as apb
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2_grpc as api_grpc
from simulacra_client.api.augmentation.v1 import pipeline_pb2
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.channel import open_channel
from simulacra_services.annotation.service import DEFINITION as ANNOTATION
from simulacra_services.augmentation.jobs.dataset_job import KIND
from simulacra_services.augmentation.tables import AUGMENTATION_JOBS
from simulacra_services.core.config import Settings
from simulacra_services.core.db import create_engine
from simulacra_services.core.jobs import JobStore
from tests.augmentation.conftest import Services, _png
from tests.augmentation.support import photo
from tests.harness import local_settings, running_service, service_process

pytestmark = pytest.mark.timeout(300)

ITEMS, COPIES = 64, 16  # 1024 copies: 32 batches of 32
PIPELINE = {"ops": [{"horizontal_flip": {}, "probability": 0.5}, {"affine": {"rotate_degrees": {"min": -20, "max": 20}}}]}


@contextmanager
def augmentation_process(settings: Settings) -> Iterator[tuple[subprocess.Popen[bytes], api_grpc.AugmentationServiceStub]]:
    """``simulacra serve augmentation`` with ``settings``; killed on exit if still running."""
    with service_process("augmentation", settings) as (process, address):
        channel = open_channel(address)
        try:
            yield process, api_grpc.AugmentationServiceStub(channel)
        finally:
            channel.close()


def _make_source(services: Services) -> str:
    with services.client() as client:
        client.create_dataset("src", categories=[apb.Category(category_id=1, display_name="car")])
        box = apb.Annotation(category_id=1, box=apb.Box(x=4, y=6, w=20, h=14))
        client.upload_items("src", [(f"img{i:02d}", apb.Item(image=apb.Image(data=_png(photo(120, 160, seed=i))), split="train", annotations=[box]))
                                    for i in range(ITEMS)])
        return client.commit("src").version.name


def _until(what: str, condition, limit: float = 120.0):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + limit
    while not (value := condition()):
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)
    return value


def test_a_job_killed_midway_resumes_and_commits_one_version(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_service(ANNOTATION, local_settings(tmp_path / "annotation")) as annotation:
            services = Services(annotation.address, None)  # type: ignore[arg-type]
            await asyncio.to_thread(run, services, annotation.address)

    def run(services: Services, address: str) -> None:
        source = _make_source(services)
        settings = local_settings(tmp_path / "augmentation", annotation_address=address)
        request = pb.AugmentDatasetJob(source_dataset_version=source, target_dataset="datasets/grown", copies_per_item=COPIES, seed=3,
                                       pipeline=pb.PipelineSource(pipeline_spec=json_format.ParseDict(PIPELINE, pipeline_pb2.PipelineSpec())))
        with augmentation_process(settings) as (process, stub):
            name = stub.CreateAugmentDatasetJob(pb.CreateAugmentDatasetJobRequest(augment_dataset_job=request)).augment_dataset_job.name
            written = _until("a few batches staged", lambda: (w := stub.GetAugmentDatasetJob(pb.GetAugmentDatasetJobRequest(name=name))
                                                                 .augment_dataset_job.progress.done) >= 64 and w)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
        assert written < ITEMS * COPIES, "the job ended before the kill: make it longer"
        with augmentation_process(settings) as (_, stub):
            ended = _until("the job to end", lambda: (j := stub.GetAugmentDatasetJob(pb.GetAugmentDatasetJobRequest(name=name)).augment_dataset_job)
                           .state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED) and j)
        assert ended.state == common_pb2.JOB_STATE_SUCCEEDED, ended.error
        assert (ended.output_dataset_version, ended.items_written) == ("datasets/grown/versions/1", ITEMS * COPIES)
        assert dict(ended.class_counts_after) == {1: ITEMS * COPIES}
        with services.client() as client:
            assert client.get_dataset("grown").latest_version == 1
            names = [s.item.name for s in client.stream_items(ended.output_dataset_version)]
        engine = create_engine(settings.resolved_database_url)
        try:
            record = JobStore(engine, AUGMENTATION_JOBS).get(KIND, name.rsplit("/", 1)[1])
        finally:
            engine.dispose()
        resumed, read = record.result["items_resumed"], record.result["items_read"]
        assert record.attempt >= 2 and 0 < resumed < ITEMS, record.result  # the last attempt went on from a checkpoint
        assert read == ITEMS - resumed  # and read only the items after it: none staged before was read again
        job_id = name.rsplit("/", 1)[1][:8]
        assert sorted(names) == sorted(f"datasets/grown/items/img{i:02d}.aug-{job_id}-{c}" for i in range(ITEMS) for c in range(COPIES))

    asyncio.run(scenario())
