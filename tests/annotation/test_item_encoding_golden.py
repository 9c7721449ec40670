"""The stored item encoding (``items.encoded_item``) against committed bytes.

StreamItems sends most items straight from the encoding stored with their
row (``convert.encode_item``, merged back by ``convert.merge_encoded_item``).
Rows written by an older server keep their bytes, so any change to what
``item_to_proto`` sends must bump ``convert.ENCODED_ITEM_FORMAT``; a test that
compares rows written by the same code cannot see a missed bump. This one
encodes a fixed item (every geometry but pixel maps, which are never encoded,
lineage, attributes, optional fields set and unset) and compares it with the
bytes in ``fixtures/encoded_item_v1.bin``, and decodes those bytes back.

If this fails because ``item_to_proto`` changed on purpose: bump
``ENCODED_ITEM_FORMAT``, then write the new fixture (``encoded_item_v<N>.bin``)
with ``python -m tests.annotation.test_item_encoding_golden``.

Maps hold one entry each: protobuf does not promise an order for several.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_services.annotation.api import convert, wire
from simulacra_services.annotation.domain import codec
from simulacra_services.annotation.persistence import row_codec
from simulacra_services.annotation.domain.model import (
    Annotation,
    Box,
    CameraIntrinsics,
    ClassLabel,
    Cuboid3d,
    CuboidDimensions,
    Keypoint,
    Keypoints,
    Mask,
    Point2d,
    Polygon,
    Quaternion,
    RotatedBox,
    Vector3,
)
from simulacra_services.annotation.domain.records import ImageInfo, ItemRecord, Lineage

FIXTURE = Path(__file__).parent / "fixtures" / f"encoded_item_v{convert.ENCODED_ITEM_FORMAT}.bin"
DATASET = "golden-ds"
CREATED = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
UPDATED = dt.datetime(2026, 2, 3, 4, 5, 6, 789012, tzinfo=dt.timezone.utc)
SHA = "ab" * 32
CONTENT_SHA = "cd" * 32

ANNOTATIONS = (
    Annotation(ClassLabel(), category_id=1, id="a0"),
    Annotation(Box(1.5, 2.25, 10.0, 20.125), category_id=2, id="a1", instance_id="car-7", iscrowd=False, score=0.875,
               area=201.25, attributes={"occluded": "yes"}),
    Annotation(RotatedBox(30.0, 40.5, 8.0, 4.0, -12.5), category_id=2, id="a2"),
    Annotation(Polygon(((0.0, 0.0, 10.0, 0.0, 10.0, 10.0), (1.0, 1.0, 2.0, 1.0, 2.0, 2.0))), category_id=3, id="a3", iscrowd=True),
    Annotation(Mask(4, 5, (3, 2, 10, 5)), category_id=3, id="a4", area=7.0),
    Annotation(Mask(4, 5, "52203"), category_id=3, id="a5"),
    Annotation(Keypoints((Keypoint(1.0, 2.0, 2), Keypoint(0.0, 0.0, 0), Keypoint(3.5, 4.5, 1))), category_id=4, id="a6"),
    Annotation(
        Cuboid3d(
            center=Vector3(1.0, -2.0, 30.5),
            dimensions=CuboidDimensions(4.5, 1.75, 1.5),
            rotation=Quaternion(1.0, 0.0, 0.0, 0.0),
            frame_id="cam0",
            intrinsics=CameraIntrinsics(500.0, 500.0, 32.0, 24.0),
            projected_corners=tuple(Point2d(float(i), float(2 * i)) for i in range(8)),
        ),
        category_id=5, id="a7", score=0.5,
    ),
)
LINEAGE = Lineage(kind="augmented", source_item="datasets/golden-ds/items/orig-1", pipeline_digest="ef" * 32, seed=42)


def _item_row() -> dict[str, Any]:
    """The item's row as the store writes it (``row_codec.item_row``'s keys that the encoding reads)."""
    return {
        "item_id": "item-0001", "added_seq": 0x2A, "content_sha256": CONTENT_SHA,
        "image_sha256": SHA, "width": 64, "height": 48, "format": "png", "channels": 3, "size_bytes": 1234,
        "split": "val", "attributes": {"weather": "rain"}, "lineage": LINEAGE.to_json(), "file_name": "images/0001.png",
        "create_time": CREATED, "update_time": UPDATED,
    }


def _record() -> ItemRecord:
    row = _item_row()
    return ItemRecord(
        dataset_id=DATASET, item_id=row["item_id"], version=0,
        image=ImageInfo(SHA, 64, 48, "png", 3, 1234), split="val", attributes={"weather": "rain"}, lineage=LINEAGE,
        annotations=ANNOTATIONS, file_name="images/0001.png", create_time=CREATED, update_time=UPDATED,
        etag=f"2a-{CONTENT_SHA[:16]}",
    )


def test_encoding_a_fixed_item_gives_the_committed_bytes() -> None:
    golden = FIXTURE.read_bytes()
    assert golden[0] == convert.ENCODED_ITEM_FORMAT
    assert convert.encode_item(_record()) == golden


def test_the_stored_rows_encode_to_the_committed_bytes() -> None:
    """What the store writes: the encoding made from the item row and its annotation rows."""
    annotation_rows = [
        dict(row, geometry=codec.geometry_to_json(a.geometry))
        for row, a in zip(row_codec.annotation_rows(7, 9, ANNOTATIONS), ANNOTATIONS, strict=True)
    ]
    assert row_codec.encoded_item(DATASET, _item_row(), annotation_rows, convert.ITEM_ENCODING) == FIXTURE.read_bytes()


def test_the_committed_bytes_decode_to_the_item() -> None:
    message = pb.Item()
    convert.merge_encoded_item(message, FIXTURE.read_bytes(), 3, b"\x89PNG")
    assert message.name == "datasets/golden-ds/items/item-0001"
    assert message.version == 3
    assert message.etag == "2a-cdcdcdcdcdcdcdcd"
    image = message.image
    assert (image.data, image.sha256, image.width, image.height, image.format, image.channels, image.size_bytes) == (
        b"\x89PNG", SHA, 64, 48, pb.IMAGE_FORMAT_PNG, 3, 1234
    )
    assert (message.split, dict(message.attributes), message.file_name) == ("val", {"weather": "rain"}, "images/0001.png")
    assert message.create_time.ToDatetime(dt.timezone.utc) == CREATED
    assert message.update_time.ToDatetime(dt.timezone.utc) == UPDATED
    assert message.lineage == common_pb2.Lineage(
        augmented=common_pb2.AugmentedSource(source_item=LINEAGE.source_item, pipeline_digest=LINEAGE.pipeline_digest, seed=42)
    )
    decoded = tuple(convert.annotation_from_proto(a, f"annotations[{i}]") for i, a in enumerate(message.annotations))
    assert decoded == ANNOTATIONS
    # And the whole message is what the read path makes of the record (version and image bytes added).
    assert message == convert.item_to_proto(dataclasses.replace(_record(), version=3), b"\x89PNG")


def test_a_stream_response_joined_from_the_committed_bytes_parses_to_the_items() -> None:
    """StreamItems sends the stored bytes joined on the wire (annotation/api/wire.py), not re-serialized."""
    golden = FIXTURE.read_bytes()
    image = bytes(range(256)) * 300  # longer than 127: multi-byte lengths
    items = [wire.encoded_item(golden, 3, image), wire.encoded_item(golden, 0, None), wire.message_item(pb.Item(name="x"))]
    response = api.StreamItemsResponse.FromString(wire.stream_response(items, "cursor-1"))
    first, second = pb.Item(), pb.Item()
    convert.merge_encoded_item(first, golden, 3, image)
    convert.merge_encoded_item(second, golden, 0, None)
    assert list(response.items) == [first, second, pb.Item(name="x")]
    assert response.items[0].image.data == image and response.items[0].image.sha256 == SHA
    assert response.cursor == "cursor-1"
    assert all(size == len(b"".join(parts)) for size, parts in items)  # the sizes that bound a response


if __name__ == "__main__":
    FIXTURE.write_bytes(convert.encode_item(_record()) or b"")
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")
