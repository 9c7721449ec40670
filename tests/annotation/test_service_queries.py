"""Filters and pagination against a Python model of a few hundred random items."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.common.v1 import common_pb2

from .conftest import Annotations, item_upload, png, rpc_error

NAMES = {1: "car", 2: "bus", 3: "person", 4: "traffic light"}
SIZES = [(8, 8), (12, 10), (16, 12)]
IMAGES = {(w, h, s): png(w, h, seed=s) for w, h in SIZES for s in range(2)}


@dataclass
class Model:
    item_id: str
    split: str
    width: int
    height: int
    file_name: str
    lineage: str
    attributes: dict[str, str]
    annotations: list[tuple[int, str]] = field(default_factory=list)  # (category id, kind)

    @property
    def categories(self) -> set[str]:
        return {NAMES[c] for c, _ in self.annotations}

    @property
    def kinds(self) -> set[str]:
        return {k for _, k in self.annotations}


def _annotation(rng: random.Random, width: int, height: int) -> tuple[pb.Annotation, tuple[int, str]]:
    category_id = rng.choice(list(NAMES))
    kind = rng.choice(["box", "class_label", "polygon"])
    if kind == "box":
        message = pb.Annotation(category_id=category_id, box=pb.Box(x=0, y=0, w=rng.randint(1, width), h=rng.randint(1, height)))
    elif kind == "polygon":
        message = pb.Annotation(category_id=category_id, polygon=pb.Polygon(parts=[pb.PolygonPart(coordinates=[0, 0, 3, 0, 3, 3])]))
    else:
        message = pb.Annotation(category_id=category_id, class_label=pb.ClassLabel())
    return message, (category_id, kind)


def generate(count: int, seed: int = 7) -> tuple[list[api.UploadItemsRequest.ItemUpload], dict[str, Model]]:
    rng = random.Random(seed)
    uploads, models = [], {}
    for index in rng.sample(range(10_000), count):  # item ids in no particular order
        item_id = f"item-{index:05d}"
        width, height = rng.choice(SIZES)
        attributes = {}
        if rng.random() < 0.6:
            attributes["weather"] = rng.choice(["fog", "rain", "sun"])
        if rng.random() < 0.3:
            attributes["time"] = rng.choice(["day", "night"])
        lineage_kind = rng.choice(["real", "synthetic", "augmented", ""])
        lineage = {
            "real": common_pb2.Lineage(real=common_pb2.RealSource(origin="cam")),
            "synthetic": common_pb2.Lineage(synthetic=common_pb2.SyntheticSource(generator="vae", generator_version=1, seed=3)),
            "augmented": common_pb2.Lineage(augmented=common_pb2.AugmentedSource(source_item="datasets/x/items/y", seed=1)),
            "": None,
        }[lineage_kind]
        pairs = [_annotation(rng, width, height) for _ in range(rng.choice([0, 0, 1, 1, 2, 3]))]
        model = Model(
            item_id=item_id,
            split=rng.choice(["train", "train", "val", "test"]),
            width=width,
            height=height,
            file_name=f"f-{index}.png",
            lineage=lineage_kind or "real",
            attributes=attributes,
            annotations=[p[1] for p in pairs],
        )
        extra = {"lineage": lineage} if lineage is not None else {}
        uploads.append(
            item_upload(
                item_id, image=IMAGES[(width, height, index % 2)], annotations=[p[0] for p in pairs],
                split=model.split, attributes=attributes, file_name=model.file_name, **extra,
            )
        )
        models[item_id] = model
    return uploads, models


FILTERS: list[tuple[str, Callable[[Model], bool]]] = [
    ('split = "train"', lambda m: m.split == "train"),
    ('category = "car" AND split = "train"', lambda m: "car" in m.categories and m.split == "train"),
    ("category = car OR category = 'traffic light'", lambda m: bool({"car", "traffic light"} & m.categories)),
    ('NOT attributes.weather = "fog"', lambda m: m.attributes.get("weather") != "fog"),
    ("attributes:time", lambda m: "time" in m.attributes),
    ('attributes.weather != "fog" AND category = "person"', lambda m: m.attributes.get("weather", "fog") != "fog" and "person" in m.categories),
    ('kind = "polygon" AND -split = "val"', lambda m: "polygon" in m.kinds and m.split != "val"),
    ("width > 8 AND height <= 10", lambda m: m.width > 8 and m.height <= 10),
    ('lineage = "synthetic" OR lineage = "augmented"', lambda m: m.lineage in ("synthetic", "augmented")),
    ('lineage = "real"', lambda m: m.lineage == "real"),
    ("category_id >= 3", lambda m: any(c >= 3 for c, _ in m.annotations)),
    ('split = "val" AND (category = "bus" OR kind = "class_label")', lambda m: m.split == "val" and ("bus" in m.categories or "class_label" in m.kinds)),
    ('NOT kind = "box" AND NOT kind = "polygon" AND NOT kind = "class_label"', lambda m: not m.annotations),
    ('category = "zebra"', lambda m: False),
    ("", lambda m: True),
]


async def _populated(annotation: Annotations, count: int = 240) -> tuple[str, dict[str, Model]]:
    dataset = await annotation.create_dataset(categories=[pb.Category(category_id=k, display_name=v) for k, v in NAMES.items()])
    uploads, models = generate(count)
    await annotation.upload(dataset.name, [uploads[i : i + 80] for i in range(0, len(uploads), 80)])
    return dataset.name, models


async def test_filters_and_pages_return_exactly_the_matching_items(annotation: Annotations) -> None:
    parent, models = await _populated(annotation)
    for text, predicate in FILTERS:
        expected = sorted(m.item_id for m in models.values() if predicate(m))
        for page_size in (7, 1000):
            got = [i.name.rsplit("/", 1)[1] for i in await annotation.list_all(parent, filter=text, page_size=page_size)]
            assert got == expected, (text, page_size)
    # A committed version answers the same filters the same way after the working state moved on.
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=parent))
    some = sorted(models)[:50]
    for item_id in some:
        await annotation.stub.DeleteItem(api.DeleteItemRequest(name=f"{parent}/items/{item_id}"))
    for text, predicate in FILTERS[:4]:
        expected = sorted(m.item_id for m in models.values() if predicate(m))
        got = [i.name.rsplit("/", 1)[1] for i in await annotation.list_all(f"{parent}/versions/1", filter=text, page_size=13)]
        assert got == expected, text
        remaining = [i.name.rsplit("/", 1)[1] for i in await annotation.list_all(parent, filter=text, page_size=13)]
        assert remaining == [i for i in expected if i not in some], text


async def test_order_by_with_pages_has_no_gaps_or_duplicates(annotation: Annotations) -> None:
    parent, models = await _populated(annotation, count=120)
    orders: list[tuple[str, Callable[[Model], tuple]]] = [
        ("split desc", lambda m: (_desc(m.split), m.item_id)),
        ("width desc, file_name", lambda m: (-m.width, m.file_name, m.item_id)),
        ("height, item_id desc", lambda m: (m.height, _desc(m.item_id))),
    ]
    for order_by, key in orders:
        expected = [m.item_id for m in sorted(models.values(), key=key)]
        got = [i.name.rsplit("/", 1)[1] for i in await annotation.list_all(parent, order_by=order_by, page_size=9)]
        assert got == expected, order_by


def _desc(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text) + (1,)


async def test_page_tokens_are_opaque_and_bound_to_the_query(annotation: Annotations) -> None:
    parent, _ = await _populated(annotation, count=30)
    first = await annotation.stub.ListItems(api.ListItemsRequest(parent=parent, page_size=5, filter='split = "train"'))
    token = first.next_page_token
    assert token
    body, checksum = token.split(".")
    tampered = [
        body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + checksum,  # a changed key
        token[:-1] + ("0" if token[-1] != "0" else "1"),  # a changed checksum
        token[: len(token) // 2],  # cut
        "not-a-token",
    ]
    for bad in tampered:
        with pytest.raises(grpc.RpcError) as caught:
            await annotation.stub.ListItems(api.ListItemsRequest(parent=parent, page_size=5, filter='split = "train"', page_token=bad))
        error = rpc_error(caught.value)
        assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"), bad
    for other in (
        api.ListItemsRequest(parent=parent, page_size=5, filter='split = "val"', page_token=token),
        api.ListItemsRequest(parent=parent, page_size=5, filter='split = "train"', order_by="width", page_token=token),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            await annotation.stub.ListItems(other)
        assert rpc_error(caught.value).reason == "INVALID_PAGE_TOKEN"
    # The page size may change between pages.
    rest = await annotation.stub.ListItems(api.ListItemsRequest(parent=parent, page_size=1000, filter='split = "train"', page_token=token))
    assert not rest.next_page_token and len(first.items) + len(rest.items) == len(await annotation.list_all(parent, filter='split = "train"'))


async def test_bad_filters_name_the_position(annotation: Annotations) -> None:
    parent, _ = await _populated(annotation, count=3)
    for text, position in (('split = "train" AND', 19), ("colour = red", 0), ("width > wide", 8), ('kind = "blob"', 7)):
        with pytest.raises(grpc.RpcError) as caught:
            await annotation.stub.ListItems(api.ListItemsRequest(parent=parent, filter=text))
        error = rpc_error(caught.value)
        assert (error.code, error.reason, error.metadata["position"]) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FILTER", str(position)), text
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.ListItems(api.ListItemsRequest(parent=parent, order_by="colour"))
    assert rpc_error(caught.value).reason == "INVALID_ORDER_BY"
