"""Augmented(...) on a real running augmentation service and annotation-store (`simulacra serve` processes)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from simulacra_client import AnnotationClient, Pipeline
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.torch_data import Augmented, RealDataset, ResumableLoader
from tests.annotation.conftest import png
from tests.client.suite import running_services

pytestmark = pytest.mark.timeout(600)

SHIFTS = Pipeline().add("affine", translate_x=(-0.25, 0.25), translate_y=(-0.25, 0.25), rotate_degrees=(-20, 20))


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with running_services(tmp_path_factory.mktemp("suite"), ["annotation", "augmentation"]) as addresses:
        with AnnotationClient(addresses["annotation"]) as client:
            client.create_dataset("shapes", categories=[pb.Category(category_id=1, display_name="a"), pb.Category(category_id=2, display_name="b")])
            items = [
                pb.Item(image=pb.Image(data=png(12, 12, mode="L", seed=i)), annotations=[pb.Annotation(category_id=1 + i % 2, class_label=pb.ClassLabel())])
                for i in range(24)
            ]
            client.upload_items("shapes", items)
            client.commit("shapes")
        yield addresses


def _augmented(suite: dict[str, str], seed: int = 4, **options: object) -> Augmented:
    source = RealDataset(suite["annotation"], "shapes@1", cycle=True, as_uint8=True, with_lineage=True)
    return Augmented(source, suite["augmentation"], SHIFTS, seed=seed, **options)


def _read(loader: ResumableLoader, batches: int) -> list[tuple]:
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == batches:
            return out
    return out


def test_each_sample_gets_its_own_seeded_augmentation_whatever_the_workers(suite: dict[str, str]) -> None:
    two = _read(ResumableLoader(_augmented(suite), batch_size=8, num_workers=2), batches=6)  # two passes over 24 items
    one = _read(ResumableLoader(_augmented(suite), batch_size=12), batches=4)
    images = torch.cat([b[0] for b in two])
    assert torch.equal(images, torch.cat([b[0] for b in one]))
    source = list(RealDataset(suite["annotation"], "shapes@1", as_uint8=True, with_lineage=True))
    originals = torch.cat([image[None] for image, _, _ in source])
    assert [int(v) for b in two for v in b[1]] == [label for _, label, _ in source] * 2  # labels kept, in the source's order
    assert [name for b in two for name in b[2]["item"]] == [lineage["item"] for _, _, lineage in source] * 2
    assert images.shape == (48, 1, 12, 12)
    changed = [not torch.equal(images[i], originals[i % 24]) for i in range(48)]
    assert sum(changed) >= 40  # the pipeline moved (almost) every image
    assert not torch.equal(images[:24], images[24:])  # the second pass is augmented afresh
    sources = {s for b in two for s in b[2]["source"]}
    assert sources == {"augmented-real"}
    assert {int(v) for b in two for v in b[2]["augmentation_seed"]} == {4} and {int(v) for b in two for v in b[2]["seed"]} == {0}  # the source's seed kept
    other_seed = torch.cat([b[0] for b in _read(ResumableLoader(_augmented(suite, seed=5), batch_size=8), batches=3)])
    assert not torch.equal(other_seed, images[:24])


def test_resume_continues_the_augmented_sequence_exactly(suite: dict[str, str]) -> None:
    full = torch.cat([b[0] for b in _read(ResumableLoader(_augmented(suite), batch_size=8, num_workers=2), batches=5)])
    first = ResumableLoader(_augmented(suite), batch_size=8, num_workers=2)
    head = _read(first, batches=2)
    state = json.loads(json.dumps(first.state_dict()))
    again = ResumableLoader(_augmented(suite), batch_size=8, num_workers=2)
    again.load_state_dict(state)
    tail = _read(again, batches=3)
    assert torch.equal(torch.cat([b[0] for b in head + tail]), full)
    with pytest.raises(ValueError, match="another stream"):
        _augmented(suite, seed=9).load_state_dict(state)


def test_in_process_augmentation_gives_the_streams_bytes(suite: dict[str, str]) -> None:
    pipeline = Pipeline().add("affine", translate_x=(-0.2, 0.2), rotate_degrees=(-20, 20)).add("brightness_contrast", probability=0.7).add("cutout", probability=0.5)
    for seed in (4, 11):
        streamed = _read(ResumableLoader(Augmented(_source(suite), suite["augmentation"], pipeline, seed=seed), batch_size=8), batches=4)
        local = _read(ResumableLoader(Augmented(_source(suite), None, pipeline, seed=seed, in_process=True), batch_size=8, num_workers=2), batches=4)
        assert torch.equal(torch.cat([b[0] for b in local]), torch.cat([b[0] for b in streamed]))  # 32 samples: a pass and then some
        assert [b[2]["item"] for b in local] == [b[2]["item"] for b in streamed]  # the same items, in order
        assert {s for b in local for s in b[2]["source"]} == {"augmented-real"}
    # The same sequence: a checkpoint of one mode resumes in the other.
    streaming = Augmented(_source(suite), suite["augmentation"], pipeline, seed=4)
    streaming.advance(5)
    local = Augmented(_source(suite), None, pipeline, seed=4, in_process=True)
    local.load_state_dict(json.loads(json.dumps(streaming.state_dict())))
    assert torch.equal(next(iter(local))[0], streamed_at(suite, pipeline, 5))
    with pytest.raises(ValueError, match="not the stored"):
        Augmented(_source(suite), None, "pipelines/digits", in_process=True)
    with pytest.raises(ValueError, match="in_process=True"):
        Augmented(_source(suite), None, pipeline)


def _source(suite: dict[str, str]) -> RealDataset:
    return RealDataset(suite["annotation"], "shapes@1", cycle=True, as_uint8=True, with_lineage=True)


def streamed_at(suite: dict[str, str], pipeline: Pipeline, position: int) -> torch.Tensor:
    data = Augmented(_source(suite), suite["augmentation"], pipeline, seed=4)
    return [image for image, _, _ in itertools.islice(data, position + 1)][position]


def test_in_process_mode_without_the_engine_says_what_to_install() -> None:
    script = (
        "import sys; sys.modules['simulacra_services'] = None  # as where only simulacra-client is installed\n"
        "from simulacra_client import Pipeline\n"
        "from simulacra_client.torch_data import Augmented, RealDataset\n"
        "source = RealDataset('127.0.0.1:1', 'shapes@1')\n"
        "try:\n"
        "    Augmented(source, None, Pipeline().add('horizontal_flip'), in_process=True)\n"
        "except ImportError as error:\n"
        "    print('ImportError:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "needs the full simulacra package" in result.stdout and "give its address instead" in result.stdout
