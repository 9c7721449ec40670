"""A dataset job stopped right after a checkpoint goes on from the annotation-store stream's cursor.

The job handler runs against a real annotation-store (on loopback) through its real gateway; only
the runner is stood in for, by a context that ends the attempt (as a kill -9 would) just after its
k-th checkpoint, and hands that checkpoint to the next attempt. The job augments into its source
dataset, so it reads two streams (the selected items, then the others it copies as they are): the
test stops it once in each, and checks that every attempt reads only the items after its checkpoint
and that the committed version equals the one of an uninterrupted job.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import json_format

from simulacra_client.api.annotation.v1 import annotation_pb2 as apb
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.api.augmentation.v1 import pipeline_pb2
from simulacra_services.annotation.service import DEFINITION as ANNOTATION
from simulacra_services.augmentation.api import convert
from simulacra_services.augmentation.api import jobs as job_convert
from simulacra_services.augmentation.api.annotation_store import AnnotationStoreGateway
from simulacra_services.augmentation.jobs import dataset_job
from simulacra_services.augmentation.jobs.dataset_job import AugmentDatasetHandler
from tests.augmentation.conftest import Services, _png
from tests.augmentation.support import photo
from tests.harness import local_settings, running_service

TRAIN, VAL = 5, 5
PIPELINE = {"ops": [{"horizontal_flip": {}, "probability": 0.5}, {"affine": {"rotate_degrees": {"min": -20, "max": 20}}}]}


class Killed(Exception):
    """The attempt's process died (right after a checkpoint was written)."""


class Attempt:
    """What the job runner hands a handler, for one attempt that dies after its ``die_after``-th checkpoint."""

    def __init__(self, checkpoint: Mapping[str, Any] | None, die_after: int | None) -> None:
        self.checkpoint = checkpoint
        self._die_after = die_after
        self.saved = 0

    def check(self) -> None:
        pass

    def progress_sync(self, *args: object, **kwargs: object) -> None:
        pass

    def save_checkpoint_sync(self, checkpoint: Mapping[str, Any]) -> None:
        self.checkpoint = dict(checkpoint)
        self.saved += 1
        if self.saved == self._die_after:
            raise Killed


def _make_source(services: Services) -> str:
    with services.client() as client:
        client.create_dataset("src", categories=[apb.Category(category_id=1, display_name="car")])
        box = apb.Annotation(category_id=1, box=apb.Box(x=4, y=6, w=20, h=14))
        client.upload_items("src", [
            (f"img{i}", apb.Item(image=apb.Image(data=_png(photo(40, 48, seed=i))), split="train" if i < TRAIN else "val", annotations=[box]))
            for i in range(TRAIN + VAL)
        ])
        return client.commit("src").version.name


def _version(services: Services, version: str) -> dict[str, tuple[str, bytes]]:
    with services.client() as client:
        return {s.item.name.rsplit("/", 1)[1]: (s.item.image.sha256, s.item.lineage.SerializeToString()) for s in client.stream_items(version)}


async def test_a_resumed_job_reads_no_item_it_already_staged(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of 2: a train item and its copy make one batch (a checkpoint after each train item);
    # the val items, copied as they are, fill one batch every second item (checkpoints in the second stream).
    monkeypatch.setattr(dataset_job, "UPLOAD_BATCH", 2)
    async with running_service(ANNOTATION, local_settings(tmp_path / "annotation")) as annotation:
        services = Services(annotation.address, None)  # type: ignore[arg-type]
        source = await asyncio.to_thread(_make_source, services)
        spec_message = json_format.ParseDict(PIPELINE, pipeline_pb2.PipelineSpec())
        request = pb.AugmentDatasetJob(source_dataset_version=source, copies_per_item=1, seed=5, pipeline=pb.PipelineSource(pipeline_spec=spec_message))
        spec = job_convert.spec_from_proto(request, convert.spec_from_proto(spec_message, "pipeline"))
        handler = AugmentDatasetHandler(lambda: AnnotationStoreGateway(annotation.address))

        async def run(job_id: str, deaths: list[int], *, older: bool = False) -> tuple[Mapping[str, Any], list[Mapping[str, Any]]]:
            """Run the job until it ends, dying after the given checkpoint of each attempt in turn
            (``older``: its checkpoints lose the stream position, as a version before it saved them)."""
            job, checkpoint, reports = SimpleNamespace(job_id=job_id, spec=spec), None, []
            for die_after in [*deaths, None]:
                attempt = Attempt(checkpoint, die_after)
                try:
                    return await handler.run(job, attempt), reports  # type: ignore[arg-type]
                except Killed:
                    reports.append({"resumed_at": (checkpoint or {}).get("items_done", 0), "saved": attempt.checkpoint})
                    checkpoint = {k: v for k, v in attempt.checkpoint.items() if not older or k not in ("stream", "cursor")}
            raise AssertionError("unreachable")

        whole, _ = await run("whole", [])
        assert (whole["items_resumed"], whole["items_read"], whole["items_written"]) == (0, TRAIN + VAL, TRAIN)
        # Dies after its 3rd checkpoint (train item 3 staged), then after the 3rd of the next attempt
        # (train items 4 and 5, then val items 1 and 2: in the second stream), then ends.
        resumed, reports = await run("broken", [3, 3])
        assert [r["saved"]["stream"] for r in reports] == [0, 1]
        assert [r["saved"]["items_done"] for r in reports] == [3, TRAIN + 2]
        assert (resumed["items_resumed"], resumed["items_read"]) == (TRAIN + 2, VAL - 2)  # only the items after the checkpoint
        assert resumed["items_written"] == TRAIN and resumed["class_counts_after"] == whole["class_counts_after"]
        assert resumed["output_dataset_version"] == "datasets/src/versions/3"  # one version per job: 2 (whole), 3 (broken)

        # A checkpoint without a stream position (saved before there was one) still resumes, by count:
        # the items before it are read again and skipped.
        older, _ = await run("older", [3], older=True)
        assert (older["items_resumed"], older["items_read"], older["items_written"]) == (3, TRAIN + VAL, TRAIN)

        first, second, third = await asyncio.gather(*(
            asyncio.to_thread(_version, services, result["output_dataset_version"]) for result in (whole, resumed, older)
        ))
        assert len(first) == 2 * TRAIN + VAL
        images = {name.replace(".aug-whole", ""): value[0] for name, value in first.items()}
        assert images == {name.replace(".aug-broken", ""): value[0] for name, value in second.items()}  # the same images
        assert images == {name.replace(".aug-older", ""): value[0] for name, value in third.items()}
