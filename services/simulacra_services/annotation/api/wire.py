"""StreamItems responses as protobuf wire bytes, joined from stored item encodings.

A stream of a version sends mostly items whose message is stored with their
row (``convert.encode_item``): the name, image metadata, annotations, all but
``version`` and the image bytes. Building a ``StreamItemsResponse`` object
from them and serializing it again costs the protobuf runtime a copy of every
image into the message and another into the output, which took as long as
reading the blobs themselves (see docs/annotation-store.md, performance).
Here a response is the concatenation the wire format defines instead:

- an ``Item`` is its stored encoding, then its ``version`` field, then a
  second ``image`` field holding only ``data``: a parser merges a repeated
  occurrence of a singular message field into the first one, so the client
  reads exactly the message ``item_to_proto`` gives (field order aside);
- a ``StreamItemsResponse`` is each item as a length-delimited ``items``
  field, then ``cursor``.

The server's interceptor lets such bytes through unserialized (see
``core.interceptors``). Field numbers are read from the descriptors, so a
renumbered field cannot be sent under its old number.
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.descriptor import FieldDescriptor

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.wire_format import varint

_VARINT_TYPES = frozenset({FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_UINT64})
_LEN_TYPES = frozenset({FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_BYTES, FieldDescriptor.TYPE_STRING})

Item = tuple[int, list[bytes]]
"""A serialized ``Item`` as its length and the pieces that joined make it (joined once, in the response)."""


def _tag(message: type, name: str) -> bytes:
    field = message.DESCRIPTOR.fields_by_name[name]  # type: ignore[attr-defined]
    if field.type in _VARINT_TYPES:
        return varint(field.number << 3)
    if field.type in _LEN_TYPES:
        return varint(field.number << 3 | 2)
    raise TypeError(f"{message.__name__}.{name}: no wire type for field type {field.type}")


_ITEM_VERSION = _tag(pb.Item, "version")
_ITEM_IMAGE = _tag(pb.Item, "image")
_IMAGE_DATA = _tag(pb.Image, "data")
_RESPONSE_ITEMS = _tag(api.StreamItemsResponse, "items")
_RESPONSE_CURSOR = _tag(api.StreamItemsResponse, "cursor")


def encoded_item(encoded: bytes, version: int, image_data: bytes | None) -> Item:
    """The ``Item`` of ``convert.encode_item`` output with ``version`` and ``image.data`` set."""
    body = memoryview(encoded)[1:]  # behind the format byte
    parts: list[bytes] = [body]  # type: ignore[list-item]
    size = len(body)
    if version:
        number = varint(version)
        parts += [_ITEM_VERSION, number]
        size += len(_ITEM_VERSION) + len(number)
    if image_data:
        data_field = _IMAGE_DATA + varint(len(image_data))
        image_field = _ITEM_IMAGE + varint(len(data_field) + len(image_data)) + data_field
        parts += [image_field, image_data]
        size += len(image_field) + len(image_data)
    return size, parts


def message_item(message: pb.Item) -> Item:
    """An ``Item`` made the usual way (items without a current stored encoding)."""
    data = message.SerializeToString()
    return len(data), [data]


def stream_response(items: Sequence[Item], cursor: str) -> bytes:
    """A serialized ``StreamItemsResponse`` of ``items`` and ``cursor``: each item's *piece*
    (``piece_length`` bytes: its ``items`` field), in order, then ``cursor_field(cursor)``."""
    parts: list[bytes] = []
    for size, item in items:
        parts.append(_RESPONSE_ITEMS + varint(size))
        parts += item
    parts.append(cursor_field(cursor))
    return b"".join(parts)


def piece_length(size: int) -> int:
    """Bytes of an ``items`` field in a response holding an item of ``size`` bytes."""
    return len(_RESPONSE_ITEMS) + len(varint(size)) + size


def cursor_field(cursor: str) -> bytes:
    """The ``cursor`` field that ends a response (nothing for an empty cursor)."""
    if not cursor:
        return b""
    text = cursor.encode()
    return _RESPONSE_CURSOR + varint(len(text)) + text


FORMAT = f"stream-items-1/item-{_RESPONSE_ITEMS.hex()}{_ITEM_VERSION.hex()}{_ITEM_IMAGE.hex()}{_IMAGE_DATA.hex()}"
"""Names the layout of an item's piece (with the stored encoding's format, in ``stream.PACK_WIRE``):
a stream pack made under another layout is not used."""
