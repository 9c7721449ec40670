"""Augmentation messages with images as protobuf wire bytes, the pixels copied once.

Building an ``AugmentItem`` (or ``AugmentedItem``) the usual way copies an
image four times before gRPC sees it: numpy to ``bytes``, into the
``Tensor``, into the item (a sub-message given to a constructor is copied),
into the request, then the serializer writes it out (and grows its buffer by
copying). On the augmentation stream's 3 MB requests and 2.4 MB responses
those copies were a large share of the CPU both sides spent per batch
(docs/augmentation.md, section 10). Here a message is the concatenation the
wire format defines, in field-number order, the same bytes
``SerializeToString`` writes:

- an item is its ``key`` field, then its ``image`` field (the ``Tensor``'s
  ``dtype`` and ``shape`` serialized by protobuf, then the ``data`` field whose
  bytes are the numpy array's own buffer), then every other field serialized
  by protobuf from a message that lacks ``key`` and ``image``;
- a request or response is each item as a length-delimited ``items`` field,
  then its other fields.

``b"".join`` of the pieces is the only copy of the pixels. Field numbers are
read from the descriptors; only the field-number order is assumed (key,
image, then the rest), and checked when this module is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from google.protobuf.message import Message

from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as rpc
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.wire_format import varint

Encoded = tuple[int, list[Any]]
"""A serialized message as its length and the pieces (``bytes`` or buffers) that joined make it."""

_DTYPES = {np.dtype("uint8"): common_pb2.DATA_TYPE_UINT8, np.dtype("float32"): common_pb2.DATA_TYPE_FLOAT32}


def _len_tag(message: type[Message], name: str) -> bytes:
    return varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)  # type: ignore[attr-defined]


def _check_order(message: type[Message]) -> None:
    numbers = {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]
    if not numbers["key"] < numbers["image"] < min(n for name, n in numbers.items() if name not in ("key", "image")):
        raise ImportError(f"{message.__name__}: key and image are no longer its first fields; augmentation_wire needs them first")


for _message in (rpc.AugmentItem, rpc.AugmentedItem):
    _check_order(_message)

_ITEM_KEY = _len_tag(rpc.AugmentItem, "key")
_ITEM_IMAGE = _len_tag(rpc.AugmentItem, "image")
_TENSOR_DATA = _len_tag(common_pb2.Tensor, "data")
assert _ITEM_KEY == _len_tag(rpc.AugmentedItem, "key") and _ITEM_IMAGE == _len_tag(rpc.AugmentedItem, "image")


def image_pixels(image: np.ndarray) -> np.ndarray:
    """The array a ``Tensor`` carries: [H, W, C], C-contiguous, little-endian uint8 or float32."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype.newbyteorder("=") not in _DTYPES:  # either byte order
        raise ValueError(f"images are uint8 or float32, got {image.dtype}")
    return np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))


def tensor(image: np.ndarray) -> Encoded:
    """A ``Tensor`` of ``image`` (as ``image_pixels`` gives it): header by protobuf, the data as the array's buffer."""
    pixels = image_pixels(image)
    header = common_pb2.Tensor(dtype=_DTYPES[pixels.dtype.newbyteorder("=")], shape=list(pixels.shape)).SerializeToString()
    if not pixels.nbytes:
        return len(header), [header]
    data_field = _TENSOR_DATA + varint(pixels.nbytes)
    return len(header) + len(data_field) + pixels.nbytes, [header, data_field, memoryview(pixels).cast("B")]


def item(key: str, image: np.ndarray, rest: Message) -> Encoded:
    """An ``AugmentItem`` / ``AugmentedItem``: ``key``, ``image``, then ``rest`` (the message's other fields)."""
    parts: list[Any] = []
    size = 0
    if key:
        text = key.encode()
        head = _ITEM_KEY + varint(len(text)) + text
        parts.append(head)
        size += len(head)
    image_size, image_parts = tensor(image)
    image_head = _ITEM_IMAGE + varint(image_size)
    tail = rest.SerializeToString()
    parts += [image_head, *image_parts, tail]
    return size + len(image_head) + image_size + len(tail), parts


def message(items_tag: bytes, items: Sequence[Encoded], rest: Message | None = None, *, head: Message | None = None) -> bytes:
    """A request or response: ``head`` serialized, each of ``items`` as an ``items`` field
    (``items_tag``), then ``rest`` serialized.

    ``head`` holds only fields numbered below ``items``' and ``rest`` only fields above (checked by
    the callers' tests: the bytes equal ``SerializeToString`` of the same message)."""
    parts: list[Any] = [] if head is None else [head.SerializeToString()]
    for size, pieces in items:
        parts.append(items_tag + varint(size))
        parts += pieces
    if rest is not None:
        parts.append(rest.SerializeToString())
    return b"".join(parts)


STREAM_REQUEST_ITEMS = _len_tag(rpc.AugmentStreamRequest, "items")
STREAM_RESPONSE_ITEMS = _len_tag(rpc.AugmentStreamResponse, "items")
BATCH_REQUEST_ITEMS = _len_tag(rpc.AugmentBatchRequest, "items")
BATCH_RESPONSE_ITEMS = _len_tag(rpc.AugmentBatchResponse, "items")
