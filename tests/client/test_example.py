"""examples/train_with_synthetic.py as a user runs it: a script process against a running suite
(`simulacra serve` processes for the annotation-store, augmentation and sampling), with a small
28x28 digit generator exported from torch into the registry. It trains, checkpoints, resumes from
its checkpoint and scores the test split; with --balance it mixes in the classes the set lacks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulacra_client import AnnotationClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_services.core.registry import GeneratorSignature, ModelRegistry
from simulacra_services.core.storage.local import LocalObjectStore
from tests.client.suite import running_services
from tests.harness import png
from tests.sampling.generators import export

pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
DIGITS28 = GeneratorSignature(
    latent_dim=16, channels=1, height=28, width=28, num_classes=10, class_names=tuple(str(d) for d in range(10)), category_ids=tuple(range(1, 11)),
)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    data = tmp_path_factory.mktemp("suite")
    ModelRegistry(LocalObjectStore(data / "objects")).register_version("digits", export(DIGITS28), DIGITS28, model_kind="gan")
    with running_services(data, ["annotation", "augmentation", "sampling"]) as addresses:
        with AnnotationClient(addresses["annotation"]) as client:
            client.create_dataset("digits", categories=[pb.Category(category_id=d + 1, display_name=str(d)) for d in range(10)])
            items = [
                pb.Item(image=pb.Image(data=png(28, 28, mode="L", seed=100 * digit + k)), split=split, annotations=[pb.Annotation(category_id=digit + 1, class_label=pb.ClassLabel())])
                for digit in range(10)
                for split, count in (("train", 1 if digit == 3 else 4), ("test", 2))
                for k in range(count)
            ]
            client.upload_items("digits", items)
            client.commit("digits")
        yield addresses


def example(suite: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIMULACRA_")}
    env.update({f"SIMULACRA_{name.upper()}_ADDRESS": address for name, address in suite.items()})
    command = [sys.executable, str(ROOT / "examples" / "train_with_synthetic.py"), "--dataset", "digits@1", "--test", "digits@1", "--generator", "models/digits/versions/1", *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_example_trains_checkpoints_and_resumes(suite: dict[str, str], tmp_path: Path) -> None:
    checkpoint = tmp_path / "classifier.pt"
    first = example(suite, "--steps", "50", "--checkpoint", str(checkpoint))
    assert "step 50: loss" in first.stdout and "test accuracy after 50 steps:" in first.stdout
    assert checkpoint.exists()
    again = example(suite, "--steps", "60", "--checkpoint", str(checkpoint))
    # 50 batches of 32 consumed, half of them synthetic (the default share 0.5).
    assert "resumed at step 50, data position 1600 ({'augmented': 800, 'synthetic': 800})" in again.stdout
    assert "test accuracy after 60 steps:" in again.stdout


def test_the_example_balances_the_classes_the_set_lacks(suite: dict[str, str], tmp_path: Path) -> None:
    balanced = example(suite, "--balance", "--steps", "5", "--checkpoint", str(tmp_path / "balanced.pt"))
    assert "test accuracy after 5 steps:" in balanced.stdout
