"""A real annotation-store holding tiny digit datasets, for the worker and service tests.

The store runs on loopback (``tests.harness.running_service``) over local files + SQLite; datasets
are imported through the SDK (MNIST import: IDX files), so training reads them exactly as in
production, through StreamItems.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import pytest

from simulacra_client.annotation import AnnotationClient
from tests.harness import local_settings, running_service


def digit_images(count: int, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 'digits': class k is a bright bar at row 4 + 8k, jittered, over faint noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
    for i, label in enumerate(labels):
        top = 4 + 8 * label + int(rng.integers(-1, 2))
        images[i, top : top + 4, 5 + int(rng.integers(0, 4)) : 22] = 255
    return images, labels


@dataclass
class Store:
    address: str
    settings: object

    def import_digits(self, name: str, count: int = 36, classes: int = 3) -> str:
        images, labels = digit_images(count, classes)
        with AnnotationClient(self.address) as client:
            client.create_dataset(name)
            client.import_mnist(name, images, labels, split="train")
            version = client.commit(name).version
        return version.name

    def import_scenes(self, name: str) -> str:
        from simulacra_client.api.annotation.v1 import annotation_pb2 as pb

        with AnnotationClient(self.address) as client:
            client.create_dataset(name, categories=[pb.Category(category_id=1, display_name="car"),
                                                    pb.Category(category_id=2, display_name="tree")])
            client.upload_items(name, scene_items())
            return client.commit(name).version.name


def scene_items(count: int = 16):
    """48x48 RGB scenes, each with a red 'car' box and a green 'tree' box, and weather/time attributes."""
    import io

    from PIL import Image

    from simulacra_client.api.annotation.v1 import annotation_pb2 as pb

    rng = np.random.default_rng(1)
    for i in range(count):
        pixels = rng.integers(0, 60, (48, 48, 3)).astype(np.uint8)
        cx, cy = int(rng.integers(2, 14)), int(rng.integers(2, 30))
        pixels[cy : cy + 14, cx : cx + 14] = (220, 30, 30)
        tx, ty = int(rng.integers(26, 36)), int(rng.integers(2, 20))
        pixels[ty : ty + 24, tx : tx + 10] = (30, 200, 40)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        yield pb.Item(
            image=pb.Image(data=buffer.getvalue()),
            attributes={"weather": ("clear", "fog")[i % 2], "time": ("day", "night")[(i // 2) % 2]},
            annotations=[
                pb.Annotation(category_id=1, box=pb.Box(x=cx, y=cy, w=14, h=14)),
                pb.Annotation(category_id=2, box=pb.Box(x=tx, y=ty, w=10, h=24)),
            ],
        )


@pytest.fixture
async def annotation_store(tmp_path):
    from simulacra_services.annotation.service import DEFINITION as ANNOTATION  # only the tests that need it import it

    settings = local_settings(tmp_path / "annotation")
    async with running_service(ANNOTATION, settings) as service:
        yield Store(service.address, settings)


@pytest.fixture
async def digits(annotation_store):
    """(store, "datasets/digits/versions/N") with 36 digits of 3 classes."""
    return annotation_store, await asyncio.to_thread(annotation_store.import_digits, "digits")


@dataclass
class Training:
    """A running training service (and the annotation-store it reads from)."""

    service: object
    store: Store
    settings: object

    @property
    def channel(self):
        return self.service.channel

    @property
    def address(self) -> str:
        return self.service.address


def training_settings(store: Store, data_dir):
    return local_settings(data_dir, annotation_address=store.address)


@pytest.fixture
async def training(annotation_store, tmp_path):
    from simulacra_services.training.service import DEFINITION

    settings = training_settings(annotation_store, tmp_path / "training")
    async with running_service(DEFINITION, settings, worker_threads=1, lease_seconds=3.0) as service:
        yield Training(service, annotation_store, settings)
