"""The friendly client of the augmentation service: numpy in, numpy out.

Pipelines are data: a ``Pipeline`` builder, a JSON file of our form (the proto3
JSON of ``simulacra.augmentation.v1.PipelineSpec``) or an Albumentations
pipeline saved with ``albumentations.save(..., data_format="json")`` /
``to_dict`` (``from_albumentations``), for the ops both have::

    from simulacra_client import AugmentationClient, Pipeline

    pipeline = (Pipeline()
                .add("random_resized_crop", height=224, width=224, scale=(0.5, 1.0))
                .add("horizontal_flip", probability=0.5)
                .one_of([Pipeline.op("fog"), Pipeline.op("rain")], weights=[1, 2], probability=0.3))
    with AugmentationClient("127.0.0.1:50052") as client:
        out = client.augment([image], pipeline, seed=7, keys=["datasets/d/items/1"])
        out[0].image  # numpy [H, W, C]

Only grpcio, protobuf and numpy are needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from google.protobuf import json_format

from simulacra_client.api.annotation.v1 import annotation_pb2
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as rpc
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2_grpc as rpc_grpc
from simulacra_client.api.augmentation.v1 import pipeline_pb2
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client import augmentation_wire as wire
from simulacra_client.albumentations_import import from_albumentations
from simulacra_client.annotation import JobCancelledError, JobFailedError, dataset_name, version_name
from simulacra_client.raw import RawClient, ServiceClient, _responses

__all__ = ["AugmentationClient", "AugmentedImage", "Pipeline", "from_albumentations", "load_pipeline"]

MAX_BATCH_ITEMS = 256
_GROUPS = ("sequential", "one_of", "some_of", "random_order")


def _value(value: Any) -> Any:
    """Tuples (a, b) are ranges {"min": a, "max": b}; everything else passes through."""
    if isinstance(value, tuple) and len(value) == 2:
        return {"min": float(value[0]), "max": float(value[1])}
    if isinstance(value, Pipeline):
        return value.to_dict()["ops"]
    return value


class Pipeline:
    """A pipeline built in Python; ``to_dict()`` is its JSON form."""

    def __init__(self, ops: Sequence[Mapping[str, Any]] = (), *, seed_policy: str = "", annotation_policy: Mapping[str, Any] | None = None) -> None:
        self._ops: list[dict[str, Any]] = [dict(op) for op in ops]
        self._seed_policy = seed_policy
        self._policy = dict(annotation_policy or {})

    @staticmethod
    def op(name: str, probability: float | None = None, **params: Any) -> dict[str, Any]:
        """One op as data: ``Pipeline.op("rotate", angle_degrees=(-10, 10))``."""
        body = {key: _value(value) for key, value in params.items()}
        return {name: body} if probability is None else {name: body, "probability": probability}

    def add(self, name: str, probability: float | None = None, **params: Any) -> Pipeline:
        self._ops.append(self.op(name, probability, **params))
        return self

    def _group(self, kind: str, ops: Sequence[Mapping[str, Any]], probability: float | None, **params: Any) -> Pipeline:
        body: dict[str, Any] = {"ops": [dict(op) for op in ops], **{k: v for k, v in params.items() if v is not None}}
        self._ops.append({kind: body} if probability is None else {kind: body, "probability": probability})
        return self

    def sequential(self, ops: Sequence[Mapping[str, Any]], probability: float | None = None) -> Pipeline:
        return self._group("sequential", ops, probability)

    def one_of(self, ops: Sequence[Mapping[str, Any]], weights: Sequence[float] | None = None, probability: float | None = None) -> Pipeline:
        return self._group("one_of", ops, probability, weights=list(weights) if weights else None)

    def some_of(self, ops: Sequence[Mapping[str, Any]], min_count: int = 1, max_count: int | None = None, probability: float | None = None) -> Pipeline:
        return self._group("some_of", ops, probability, min_count=min_count, max_count=max_count)

    def random_order(self, ops: Sequence[Mapping[str, Any]], probability: float | None = None) -> Pipeline:
        return self._group("random_order", ops, probability)

    def annotation_policy(self, **policy: Any) -> Pipeline:
        self._policy.update(policy)
        return self

    def seed_policy(self, policy: str) -> Pipeline:
        self._seed_policy = policy
        return self

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"ops": self._ops}
        if self._seed_policy:
            data["seed_policy"] = self._seed_policy
        if self._policy:
            data["annotation_policy"] = self._policy
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


PipelineLike = Union[Pipeline, Mapping[str, Any], pipeline_pb2.PipelineSpec, str, "os.PathLike[str]"]


def load_pipeline(source: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Our JSON form from a file, a JSON string or a dict; Albumentations JSON is converted."""
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        text = str(source)
        data = json.loads(text) if text.lstrip().startswith("{") else json.loads(Path(text).read_text())
    if "transform" in data or "__class_fullname__" in data:
        return from_albumentations(data)
    return data


def spec_of(pipeline: PipelineLike) -> pipeline_pb2.PipelineSpec:
    if isinstance(pipeline, pipeline_pb2.PipelineSpec):
        return pipeline
    data = pipeline.to_dict() if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    return json_format.ParseDict(data, pipeline_pb2.PipelineSpec())


# ---------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------

_DTYPES = {common_pb2.DATA_TYPE_UINT8: np.dtype("uint8"), common_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4")}


def _tensor(image: np.ndarray) -> common_pb2.Tensor:
    pixels = wire.image_pixels(image)
    dtype = common_pb2.DATA_TYPE_UINT8 if pixels.dtype == np.uint8 else common_pb2.DATA_TYPE_FLOAT32
    return common_pb2.Tensor(dtype=dtype, shape=list(pixels.shape), data=pixels.tobytes())


def _image(tensor: common_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype=_DTYPES[tensor.dtype]).reshape(tuple(tensor.shape)).astype(_DTYPES[tensor.dtype].newbyteorder("="))


@dataclass(frozen=True)
class AugmentedImage:
    key: str
    image: np.ndarray
    annotations: list[annotation_pb2.Annotation]
    seed: int
    applied_op_paths: tuple[str, ...]
    dropped_annotations: int


def _augmented(message: rpc.AugmentedItem) -> AugmentedImage:
    return AugmentedImage(
        key=message.key,
        image=_image(message.image),
        annotations=list(message.annotations),
        seed=message.seed,
        applied_op_paths=tuple(message.applied_op_paths),
        dropped_annotations=message.dropped_annotations,
    )


@dataclass
class ItemInput:
    """An image with its annotations (``annotation_pb2.Annotation`` messages) and key."""

    image: np.ndarray
    key: str = ""
    annotations: Sequence[annotation_pb2.Annotation] = field(default_factory=list)
    seed: int | None = None

    def to_proto(self) -> rpc.AugmentItem:
        message = rpc.AugmentItem(key=self.key, image=_tensor(self.image), annotations=list(self.annotations))
        if self.seed is not None:
            message.seed = self.seed
        return message

    def encoded(self) -> wire.Encoded:
        """``to_proto()`` serialized, the pixels not copied (``augmentation_wire``)."""
        rest = rpc.AugmentItem(annotations=list(self.annotations))
        if self.seed is not None:
            rest.seed = self.seed
        return wire.item(self.key, self.image, rest)


_SERVICE = rpc.DESCRIPTOR.services_by_name["AugmentationService"].full_name
_STREAM_METHOD = f"/{_SERVICE}/AugmentStream"
_BATCH_METHOD = f"/{_SERVICE}/AugmentBatch"


def _serialize(request: rpc.AugmentStreamRequest | bytes) -> bytes:
    """Requests already serialized (``bytes``) go out as they are."""
    return request if isinstance(request, bytes) else request.SerializeToString()


class AugmentationClient(ServiceClient):
    """A connection to the augmentation service. Use as a context manager, or call ``close()``.

    Arguments as ``raw.ServiceClient``: ``address``, ``token``, ``tls_ca``, ``max_message_bytes``,
    ``timeout`` (per unary call), ``retry``.
    """

    RAW, STUB, SERVICES = RawClient, rpc_grpc.AugmentationServiceStub, rpc

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> AugmentationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _source(pipeline: PipelineLike | str) -> rpc.PipelineSource:
        if isinstance(pipeline, str) and pipeline.startswith("pipelines/"):
            return rpc.PipelineSource(pipeline_name=pipeline)
        return rpc.PipelineSource(pipeline_spec=spec_of(pipeline))

    @staticmethod
    def _items(images: Sequence[np.ndarray | ItemInput], keys: Sequence[str] | None) -> list[ItemInput]:
        items = []
        for index, image in enumerate(images):
            item = image if isinstance(image, ItemInput) else ItemInput(image=image)
            if keys is not None:
                item = ItemInput(item.image, keys[index], item.annotations, item.seed)
            items.append(item)
        return items

    def augment(
        self,
        images: Sequence[np.ndarray | ItemInput],
        pipeline: PipelineLike | str,
        *,
        seed: int = 0,
        keys: Sequence[str] | None = None,
        categories: Sequence[annotation_pb2.Category] = (),
    ) -> list[AugmentedImage]:
        """Augment images (or ``ItemInput`` with annotations), in batches of at most 256, in order."""
        items = self._items(images, keys)
        # Each request is serialized here with the pixels copied once (augmentation_wire): the
        # same bytes as AugmentBatchRequest(...).SerializeToString(), sent as they are.
        head = rpc.AugmentBatchRequest(pipeline=self._source(pipeline), seed=seed)
        tail = rpc.AugmentBatchRequest(categories=list(categories))
        out: list[AugmentedImage] = []
        for start in range(0, len(items), MAX_BATCH_ITEMS):
            data = wire.message(wire.BATCH_REQUEST_ITEMS, [i.encoded() for i in items[start : start + MAX_BATCH_ITEMS]], tail, head=head)
            out.extend(_augmented(m) for m in self._raw.call_serialized(_BATCH_METHOD, data, rpc.AugmentBatchResponse).items)
        return out

    def stream(
        self,
        items: Iterable[np.ndarray | ItemInput],
        pipeline: PipelineLike | str,
        *,
        seed: int = 0,
        batch_size: int = 16,
        start_position: int = 0,
        categories: Sequence[annotation_pb2.Category] = (),
        device: str = "",
    ) -> Iterator[AugmentedImage]:
        """Augment an iterable of items over one stream, ``batch_size`` per request, in order.

        ``device``: "" for the server's numpy path, "cpu" or "cuda" for its batched torch path.
        """

        def requests() -> Iterator[rpc.AugmentStreamRequest | bytes]:
            config = rpc.AugmentStreamConfig(pipeline=self._source(pipeline), seed=seed, categories=list(categories), start_position=start_position, device=device)
            yield rpc.AugmentStreamRequest(config=config)
            batch: list[wire.Encoded] = []
            for item in items:
                batch.append((item if isinstance(item, ItemInput) else ItemInput(image=item)).encoded())
                if len(batch) == batch_size:
                    yield wire.message(wire.STREAM_REQUEST_ITEMS, batch)
                    batch = []
            if batch:
                yield wire.message(wire.STREAM_REQUEST_ITEMS, batch)

        # The requests with items are serialized here (pixels copied once), so the call is made
        # with a serializer that lets bytes through rather than through the generated stub.
        call = self._raw.channel.stream_stream(_STREAM_METHOD, request_serializer=_serialize, response_deserializer=rpc.AugmentStreamResponse.FromString)
        for response in _responses(call(requests())):
            for message in response.items:
                yield _augmented(message)

    def preview(
        self,
        image: np.ndarray | ItemInput,
        pipeline: PipelineLike | str,
        *,
        count: int = 8,
        columns: int = 0,
        seed: int = 0,
        key: str = "preview",
        categories: Sequence[annotation_pb2.Category] = (),
    ) -> bytes:
        """PNG bytes of a grid of ``count`` augmentations with annotations drawn."""
        item = image if isinstance(image, ItemInput) else ItemInput(image=image, key=key)
        if not item.key:
            item = ItemInput(item.image, key, item.annotations, item.seed)
        request = rpc.PreviewAugmentationsRequest(
            pipeline=self._source(pipeline), seed=seed, item=item.to_proto(), count=count, columns=columns, categories=list(categories)
        )
        return self._raw.call("PreviewAugmentations", request).png

    # -- stored pipelines -----------------------------------------------------------

    def create_pipeline(self, pipeline_id: str, pipeline: PipelineLike, *, description: str = "") -> pipeline_pb2.Pipeline:
        body = pipeline_pb2.Pipeline(description=description, spec=spec_of(pipeline))
        return self._raw.call("CreatePipeline", rpc.CreatePipelineRequest(pipeline_id=pipeline_id, pipeline=body)).pipeline

    def get_pipeline(self, name: str) -> pipeline_pb2.Pipeline:
        name = name if name.startswith("pipelines/") else f"pipelines/{name}"
        return self._raw.call("GetPipeline", rpc.GetPipelineRequest(name=name)).pipeline

    def list_pipelines(self, *, page_size: int = 0) -> Iterator[pipeline_pb2.Pipeline]:
        request = rpc.ListPipelinesRequest(page_size=page_size)
        while True:
            page = self._raw.call("ListPipelines", request)
            yield from page.pipelines
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def delete_pipeline(self, name: str) -> None:
        name = name if name.startswith("pipelines/") else f"pipelines/{name}"
        self._raw.call("DeletePipeline", rpc.DeletePipelineRequest(name=name))

    # -- dataset jobs -----------------------------------------------------------------

    def create_dataset_job(
        self,
        source: str,
        pipeline: PipelineLike | str,
        *,
        copies: int = 1,
        seed: int = 0,
        into: str = "",
        category_ids: Sequence[int] = (),
        include_source_items: bool = False,
        splits: Sequence[str] = (),
        filter: str = "",
        rebalance_ratio: float | None = None,
        request_id: str = "",
    ) -> rpc.AugmentDatasetJob:
        """Start a job augmenting ``NAME@VERSION`` into a new version of ``into`` (default: the same dataset).

        ``rebalance_ratio``: rebalancing mode (augment the rare classes up to that imbalance) instead of copies.
        """
        job = rpc.AugmentDatasetJob(
            source_dataset_version=version_name(source),
            pipeline=self._source(pipeline),
            copies_per_item=copies,
            seed=seed,
            category_ids=list(category_ids),
            include_source_items=include_source_items,
            target_dataset=dataset_name(into) if into else "",
            splits=list(splits),
            filter=filter,
        )
        if rebalance_ratio is not None:
            job.mode = rpc.AUGMENT_MODE_REBALANCE
            job.max_imbalance_ratio = rebalance_ratio
        request = rpc.CreateAugmentDatasetJobRequest(augment_dataset_job=job, request_id=request_id)
        return self._raw.call("CreateAugmentDatasetJob", request).augment_dataset_job

    def get_dataset_job(self, name: str) -> rpc.AugmentDatasetJob:
        return self._raw.call("GetAugmentDatasetJob", rpc.GetAugmentDatasetJobRequest(name=name)).augment_dataset_job

    def list_dataset_jobs(self, *, state: int = 0) -> Iterator[rpc.AugmentDatasetJob]:
        request = rpc.ListAugmentDatasetJobsRequest(state=state)
        while True:
            page = self._raw.call("ListAugmentDatasetJobs", request)
            yield from page.augment_dataset_jobs
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def cancel_dataset_job(self, name: str) -> rpc.AugmentDatasetJob:
        return self._raw.call("CancelAugmentDatasetJob", rpc.CancelAugmentDatasetJobRequest(name=name)).augment_dataset_job

    def watch_dataset_job(self, name: str) -> Iterator[rpc.AugmentDatasetJob]:
        """The job now, then at each change; ends after a terminal state."""
        for event in self._raw.stream("WatchAugmentDatasetJob", rpc.WatchAugmentDatasetJobRequest(name=name)):
            yield event.augment_dataset_job

    def wait_dataset_job(self, name: str, *, progress: Any = None) -> rpc.AugmentDatasetJob:
        """Follow a job to its end (``progress(job)`` at each change); the job when it SUCCEEDED.

        Raises ``JobFailedError`` (with the job's error) or ``JobCancelledError`` otherwise.
        """
        last = None
        for job in self.watch_dataset_job(name):
            last = job
            if progress is not None:
                progress(job)
        if last is None:
            raise RuntimeError(f"the watch of {name} ended without a message")
        if last.state == common_pb2.JOB_STATE_FAILED:
            raise JobFailedError(last)
        if last.state == common_pb2.JOB_STATE_CANCELLED:
            raise JobCancelledError(last)
        return last
