"""The annotation-store as the dataset jobs see it: the SDK behind plain domain types.

All protobuf of the job path lives here (and in the SDK): the job itself
(``jobs/dataset_job.py``) gets images as numpy arrays and annotations, categories
and lineage as the annotation-store's domain types. Every SDK error becomes a
domain error with the same code and reason, and what the job was doing.
Synchronous: the job calls it from its worker thread.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import cv2
import grpc
import numpy as np

from simulacra_client.annotation import AnnotationClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.errors import NotFoundError, SimulacraRpcError, from_rpc_error
from simulacra_services.annotation.api.convert import (
    annotation_from_proto,
    annotation_to_proto,
    category_from_proto,
    category_message,
    lineage_from_proto,
    lineage_to_proto,
)
from simulacra_services.annotation.domain.model import Annotation, Category
from simulacra_services.augmentation.jobs.items import NewItem, StoredItem, object_counts
from simulacra_services.core import errors

T = TypeVar("T")
_ERRORS = {cls.code.value: cls for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.SimulacraError) and cls is not errors.SimulacraError}


def domain_error(error: SimulacraRpcError, what: str) -> errors.SimulacraError:
    """An annotation-store error as a domain error: same code and reason, and what was being done."""
    cls = _ERRORS.get(error.code.name, errors.Unavailable)
    reason = error.reason or ("ANNOTATION_STORE_UNAVAILABLE" if error.code is grpc.StatusCode.UNAVAILABLE else "ANNOTATION_STORE_ERROR")
    return cls(reason, f"{what}: {error.message}", {**error.metadata, "annotation_store_code": error.code.name})


def decode_image(data: bytes, field: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise errors.DataLoss("UNDECODABLE_IMAGE", f"{field}: the stored image does not decode", {"field": field})
    if image.ndim == 2:
        return image[:, :, None]
    if image.dtype != np.uint8:
        image = (image / 257).astype(np.uint8)
    return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)


def encode_png(image: np.ndarray) -> bytes:
    if image.dtype != np.uint8:
        raise errors.InvalidArgument("FLOAT_OUTPUT_NOT_STORABLE", "pipeline: a NormalizeOp makes float images; stored items need uint8 (leave normalize to the stream)")
    pixels = image[:, :, 0] if image.shape[2] == 1 else cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA if image.shape[2] == 4 else cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".png", pixels)
    assert ok
    return encoded.tobytes()


class AnnotationStoreGateway:
    def __init__(self, address: str, *, timeout: float = 120.0, max_pixels: int | None = None) -> None:
        """``max_pixels``: the largest stored image the job augments (the service's SIMULACRA_MAX_IMAGE_PIXELS)."""
        self._client = AnnotationClient(address, timeout=timeout)
        self._timeout = timeout
        self._max_pixels = max_pixels

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AnnotationStoreGateway:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _call(what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except SimulacraRpcError as error:
            raise domain_error(error, what) from None
        except grpc.RpcError as error:
            raise domain_error(from_rpc_error(error), what) from None

    # -- reading ---------------------------------------------------------------------

    def version(self, reference: str) -> str:
        return self._call(f"reading {reference}", self._client.get_version, reference).name

    def categories(self, reference: str) -> list[Category]:
        return [category_from_proto(c) for c in self._call(f"reading the categories of {reference}", self._client.list_categories, reference)]

    def object_counts(self, version: str, selection: str) -> list[tuple[str, Counter[int]]]:
        """(item name, objects per category) of the selected items, without their pixels."""
        streamed = self._call(f"listing {version}", lambda: list(self._client.stream_items(version, filter=selection, view=pb.ITEM_VIEW_BASIC)))
        return [(s.item.name, object_counts(self._annotations(s.item))) for s in streamed]

    def items(self, version: str, selection: str, start_cursor: str = "") -> Iterator[tuple[StoredItem, str]]:
        """The selected items with their pixels, one at a time, each with the cursor that continues
        after it: ``items(version, selection, cursor)`` starts with the next item (nothing before it is
        read again). ``start_cursor`` comes from an earlier call with the same version and selection."""
        stream = self._client.stream_items(version, start_cursor=start_cursor, filter=selection, view=pb.ITEM_VIEW_FULL)
        while True:
            streamed = self._call(f"reading {version}", next, stream, None)
            if streamed is None:
                return
            yield self._stored(streamed.item), streamed.cursor

    def item(self, version: str, name: str) -> StoredItem:
        request = rpc.GetItemRequest(name=f"{version}/items/{name.rsplit('/', 1)[1]}", view=pb.ITEM_VIEW_FULL)
        return self._stored(self._call(f"reading {name}", self._client.stub.GetItem, request, timeout=self._timeout).item)

    @staticmethod
    def _annotations(item: pb.Item) -> tuple[Annotation, ...]:
        return tuple(annotation_from_proto(a, f"{item.name}.annotations[{i}]") for i, a in enumerate(item.annotations))

    def _check_size(self, item: pb.Item, width: int, height: int) -> None:
        if self._max_pixels is not None and width * height > self._max_pixels:
            raise errors.ResourceExhausted(
                "IMAGE_TOO_LARGE",
                f"{item.name}.image: {width}x{height} pixels, at most {self._max_pixels} (SIMULACRA_MAX_IMAGE_PIXELS of the augmentation service)",
                {"field": f"{item.name}.image", "limit": self._max_pixels},
            )

    def _stored(self, item: pb.Item) -> StoredItem:
        self._check_size(item, item.image.width, item.image.height)  # before decoding, when the store says
        image = decode_image(item.image.data, f"{item.name}.image")
        self._check_size(item, image.shape[1], image.shape[0])
        return StoredItem(
            name=item.name,
            split=item.split,
            attributes=dict(item.attributes),
            image=image,
            annotations=self._annotations(item),
            lineage=lineage_from_proto(item.lineage),
            encoded=bytes(item.image.data),
            image_sha256=item.image.sha256,
        )

    # -- writing ---------------------------------------------------------------------

    def prepare_target(self, target: str, categories: Sequence[Category], job_id: str) -> None:
        """Create the target (labelled ``augment_job``: ``job_id``) with ``categories`` when it does not exist.

        An existing target is left as it is: the categories it lacks go into the job's staging
        (``open_staging``), so they reach the committed version and never its working state."""
        try:
            self._client.get_dataset(target)
        except NotFoundError:
            messages = [category_message(c) for c in categories]
            self._call(f"creating {target}", self._client.create_dataset, target, labels={"augment_job": job_id}, categories=messages)
        except SimulacraRpcError as error:
            raise domain_error(error, f"reading {target}") from None

    def open_staging(self, target: str, staging_id: str, categories: Sequence[Category] = ()) -> None:
        """Create the job's staging in ``target`` with ``categories`` staged (an item-less batch), so that even a
        job that writes nothing commits, and the version has the source's categories. CATEGORY_CONFLICT when
        the target has another category under one of their ids or names."""
        request = rpc.UploadItemsRequest(
            parent=target, request_id=f"{staging_id}-open", staging_id=staging_id, categories=[category_message(c) for c in categories]
        )
        self._upload(f"staging in {target}", request)

    def upload(self, target: str, items: Sequence[NewItem], staging_id: str, batch_index: int) -> None:
        """Upload batch ``batch_index`` into the job's staging of ``target``: invisible until ``commit``.

        The request id is the staging's and the batch's: a resumed job that uploads the same batch again
        (its outputs are deterministic) gets the first upload's answer instead of ITEM_ALREADY_EXISTS.
        """
        messages = []
        for new in items:
            image = pb.Image(sha256=new.image_sha256) if new.image_sha256 else pb.Image(data=new.encoded or encode_png(new.image))  # type: ignore[arg-type]
            message = pb.Item(split=new.split, image=image)
            message.attributes.update(new.attributes)
            lineage = lineage_to_proto(new.lineage)
            if lineage is not None:
                message.lineage.CopyFrom(lineage)
            for annotation in new.annotations:
                annotation_to_proto(annotation, message.annotations.add())
            messages.append(rpc.UploadItemsRequest.ItemUpload(item_id=new.item_id, item=message))
        request = rpc.UploadItemsRequest(parent=target, request_id=f"{staging_id}-b{batch_index}", staging_id=staging_id, items=messages,
                                         box_bounds_policy=pb.BOX_BOUNDS_POLICY_CLIP)
        self._upload(f"uploading to {target}", request)

    def _upload(self, what: str, request: rpc.UploadItemsRequest) -> None:
        """One UploadItems batch with its own request id (the SDK's ``upload_items`` draws its ids)."""
        self._call(what, lambda: list(self._client.stub.UploadItems(iter([request]), timeout=self._timeout)))

    def commit(self, target: str, staging_id: str, description: str, source_version: str, pipeline_digest: str) -> str:
        """The staging as the next version of ``target``, derived from ``source_version``; the working state is not touched."""
        response = self._call(f"committing {target}", self._client.commit_staged, target, staging_id, description=description[:4096],
                              source_version=source_version, pipeline_digest=pipeline_digest)
        return response.version.name

    def discard(self, target: str, staging_id: str, job_id: str) -> None:
        """Remove what a job wrote: its staging, and the target when the job created it."""
        try:
            dataset = self._client.get_dataset(target)
        except SimulacraRpcError:
            return
        self._call(f"discarding the staging of {target}", self._client.discard_staging, target, staging_id)
        if dataset.labels.get("augment_job") == job_id and dataset.latest_version == 0 and dataset.item_count == 0:
            self._call(f"deleting {target}", self._client.delete_dataset, target, force=True)
