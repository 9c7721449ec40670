"""RealDataset, mix and ResumableLoader on a real annotation-store (a `simulacra serve` process).

Every digit item carries its number in its pixels (a plain 4x4 grey image of
value i) and its class (i % 10) as a class label, so each sample read says
exactly which item it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from simulacra_client import AnnotationClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.torch_data import RealDataset, ResumableLoader, mix
from tests.annotation.conftest import png
from tests.client.suite import running_services

pytestmark = pytest.mark.timeout(600)

DIGITS = 120
EXTRA = 40


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_services(tmp_path_factory.mktemp("suite"), ["annotation"]) as addresses:
        address = addresses["annotation"]
        with AnnotationClient(address) as client:
            categories = [pb.Category(category_id=d + 1, display_name=str(d)) for d in range(10)]
            client.create_dataset("digits", categories=categories)
            client.upload_items("digits", [(f"d{i:03d}", _digit(i, i % 10, "test" if i % 4 == 0 else "train")) for i in range(DIGITS)])
            client.commit("digits")
            client.create_dataset("extra", categories=categories)
            client.upload_items("extra", [(f"e{i:03d}", _digit(200 + i, 9, "train")) for i in range(EXTRA)])
            client.commit("extra")
        yield address


def _digit(value: int, label: int, split: str) -> pb.Item:
    annotation = pb.Annotation(category_id=label + 1, class_label=pb.ClassLabel())
    return pb.Item(image=pb.Image(data=png(4, 4, mode="L", seed=value, plain=True)), split=split, annotations=[annotation])


def _values(batches: list[tuple[torch.Tensor, ...]]) -> list[int]:
    """The item number of every sample (its pixel value), in order."""
    return [int(v) for batch in batches for v in batch[0][:, 0, 0, 0].tolist()]


def _read(loader: ResumableLoader, batches: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    out = []
    for batch in loader:
        out.append(batch)
        if batches is not None and len(out) == batches:
            break
    return out


def test_workers_read_disjoint_parts_that_together_are_every_item_in_order(store: str) -> None:
    dataset = RealDataset(store, "digits@1", as_uint8=True, with_lineage=True)
    batches = _read(ResumableLoader(dataset, batch_size=8, num_workers=2))
    values = _values(batches)
    assert values == list(range(DIGITS))  # each item once, in the version's order, across 2 workers
    labels = [int(v) for batch in batches for v in batch[1]]
    assert labels == [i % 10 for i in range(DIGITS)]
    names = [name for batch in batches for name in batch[2]["item"]]
    assert names == [f"datasets/digits/items/d{i:03d}" for i in range(DIGITS)]
    assert batches[0][0].shape == (8, 1, 4, 4) and batches[0][0].dtype == torch.uint8
    # Without workers: the same sequence; float images in [0, 1].
    plain = list(RealDataset(store, "digits@1"))
    assert [round(float(image[0, 0, 0]) * 255) for image, _ in plain] == list(range(DIGITS))
    assert plain[5][0].dtype == torch.float32 and float(plain[5][0].max()) == pytest.approx(5 / 255)


def test_ranks_get_disjoint_shards_that_cover_the_version(store: str) -> None:
    shards = [[int(image[0, 0, 0]) for image, _ in RealDataset(store, "digits@1", rank=rank, world_size=3, as_uint8=True)] for rank in range(3)]
    assert all(shards), "every rank gets items"
    assert sorted(v for shard in shards for v in shard) == list(range(DIGITS))
    # Each rank's two DataLoader workers split its shard again, losing nothing.
    worker_read = _values(_read(ResumableLoader(RealDataset(store, "digits@1", rank=1, world_size=3, as_uint8=True), batch_size=4, num_workers=2)))
    assert worker_read == shards[1]


def test_split_and_filter_select_items(store: str) -> None:
    test = [int(image[0, 0, 0]) for image, _ in RealDataset(store, "digits@1", split="test", as_uint8=True)]
    assert test == [i for i in range(DIGITS) if i % 4 == 0]
    threes = [(int(image[0, 0, 0]), label) for image, label in RealDataset(store, "digits@1", split="train", filter='category = "3"', as_uint8=True)]
    assert threes == [(i, 3) for i in range(DIGITS) if i % 10 == 3 and i % 4 != 0]
    assert RealDataset(store, "digits@1", split="train").class_counts() == [sum(1 for i in range(DIGITS) if i % 10 == d and i % 4) for d in range(10)]
    with pytest.raises(ValueError, match="version number"):
        RealDataset(store, "digits@latest")


def test_resume_after_a_restart_continues_the_sequence_exactly(store: str) -> None:
    uninterrupted = _values(_read(ResumableLoader(RealDataset(store, "digits@1", as_uint8=True), batch_size=8, num_workers=2)))

    first = ResumableLoader(RealDataset(store, "digits@1", as_uint8=True), batch_size=8, num_workers=2)
    before = _values(_read(first, batches=5))
    state = json.loads(json.dumps(first.state_dict()))  # a checkpoint on disk
    assert state["position"] == 40 and state["epoch"] == 0
    del first  # the "process" dies

    again = ResumableLoader(RealDataset(store, "digits@1", as_uint8=True), batch_size=8, num_workers=2)
    again.load_state_dict(state)
    after = _values(_read(again))
    assert before + after == uninterrupted
    assert again.state_dict()["position"] == 0 and again.state_dict()["epoch"] == 1  # the pass ended: next epoch

    # Without a loader, the dataset counts what it yielded itself.
    alone = RealDataset(store, "digits@1", as_uint8=True)
    iterator = iter(alone)
    head = [int(next(iterator)[0][0, 0, 0]) for _ in range(7)]
    resumed = RealDataset(store, "digits@1", as_uint8=True)
    resumed.load_state_dict(alone.state_dict())
    assert head + [int(image[0, 0, 0]) for image, _ in resumed] == uninterrupted

    with pytest.raises(ValueError, match="another stream"):
        RealDataset(store, "digits@1", split="test").load_state_dict(state)


def test_mix_holds_its_ratio_over_10000_samples_and_resumes(store: str) -> None:
    def mixed() -> ResumableLoader:
        real = RealDataset(store, "digits@1", cycle=True, as_uint8=True)
        other = RealDataset(store, "extra@1", cycle=True, as_uint8=True)
        return ResumableLoader(mix(real, other, ratio=0.3, num_samples=10_000), batch_size=250, num_workers=2)

    values = _values(_read(mixed()))
    assert len(values) == 10_000
    from_other = np.array([v >= 200 for v in values])
    assert abs(from_other.mean() - 0.3) <= 0.01
    # Every window of 1000 consecutive samples holds the ratio too (deterministic interleaving).
    assert all(abs(from_other[i : i + 1000].sum() - 300) <= 1 for i in range(0, 9001, 500))
    # Each source is read in its own order, cycling.
    assert [v for v in values if v < 200][:130] == [i % DIGITS for i in range(130)]
    assert [v - 200 for v in values if v >= 200][:50] == [i % EXTRA for i in range(50)]

    loader = mixed()
    head = _values(_read(loader, batches=17))
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["position"] == 4250 and state["taken"] == {"first": 2975, "second": 1275}
    resumed = mixed()
    resumed.load_state_dict(state)
    assert head + _values(_read(resumed)) == values
