"""Proto <-> engine conversion for the augmentation service.

The pipeline's JSON form *is* the proto3 JSON mapping of ``PipelineSpec``, so a
spec message converts with ``MessageToDict`` and is then checked by the engine
with field paths that name the request's fields.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf import json_format

from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.api.augmentation.v1 import pipeline_pb2
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client import augmentation_wire as wire
from simulacra_services.annotation.api.convert import annotation_from_proto, annotation_to_proto, category_from_proto, timestamp
from simulacra_services.annotation.domain.model import Category
from simulacra_services.augmentation.engine import Augmented, Item, PipelineSpec, canonical, parse_spec
from simulacra_services.augmentation.persistence.pipelines import StoredPipeline
from simulacra_services.core import errors

_DTYPES = {common_pb2.DATA_TYPE_UINT8: np.dtype("uint8"), common_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4")}
_TO_PB = {np.dtype("uint8"): common_pb2.DATA_TYPE_UINT8, np.dtype("float32"): common_pb2.DATA_TYPE_FLOAT32}


def _invalid(reason: str, field: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{field}: {message}", {"field": field, **metadata})


def spec_from_proto(message: pipeline_pb2.PipelineSpec, path: str) -> PipelineSpec:
    data = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return parse_spec(data, path)


def spec_to_proto(spec: PipelineSpec) -> pipeline_pb2.PipelineSpec:
    return spec_to_proto_json(canonical(spec))


def spec_to_proto_json(data: dict) -> pipeline_pb2.PipelineSpec:
    """The message of a canonical JSON form."""
    return json_format.ParseDict(data, pipeline_pb2.PipelineSpec())


def pipeline_to_proto(stored: StoredPipeline) -> pipeline_pb2.Pipeline:
    return pipeline_pb2.Pipeline(
        name=f"pipelines/{stored.pipeline_id}",
        description=stored.description,
        spec=spec_to_proto(stored.spec),
        digest=stored.digest,
        create_time=timestamp(stored.create_time),
    )


def image_from_proto(tensor: common_pb2.Tensor, field: str, max_pixels: int) -> np.ndarray:
    dtype = _DTYPES.get(tensor.dtype)
    if dtype is None:
        raise _invalid("INVALID_IMAGE", f"{field}.dtype", "images are DATA_TYPE_UINT8 or DATA_TYPE_FLOAT32")
    shape = tuple(int(d) for d in tensor.shape)
    if len(shape) != 3 or shape[2] not in (1, 3, 4) or min(shape) < 1:
        raise _invalid("INVALID_IMAGE", f"{field}.shape", f"images are [H, W, C] with C in 1, 3, 4; got {list(shape)}", shape=list(shape))
    if shape[0] * shape[1] > max_pixels:
        raise errors.ResourceExhausted(
            "IMAGE_TOO_LARGE", f"{field}: {shape[1]}x{shape[0]} pixels, at most {max_pixels}", {"field": field, "limit": max_pixels}
        )
    expected = math.prod(shape) * dtype.itemsize
    data = tensor.data  # each read of a bytes field copies it out of the message: read once
    if len(data) != expected:
        raise _invalid("INVALID_IMAGE", f"{field}.data", f"{len(data)} bytes for shape {list(shape)} ({expected} expected)", size=len(data))
    image = np.frombuffer(data, dtype=dtype).reshape(shape)
    if dtype.kind == "f":
        image = image.astype(np.float32)
        if not np.isfinite(image).all():
            raise _invalid("INVALID_IMAGE", f"{field}.data", "float images must hold finite values")
    return image


def image_to_proto(image: np.ndarray, tensor: common_pb2.Tensor) -> None:
    tensor.dtype = _TO_PB[image.dtype]
    tensor.shape[:] = list(image.shape)
    tensor.data = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<")).tobytes()


def categories_from_proto(messages: object) -> dict[int, Category]:
    return {int(m.category_id): category_from_proto(m) for m in messages}  # type: ignore[attr-defined]


MAX_PARTNERS = 8


def item_from_proto(message: pb.AugmentItem, field: str, max_pixels: int, *, nested: bool = False) -> Item:
    if not message.HasField("image"):
        raise _invalid("MISSING_IMAGE", f"{field}.image", "an item needs an image")
    image = image_from_proto(message.image, f"{field}.image", max_pixels)
    annotations = tuple(annotation_from_proto(a, f"{field}.annotations[{i}]") for i, a in enumerate(message.annotations))
    if len(message.partners) > MAX_PARTNERS or (nested and message.partners):
        why = "partners have no partners of their own" if nested else f"at most {MAX_PARTNERS} partners per item"
        raise _invalid("TOO_MANY_PARTNERS", f"{field}.partners", why, limit=MAX_PARTNERS)
    partners = tuple(item_from_proto(p, f"{field}.partners[{i}]", max_pixels, nested=True) for i, p in enumerate(message.partners))
    return Item(image=image, annotations=annotations, key=message.key, seed=message.seed if message.HasField("seed") else None, partners=partners)


def augmented_to_proto(result: Augmented, message: pb.AugmentedItem) -> None:
    message.key = result.key
    image_to_proto(result.image, message.image)
    _augmented_rest(result, message)


def augmented_item(result: Augmented) -> wire.Encoded:
    """The serialized ``AugmentedItem`` of ``result`` (``augmented_to_proto``'s message), its pixels not copied."""
    rest = pb.AugmentedItem()
    _augmented_rest(result, rest)
    return wire.item(result.key, result.image, rest)


def _augmented_rest(result: Augmented, message: pb.AugmentedItem) -> None:
    """Every field of the item but ``key`` and ``image``."""
    for annotation in result.annotations:
        annotation_to_proto(annotation, message.annotations.add())
    message.seed = result.seed
    message.applied_ops[:] = list(result.applied_ops)
    message.applied_op_paths[:] = list(result.applied_paths)
    message.dropped_annotations = result.dropped_annotations
    message.partner_keys[:] = list(result.partner_keys)


def batch_response(results: list[Augmented], digest: str) -> bytes:
    """A serialized ``AugmentBatchResponse`` (the interceptor sends bytes as they are)."""
    return wire.message(wire.BATCH_RESPONSE_ITEMS, [augmented_item(r) for r in results], pb.AugmentBatchResponse(pipeline_digest=digest))


def stream_response(results: list[Augmented], digest: str, position: int) -> bytes:
    """A serialized ``AugmentStreamResponse``."""
    return wire.message(wire.STREAM_RESPONSE_ITEMS, [augmented_item(r) for r in results], pb.AugmentStreamResponse(pipeline_digest=digest, position=position))
