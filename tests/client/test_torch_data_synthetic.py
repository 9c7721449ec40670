"""SyntheticDataset and mix(balance=True) on a real running sampling service and annotation-store
(`simulacra serve` processes), with a small generator exported from torch into the registry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from simulacra_client import AnnotationClient, SamplingClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.errors import SimulacraRpcError
from simulacra_client.torch_data import RealDataset, ResumableLoader, SyntheticDataset, mix
from simulacra_services.core.registry import AttributeSpec, GeneratorSignature, ModelRegistry
from simulacra_services.core.storage.local import LocalObjectStore
from tests.annotation.conftest import png
from tests.client.suite import running_services
from tests.sampling.generators import DIGITS, export

pytestmark = pytest.mark.timeout(600)

STROKES = GeneratorSignature(
    latent_dim=8, channels=1, height=8, width=8, num_classes=10, class_names=tuple(f"d{i}" for i in range(10)),
    category_ids=tuple(range(1, 11)), attributes=(AttributeSpec("stroke", ("thin", "thick")), AttributeSpec("slant", ("left", "none", "right"))),
)
"""Grey 8x8 digits conditioned on two attributes (so that they mix with the grey real items)."""


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("suite")
    registry = ModelRegistry(LocalObjectStore(data / "objects"))
    registry.register_version("digits", export(DIGITS), DIGITS, model_kind="gan")
    registry.register_version("digits", export(DIGITS, weights_seed=1), DIGITS, model_kind="gan")
    registry.register_version("strokes", export(STROKES), STROKES, model_kind="gan")
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
    return [int(i) for batch in batches for i in batch[-1]["index"]]  # the lineage is last


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
    assert lineage == {
        "source": "synthetic", "item": "", "version": 0, "generator": "models/digits/versions/2", "seed": 5, "index": 3,
        "label": alone[3][1], "attributes": [], "truncation": 0.0, "augmentation_seed": -1,
    }


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


def test_samples_carry_the_attributes_the_stream_drew_for_them(suite: dict[str, str]) -> None:
    thick = {"stroke": {"thick": 1.0}}

    def dataset(**options: object) -> SyntheticDataset:
        return SyntheticDataset(suite["sampling"], "strokes", seed=4, attribute_mix=thick, class_mix={2: 1.0, 5: 1.0}, as_uint8=True, **options)

    data = dataset(num_samples=64, with_attributes=True, with_lineage=True)
    assert data.attribute_names == ["stroke", "slant"] and data.attribute_count == 2
    batches = _read(ResumableLoader(data, batch_size=16, num_workers=2))
    assert [len(batch) for batch in batches] == [4] * 4  # image, label, attributes, lineage
    attributes = torch.cat([batch[2] for batch in batches])
    assert attributes.shape == (64, 2) and attributes.dtype == torch.int64
    assert set(attributes[:, 0].tolist()) == {1} and set(attributes[:, 1].tolist()) == {0, 1, 2}  # thick; every slant drawn
    assert _indices(batches) == list(range(64))
    with SamplingClient(suite["sampling"]) as client:  # the service's own answer for the same samples
        direct = client.sample("strokes", 64, seed=4, attribute_mix=thick, class_mix={2: 1.0, 5: 1.0}, format="uint8")
    assert attributes.tolist() == direct.attributes.tolist()
    assert [int(label) for batch in batches for label in batch[1]] == direct.labels.tolist()
    assert torch.equal(_images(batches), torch.from_numpy(direct.samples.copy()))

    assert [len(sample) for sample in dataset(num_samples=2)] == [2, 2]  # the default shape: (image, label)
    assert [len(sample) for sample in dataset(num_samples=2, with_attributes=True)] == [3, 3]
    state = json.loads(json.dumps({**data.state_dict(), "position": 10}))  # class and attribute mix survive JSON
    resumed = dataset(num_samples=64, with_attributes=True)
    resumed.load_state_dict(state)
    assert torch.equal(torch.stack([a for _, _, a in resumed]), attributes[10:])
    with pytest.raises(ValueError, match="another stream"):
        SyntheticDataset(suite["sampling"], "strokes", seed=4, attribute_mix={"stroke": {"thin": 1.0}}, class_mix={2: 1.0, 5: 1.0}).load_state_dict(state)


def test_real_samples_mixed_with_attributed_ones_carry_minus_one(suite: dict[str, str]) -> None:
    real = RealDataset(suite["annotation"], "biased@1", cycle=True, with_lineage=True)
    synthetic = SyntheticDataset(suite["sampling"], "strokes", seed=2)
    mixed = mix(real, synthetic, ratio=0.5, num_samples=40, with_attributes=True)
    assert mixed.attribute_count == 2
    batches = _read(ResumableLoader(mixed, batch_size=20))
    attributes = torch.cat([batch[2] for batch in batches])
    sources = [s for batch in batches for s in batch[3]["source"]]
    assert sources.count("synthetic") == 20
    for values, source in zip(attributes.tolist(), sources):
        assert (values == [-1, -1]) == (source == "real") and min(values) >= (-1 if source == "real" else 0)
    in_lineage = torch.cat([torch.stack(batch[3]["attributes"], dim=1) for batch in batches])  # collated per attribute
    assert torch.equal(in_lineage, attributes)  # the lineage holds the same values, -1 for the real samples
    labels = [int(v) for batch in batches for v in batch[3]["label"]]
    assert all((label == -1) == (source == "real") for label, source in zip(labels, sources))


def test_a_samples_lineage_draws_it_again_bit_for_bit(suite: dict[str, str]) -> None:
    """From its lineage alone (explicit label, each attribute fixed, truncation), the service draws
    every sample again: nothing the stream's class mix, attribute mix or label map did is missing."""
    data = SyntheticDataset(
        suite["sampling"], "strokes", seed=11, start_index=40, num_samples=24, class_mix={1: 1.0, 6: 2.0},
        attribute_mix={"slant": {"left": 1.0, "right": 3.0}}, truncation=0.6, label_map={1: 101, 6: 106},
        with_lineage=True, as_uint8=True,
    )
    samples = list(data)
    names = {a.name: list(a.values) for a in data.info.attributes}
    assert len(samples) == 24 and all(lineage["truncation"] == pytest.approx(0.6) for _, _, lineage in samples)
    assert {lineage["label"] for _, _, lineage in samples} == {1, 6} and {label for _, label, _ in samples} == {101, 106}
    assert {lineage["attributes"][1] for _, _, lineage in samples} == {0, 2}  # left, right: drawn, not fixed
    with SamplingClient(suite["sampling"]) as client:
        for image, _, lineage in samples:
            assert lineage["generator"] == "models/strokes/versions/1" and lineage["seed"] == 11
            fixed = {name: {names[name][v]: 1.0} for name, v in zip(data.attribute_names, lineage["attributes"])}
            again = client.sample(
                lineage["generator"], 1, seed=lineage["seed"], start_index=lineage["index"], labels=[lineage["label"]],
                attribute_mix=fixed, truncation=lineage["truncation"] or None, format="uint8",
            )
            assert again.samples[0].tobytes() == image.numpy().tobytes()
            assert again.attributes[0].tolist() == lineage["attributes"] and again.labels.tolist() == [lineage["label"]]


def test_a_sample_stored_in_the_annotation_store_is_drawn_again_from_its_stored_lineage(suite: dict[str, str]) -> None:
    """SampleBatch.lineage(i) as the item's lineage: read back from a committed version, it draws the
    same PNG again (labels, attribute values and truncation come from the store, nothing else)."""
    with SamplingClient(suite["sampling"]) as sampler, AnnotationClient(suite["annotation"]) as store:
        info = sampler.get_generator("strokes")
        drawn = sampler.sample("strokes", 6, seed=6, start_index=20, class_mix={4: 1.0, 8: 1.0}, attribute_mix={"slant": {"left": 1.0, "right": 1.0}}, truncation=0.8, format="png")
        store.create_dataset("drawn", categories=[pb.Category(category_id=c, display_name=n) for c, n in zip(info.category_ids, info.class_names)])
        store.upload_items("drawn", [
            pb.Item(image=pb.Image(data=drawn.images[i]), lineage=drawn.lineage(i), annotations=[pb.Annotation(category_id=info.category_ids[int(drawn.labels[i])], class_label=pb.ClassLabel())])
            for i in range(len(drawn))
        ])
        version = store.commit("drawn").version.name
        stored = [s.item for s in store.stream_items(version)]
        assert len(stored) == 6
        for item in stored:
            source = item.lineage.synthetic
            fixed = {a.name: {a.values[v]: 1.0} for a, v in zip(info.attributes, source.attributes)}
            again = sampler.sample(
                f"{source.generator}/versions/{source.generator_version}", 1, seed=source.seed, start_index=source.sample_index,
                labels=[source.label], attribute_mix=fixed, truncation=source.truncation if source.HasField("truncation") else None, format="png",
            )
            assert again.images[0] == item.image.data
        assert sorted(s.lineage.synthetic.sample_index for s in stored) == list(range(20, 26))
