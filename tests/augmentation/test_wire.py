"""Stream and batch messages joined as wire bytes (simulacra_client.augmentation_wire) are exactly the
bytes protobuf writes for the same messages, on the server's responses and the SDK's requests."""

from __future__ import annotations

import numpy as np
import pytest

from simulacra_client import augmentation_wire as wire
from simulacra_client.api.annotation.v1 import annotation_pb2
from simulacra_client.api.augmentation.v1 import augmentation_service_pb2 as pb
from simulacra_client.augmentation import ItemInput, _augmented
from simulacra_services.annotation.domain.model import Annotation, Box, Keypoint, Keypoints, Polygon
from simulacra_services.augmentation.api import convert
from simulacra_services.augmentation.engine import Augmented, Augmenter, Item, parse_spec
from tests.augmentation.support import CATEGORIES, photo

PIPELINE = {
    "ops": [
        {"random_resized_crop": {"height": 40, "width": 52, "scale": {"min": 0.5, "max": 1.0}}},
        {"horizontal_flip": {}, "probability": 0.5},
        {"mosaic": {}, "probability": 0.5},
    ]
}


def results() -> list[Augmented]:
    """Augmented items of every shape a response carries: 3 and 1 channels, float32, no annotations,
    several kinds of annotation, partners, an empty key, a seed above 2**63."""
    annotations = (
        Annotation(Box(4, 5, 20, 12), 2, id="b"),
        Annotation(Polygon(((10, 10, 30, 10, 20, 25),)), 2, id="p", attributes={"colour": "red"}),
        Annotation(Keypoints((Keypoint(12, 14, 2), Keypoint(14, 14, 2), Keypoint(18, 14, 1))), 1, id="k"),
    )
    augmenter = Augmenter(parse_spec(PIPELINE), CATEGORIES)
    partners = tuple(Item(photo(60, 70, seed=10 + i), key=f"partner/{i}") for i in range(3))
    out = [augmenter.run(Item(photo(60, 70, seed=i), annotations, key=f"datasets/d/items/{i}", partners=partners), seed=i) for i in range(6)]
    out.append(augmenter.run(Item(photo(30, 31, channels=1, seed=7), (), key=""), seed=2**64 - 1))
    normalize = Augmenter(parse_spec({"ops": [{"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}]}))
    out.append(normalize.run(Item(photo(9, 11, seed=8), annotations[:1], key="float"), seed=3))
    assert out[-1].image.dtype == np.float32 and any(r.partner_keys for r in out)
    return out


def filled(message: pb.AugmentStreamResponse | pb.AugmentBatchResponse, found: list[Augmented]) -> bytes:
    for result in found:
        convert.augmented_to_proto(result, message.items.add())
    return message.SerializeToString()


def test_responses_are_the_bytes_protobuf_writes() -> None:
    found = results()
    assert convert.stream_response(found, "sha256:abc", 12345) == filled(pb.AugmentStreamResponse(pipeline_digest="sha256:abc", position=12345), found)
    assert convert.stream_response(found[:1], "d", 0) == filled(pb.AugmentStreamResponse(pipeline_digest="d"), found[:1])
    assert convert.stream_response([], "d", 3) == filled(pb.AugmentStreamResponse(pipeline_digest="d", position=3), [])
    assert convert.batch_response(found, "sha256:abc") == filled(pb.AugmentBatchResponse(pipeline_digest="sha256:abc"), found)
    # What the SDK reads back is the engine's output.
    parsed = pb.AugmentStreamResponse.FromString(convert.stream_response(found, "d", 0))
    for result, message in zip(found, parsed.items):
        back = _augmented(message)
        assert back.image.dtype == result.image.dtype and back.image.shape == result.image.shape
        assert back.image.tobytes() == result.image.tobytes() and back.seed == result.seed


def annotation(index: int) -> annotation_pb2.Annotation:
    return annotation_pb2.Annotation(id=str(index), category_id=1, box=annotation_pb2.Box(x=index, y=2, w=10, h=5.5), attributes={"a": "b"})


@pytest.mark.parametrize(
    "image",
    [
        photo(20, 30),
        photo(20, 30, channels=1)[:, :, 0],  # [H, W]: sent as [H, W, 1]
        photo(40, 60)[::2, ::2],  # not contiguous
        np.linspace(-1, 1, 5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3),
        np.arange(24, dtype=">f4").reshape(2, 4, 3),  # big-endian: sent little-endian
    ],
    ids=["rgb", "2d", "strided", "float32", "big-endian"],
)
def test_stream_requests_are_the_bytes_protobuf_writes(image: np.ndarray) -> None:
    inputs = [
        ItemInput(image, "datasets/d/items/1", [annotation(i) for i in range(3)]),
        ItemInput(image, "", [], seed=2**64 - 1),
        ItemInput(image, "é/ü", [annotation(7)], seed=0),
    ]
    expected = pb.AugmentStreamRequest(items=[i.to_proto() for i in inputs]).SerializeToString()
    assert wire.message(wire.STREAM_REQUEST_ITEMS, [i.encoded() for i in inputs]) == expected
    parsed = pb.AugmentStreamRequest.FromString(expected)
    sent = np.frombuffer(parsed.items[0].image.data, dtype="<f4" if image.dtype.kind == "f" else np.uint8)
    assert np.array_equal(sent.reshape(tuple(parsed.items[0].image.shape)).squeeze(), image.squeeze())


@pytest.mark.parametrize("categories", [[], [annotation_pb2.Category(category_id=1, display_name="face", keypoint_names=["l", "r"], flip_pairs=[annotation_pb2.KeypointPair(first=0, second=1)])]])
@pytest.mark.parametrize("pipeline", [pb.PipelineSource(pipeline_name="pipelines/p"), pb.PipelineSource()])
def test_batch_requests_are_the_bytes_protobuf_writes(categories: list[annotation_pb2.Category], pipeline: pb.PipelineSource) -> None:
    # AugmentBatchRequest's items (field 3) sit between pipeline and seed (1, 2) and categories (4):
    # the SDK's augment() writes a head, the items, then a tail.
    inputs = [ItemInput(photo(20, 30), "datasets/d/items/1", [annotation(1)]), ItemInput(photo(8, 9, channels=1), "", [], seed=5)]
    for seed in (0, 7, 2**64 - 1):
        expected = pb.AugmentBatchRequest(pipeline=pipeline, seed=seed, items=[i.to_proto() for i in inputs], categories=categories)
        got = wire.message(
            wire.BATCH_REQUEST_ITEMS, [i.encoded() for i in inputs], pb.AugmentBatchRequest(categories=categories),
            head=pb.AugmentBatchRequest(pipeline=pipeline, seed=seed),
        )
        assert got == expected.SerializeToString()


def test_images_of_other_types_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8 or float32"):
        ItemInput(np.zeros((4, 4, 3), np.int16), "k").encoded()
