"""GetStatistics against counts made in Python over random data."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.common.v1 import common_pb2

from .conftest import Annotations, item_upload, png

W, H = 300, 200
CATEGORIES = {1: "cat", 2: "dog", 3: "bird", 4: "axolotl"}  # 4 never used
BOX_EDGES = [0, 8, 16, 32, 64, 96, 128, 256, 512]


def _bucket(value: float, edges: list[float]) -> int:
    return max(i for i, edge in enumerate(edges) if value >= edge)


async def test_statistics_match_python_counts(annotation: Annotations) -> None:
    rng = random.Random(3)
    dataset = await annotation.create_dataset(categories=[pb.Category(category_id=k, display_name=v) for k, v in CATEGORIES.items()])
    image = png(W, H, plain=True, seed=1)
    uploads, per_item, categories, kinds, boxes, splits, lineages = [], [], [], Counter(), [], Counter(), Counter()
    items_of_category: dict[int, set[str]] = {1: set(), 2: set(), 3: set()}
    for index in range(120):
        item_id = f"it{index}"
        count = rng.choice([0, 1, 1, 2, 3, 4, 5, 9, 17])
        annotations = []
        for _ in range(count):
            category_id = rng.choices([1, 2, 3], weights=[10, 3, 1])[0]
            if rng.random() < 0.7:
                w, h = rng.uniform(0.5, 299), rng.uniform(0.5, 199)
                annotations.append(pb.Annotation(category_id=category_id, box=pb.Box(x=0, y=0, w=w, h=h)))
                boxes.append((w, h))
                kinds["box"] += 1
            else:
                annotations.append(pb.Annotation(category_id=category_id, class_label=pb.ClassLabel()))
                kinds["class_label"] += 1
            categories.append(category_id)
            items_of_category[category_id].add(item_id)
        split = rng.choice(["train", "val", "holdout"])
        synthetic = rng.random() < 0.25
        lineage = {"lineage": common_pb2.Lineage(synthetic=common_pb2.SyntheticSource(generator="g", generator_version=2))} if synthetic else {}
        lineages["synthetic" if synthetic else "real"] += 1
        splits[split] += 1
        per_item.append(count)
        uploads.append(item_upload(item_id, image=image, annotations=annotations, split=split, **lineage))
    await annotation.upload(dataset.name, [uploads[:60], uploads[60:]])
    await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))

    stats = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=f"{dataset.name}/versions/1"))).statistics
    counts = Counter(categories)
    assert (stats.item_count, stats.annotation_count) == (120, len(categories))
    assert [(c.category_id, c.display_name, c.annotation_count, c.item_count) for c in stats.categories] == [
        (k, v, counts.get(k, 0), len(items_of_category.get(k, ()))) for k, v in CATEGORIES.items()
    ]
    assert stats.imbalance_ratio == pytest.approx(max(counts.values()) / min(counts.values()))
    assert list(stats.empty_category_ids) == [4]
    assert dict(stats.items_per_split) == dict(splits)
    assert [(k.kind, k.annotation_count) for k in stats.annotation_kinds] == [
        (pb.ANNOTATION_KIND_CLASS_LABEL, kinds["class_label"]),
        (pb.ANNOTATION_KIND_BOX, kinds["box"]),
    ]
    assert [(k.kind, k.item_count) for k in stats.lineage_kinds] == [
        (common_pb2.LINEAGE_KIND_REAL, lineages["real"]),
        (common_pb2.LINEAGE_KIND_SYNTHETIC, lineages["synthetic"]),
    ]

    edges = [0, 1, 2, 3, 5, 9, 17, 33]  # 0, 1, 2, 3-4, 5-8, 9-16, 17-32, then the empty open bucket
    per_item_buckets = Counter(_bucket(n, edges) for n in per_item)
    histogram = stats.annotations_per_item
    assert [(b.lower, b.upper) for b in histogram.buckets] == list(zip(edges, edges[1:] + [math.inf]))
    assert [b.count for b in histogram.buckets] == [per_item_buckets.get(i, 0) for i in range(len(edges))]
    assert (histogram.count, histogram.min, histogram.max) == (120, min(per_item), max(per_item))
    assert histogram.mean == pytest.approx(sum(per_item) / 120)

    sizes = [math.sqrt(w * h) for w, h in boxes]
    size_buckets = Counter(_bucket(s, BOX_EDGES) for s in sizes)
    assert [(b.lower, b.upper) for b in stats.box_size.buckets] == list(zip(BOX_EDGES, BOX_EDGES[1:] + [math.inf]))
    assert [b.count for b in stats.box_size.buckets] == [size_buckets.get(i, 0) for i in range(len(BOX_EDGES))]
    assert stats.box_size.mean == pytest.approx(sum(sizes) / len(sizes))
    areas = [w * h for w, h in boxes]
    assert (stats.small_box_count, stats.medium_box_count, stats.large_box_count) == (
        sum(a < 32**2 for a in areas),
        sum(32**2 <= a < 96**2 for a in areas),
        sum(a >= 96**2 for a in areas),
    )

    # A filter narrows the statistics; the working state follows later changes, the version does not.
    val = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=dataset.name, filter='split = "val"'))).statistics
    assert val.item_count == splits["val"] and dict(val.items_per_split) == {"val": splits["val"]}
    await annotation.stub.DeleteItem(api.DeleteItemRequest(name=f"{dataset.name}/items/it0"))
    working = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=dataset.name))).statistics
    assert (working.item_count, working.annotation_count) == (119, len(categories) - per_item[0])
    again = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=f"{dataset.name}/versions/1"))).statistics
    assert again == stats


async def test_statistics_of_an_empty_dataset(annotation: Annotations) -> None:
    dataset = await annotation.create_dataset(categories=[pb.Category(category_id=5, display_name="only")])
    stats = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=dataset.name))).statistics
    assert (stats.item_count, stats.annotation_count, stats.imbalance_ratio) == (0, 0, 1.0)
    assert list(stats.empty_category_ids) == [5]
    assert stats.annotations_per_item.count == 0 and stats.box_size.count == 0


def _piece(category_id: int, instance_id: str = "", **kind: object) -> pb.Annotation:
    return pb.Annotation(category_id=category_id, instance_id=instance_id, **kind)


async def test_class_balance_counts_objects_not_annotations(annotation: Annotations) -> None:
    """COCO-like items: a person's box, mask and keypoints (one instance id) are one person."""
    person = pb.Category(category_id=1, display_name="person", keypoint_names=["nose", "left_eye", "right_eye"])
    dataset = await annotation.create_dataset(
        categories=[person, pb.Category(category_id=2, display_name="car"), pb.Category(category_id=3, display_name="tree")]
    )
    box = {"box": pb.Box(x=1, y=1, w=8, h=6)}
    mask = {"mask": pb.Mask(height=12, width=16, uncompressed=pb.RleCounts(counts=[12 * 16]))}
    keypoints = {"keypoints": pb.Keypoints(points=[pb.Keypoint(x=2, y=2, visibility=2)] * 3)}
    polygon = {"polygon": pb.Polygon(parts=[pb.PolygonPart(coordinates=[1, 1, 9, 1, 9, 7])])}
    street = [
        _piece(1, "1", **box), _piece(1, "1", **mask), _piece(1, "1", **keypoints),  # person 1: three pieces
        _piece(1, "2", **box), _piece(1, "2", **keypoints),  # person 2: two pieces
        _piece(2, "3", **box), _piece(2, "3", **polygon),  # car 3: box and polygon
        _piece(2, **box),  # a car without instance id: an object of its own
    ]
    parking = [
        _piece(1, "1", **box), _piece(1, "1", **polygon),  # instance ids are per item: another person 1
        _piece(2, "4", **box), _piece(2, "4", class_label=pb.ClassLabel()),  # a class label is always its own object
        _piece(2, class_label=pb.ClassLabel()),
    ]
    await annotation.upload(dataset.name, [[item_upload("street", annotations=street), item_upload("parking", image=png(seed=2), annotations=parking)]])
    stats = (await annotation.stub.GetStatistics(api.GetStatisticsRequest(parent=dataset.name))).statistics
    counts = [(c.display_name, c.object_count, c.annotation_count, c.item_count) for c in stats.categories]
    assert counts == [("person", 3, 7, 2), ("car", 5, 6, 2), ("tree", 0, 0, 0)]
    assert stats.imbalance_ratio == pytest.approx(5 / 3)  # objects; annotations would say 7 / 6
    assert list(stats.empty_category_ids) == [3]
