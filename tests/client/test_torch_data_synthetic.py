"""SyntheticDataset and mix(balance=True) on a real running sampling service and annotation-store
(`simulacra serve` processes), with a small generator exported from torch into the registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from simulacra_client import AnnotationClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.errors import SimulacraRpcError
from simulacra_client.torch_data import RealDataset, ResumableLoader, SyntheticDataset, mix
from simulacra_services.core.registry import ModelRegistry
from simulacra_services.core.storage.local import LocalObjectStore
from tests.annotation.conftest import png
from tests.client.suite import running_services
from tests.sampling.generators import DIGITS, export

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("suite")
    registry = ModelRegistry(LocalObjectStore(data / "objects"))
    registry.register_version("digits", export(DIGITS), DIGITS, model_kind="gan")
    registry.register_version("digits", export(DIGITS, weights_seed=1), DIGITS, model_kind="gan")
    with running_services(data, ["annotation", "sampling"]) as addresses:
        with AnnotationClient(addresses["annotation"]) as client:
            client.create_dataset("biased", categories=[pb.Category(category_id=d + 1, display_name=str(d)) for d in range(10)])
            # 10 items of each class but 2 of class 3 and none of class 7.
            counts = [10, 10, 10, 2, 10, 10, 10, 0, 10, 10]
            items = [
                pb.Item(image=pb.Image(data=png(8, 8, mode="L", seed=label, plain=True)), annotations=[pb.Annotation(category_id=label + 1, class_label=pb.ClassLabel())])
                for label, count in enumerate(counts) for _ in range(count)
            ]
            client.upload_items("biased", items)
            client.commit("biased")
        yield addresses


def _read(loader: ResumableLoader, batches: int | None = None) -> list[tuple]:
    out = []
    for batch in loader:
        out.append(batch)
        if batches is not None and len(out) == batches:
            break
    return out


def _indices(batches: list[tuple]) -> list[int]:
    return [int(i) for batch in batches for i in batch[2]["index"]]


def _images(batches: list[tuple]) -> torch.Tensor:
    return torch.cat([batch[0] for batch in batches])


def test_workers_split_the_stream_disjointly_and_completely(suite: dict[str, str]) -> None:
    def dataset(**options: object) -> SyntheticDataset:
        return SyntheticDataset(suite["sampling"], "digits", seed=5, num_samples=200, with_lineage=True, as_uint8=True, **options)

    two = _read(ResumableLoader(dataset(), batch_size=16, num_workers=2))
    assert _indices(two) == list(range(200))  # every index once, in order, across two workers
    alone = list(dataset())
    assert torch.equal(_images(two), torch.stack([image for image, _, _ in alone]))  # bit-identical to one reader
    assert [int(label) for batch in two for label in batch[1]] == [label for _, label, _ in alone]
    assert two[0][0].shape == (16, 1, 8, 8) and two[0][0].dtype == torch.uint8
    lineage = alone[3][2]
    assert lineage == {"source": "synthetic", "item": "", "version": 0, "generator": "models/digits/versions/2", "seed": 5, "index": 3}


def test_ranks_read_the_streams_shards(suite: dict[str, str]) -> None:
    full = list(SyntheticDataset(suite["sampling"], "digits@1", seed=9, start_index=10, num_samples=90, with_lineage=True, as_uint8=True))
    by_index = {lineage["index"]: image for image, _, lineage in full}
    seen: list[int] = []
    for rank in range(3):
        shard = _read(ResumableLoader(SyntheticDataset(suite["sampling"], "digits@1", seed=9, start_index=10, num_samples=30, rank=rank, world_size=3, with_lineage=True, as_uint8=True), batch_size=8, num_workers=2))
        indices = _indices(shard)
        assert all(i % 3 == rank for i in indices)
        assert all(torch.equal(image, by_index[i]) for image, i in zip(_images(shard), indices))  # the same samples as unsharded
        seen += indices
    assert sorted(seen) == list(range(10, 100))


def test_resume_after_a_restart_continues_the_stream_exactly(suite: dict[str, str]) -> None:
    def loader() -> ResumableLoader:
        return ResumableLoader(SyntheticDataset(suite["sampling"], "digits", seed=3, with_lineage=True), batch_size=16, num_workers=2)

    uninterrupted = _read(loader(), batches=10)
    first = loader()
    head = _read(first, batches=6)
    state = json.loads(json.dumps(first.state_dict()))
    assert state["position"] == 96 and state["identity"]["generator"] == "models/digits/versions/2"
    del first
    again = loader()
    again.load_state_dict(state)
    tail = _read(again, batches=4)
    assert _indices(head + tail) == list(range(160))
    assert torch.equal(_images(head + tail), _images(uninterrupted))
    with pytest.raises(ValueError, match="another stream"):
        SyntheticDataset(suite["sampling"], "digits", seed=4).load_state_dict(state)


def test_balance_draws_synthetic_samples_for_the_missing_classes(suite: dict[str, str]) -> None:
    real = RealDataset(suite["annotation"], "biased@1", cycle=True, with_lineage=True)
    synthetic = SyntheticDataset(suite["sampling"], "digits", seed=1, with_lineage=True)
    mixed = mix(real, synthetic, balance=True, num_samples=1000)
    assert synthetic.class_mix == {3: 8.0, 7: 10.0}
    assert mixed.schedule.ratio == pytest.approx(18 / (82 + 18), abs=1e-6)
    batches = _read(ResumableLoader(mixed, batch_size=50, num_workers=2))
    sources = [s for batch in batches for s in batch[2]["source"]]
    labels = [int(label) for batch in batches for label in batch[1]]
    assert len(sources) == 1000 and sources.count("synthetic") == 180
    assert {label for label, source in zip(labels, sources) if source == "synthetic"} == {3, 7}
    counts = [labels.count(d) for d in range(10)]
    assert max(counts) - min(counts) < 40  # balanced: real 10x100-ish per class, 7 only from synthetic
    assert mixed.state_dict()["taken"] == {"real": 0, "synthetic": 0}  # the pass ended: next epoch starts at 0


def test_an_unknown_generator_is_a_precise_error(suite: dict[str, str]) -> None:
    with pytest.raises(SimulacraRpcError) as caught:
        SyntheticDataset(suite["sampling"], "nope")
    assert caught.value.code.name == "NOT_FOUND"
