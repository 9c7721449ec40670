"""The SDK's friendly annotation client against a real annotation-store on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from simulacra_client.annotation import (
    AnnotationClient,
    ProgressEvent,
    check_relative_path,
    dataset_name,
    read_name,
    version_name,
)
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.errors import InvalidArgumentError, NotFoundError, UnauthenticatedError

from simulacra_services.annotation.service import DEFINITION
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceServer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServiceServer]:
    running = ServiceServer(
        DEFINITION, Settings(data_dir=str(tmp_path / "data"), log_level="WARNING", auth_token="secret"), port=0, metrics_port=METRICS_OFF
    )
    await running.start()
    yield running
    await running.stop(0.5)


@pytest.fixture
def client(server: ServiceServer) -> AnnotationClient:
    with AnnotationClient(server.address, token="secret") as connected:
        yield connected


def png(seed: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def item(seed: int, **fields: object) -> pb.Item:
    return pb.Item(image=pb.Image(data=png(seed)), **fields)


# ---- without a server --------------------------------------------------------------------


def test_names_of_datasets_and_versions() -> None:
    assert dataset_name("cars") == dataset_name("datasets/cars") == "datasets/cars"
    assert version_name("cars@3") == "datasets/cars/versions/3"
    assert version_name("cars") == "datasets/cars/versions/latest"
    assert version_name("datasets/cars/versions/latest") == "datasets/cars/versions/latest"
    assert read_name("cars") == "datasets/cars" and read_name("cars@latest") == "datasets/cars/versions/latest"
    for bad in ("Cars", "cars@0", "cars@x", "cars/../x", "", "1cars"):
        with pytest.raises(ValueError):
            version_name(bad)


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a//b", "a\\b", "./a", "a\nb", ""])
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        check_relative_path(path)
    assert check_relative_path("images/a/1.png") == "images/a/1.png"


def test_the_sdk_needs_neither_the_services_nor_pillow_nor_sqlalchemy() -> None:
    code = (
        "import sys, simulacra_client.annotation\n"
        "heavy = [m for m in ('simulacra_services', 'PIL', 'sqlalchemy', 'torch', 'yaml') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---- datasets, items, versions -----------------------------------------------------------------


async def test_datasets_are_created_listed_across_pages_and_committed(client: AnnotationClient) -> None:
    for name in ("a-set", "b-set", "c-set"):
        await asyncio.to_thread(client.create_dataset, name, display_name=name.upper())
    listed = await asyncio.to_thread(lambda: [d.name for d in client.list_datasets(page_size=1)])
    assert listed == ["datasets/a-set", "datasets/b-set", "datasets/c-set"]
    await asyncio.to_thread(client.upload_items, "a-set", [item(1)])
    first = await asyncio.to_thread(client.commit, "a-set")
    again = await asyncio.to_thread(client.commit, "a-set")
    assert (first.created, first.version.version) == (True, 1)
    assert (again.created, again.version.version) == (False, 1)
    assert (await asyncio.to_thread(client.get_version, "a-set@latest")).item_count == 1
    with pytest.raises(NotFoundError) as missing:
        await asyncio.to_thread(client.get_dataset, "nobody")
    assert missing.value.reason == "DATASET_NOT_FOUND"


async def test_upload_items_in_bounded_batches_and_a_rejected_batch_keeps_the_earlier_ones(client: AnnotationClient) -> None:
    await asyncio.to_thread(client.create_dataset, "items", categories=[pb.Category(category_id=1, display_name="thing")])
    events: list[ProgressEvent] = []
    items = [(f"item-{i:03d}", item(i, split="val" if i % 2 else "train")) for i in range(70)]
    names = await asyncio.to_thread(client.upload_items, "items", items, batch_size=16, max_in_flight=2, progress=events.append)
    assert names == [f"datasets/items/items/item-{i:03d}" for i in range(70)]
    assert [e.done for e in events] == [16, 32, 48, 64, 70]
    bad = [item(100 + i) for i in range(20)]
    bad[17] = pb.Item(image=pb.Image(data=png(200)), annotations=[pb.Annotation(category_id=9, class_label=pb.ClassLabel())])
    with pytest.raises(InvalidArgumentError) as caught:
        await asyncio.to_thread(client.upload_items, "items", bad, batch_size=8)
    assert caught.value.reason == "UNKNOWN_CATEGORY"
    count = await asyncio.to_thread(lambda: sum(1 for _ in client.list_items("items", page_size=50)))
    assert count == 70 + 16  # the two batches before the bad one were acknowledged and stay


async def test_a_staged_upload_brings_its_categories_into_the_committed_version_only(client: AnnotationClient) -> None:
    await asyncio.to_thread(client.create_dataset, "staged", categories=[pb.Category(category_id=1, display_name="thing")])
    deer = pb.Category(category_id=2, display_name="deer")
    label = pb.Annotation(category_id=2, class_label=pb.ClassLabel())
    events: list[ProgressEvent] = []
    names = await asyncio.to_thread(
        client.upload_items, "staged", [item(i, annotations=[label]) for i in range(3)],
        batch_size=2, staging_id="job-1", categories=[deer], progress=events.append,
    )
    assert len(names) == 3 and [e.done for e in events] == [2, 3]
    committed = await asyncio.to_thread(client.commit_staged, "staged", "job-1")
    assert (committed.version.item_count, committed.version.annotation_count) == (3, 3)

    def category_names(parent: str) -> list[str]:
        return [c.display_name for c in client.stub.ListCategories(rpc.ListCategoriesRequest(parent=parent)).categories]

    assert await asyncio.to_thread(category_names, committed.version.name) == ["thing", "deer"]
    assert await asyncio.to_thread(category_names, "datasets/staged") == ["thing"]
    with pytest.raises(ValueError, match="staging_id"):
        await asyncio.to_thread(client.upload_items, "staged", [item(9)], categories=[deer])


async def test_stream_items_resumes_from_a_cursor_exactly(client: AnnotationClient) -> None:
    await asyncio.to_thread(client.create_dataset, "stream")
    await asyncio.to_thread(client.upload_items, "stream", [(f"s{i:02d}", item(i)) for i in range(10)])
    await asyncio.to_thread(client.commit, "stream")
    everything = await asyncio.to_thread(lambda: list(client.stream_items("stream@1")))
    assert [r.item.name.rsplit("/", 1)[1] for r in everything] == [f"s{i:02d}" for i in range(10)]
    assert everything[0].item.image.data == png(0)
    rest = await asyncio.to_thread(lambda: list(client.stream_items("stream@1", start_cursor=everything[3].cursor)))
    assert [r.item.name for r in rest] == [r.item.name for r in everything[4:]]


# ---- blobs -------------------------------------------------------------------------------------


async def test_upload_blobs_sends_only_what_the_server_lacks(client: AnnotationClient, tmp_path: Path) -> None:
    file = tmp_path / "big.bin"
    file.write_bytes(np.random.default_rng(0).bytes(3 * 1024 * 1024 + 17))  # several 1 MiB chunks
    events: list[ProgressEvent] = []
    digests = await asyncio.to_thread(client.upload_blobs, [file, b"small", b"small"], progress=events.append)
    assert digests == [hashlib.sha256(file.read_bytes()).hexdigest(), hashlib.sha256(b"small").hexdigest()] + [hashlib.sha256(b"small").hexdigest()]
    sent = [e for e in events if e.stage == "uploading"]
    assert sent[0].total == file.stat().st_size + 5 and sent[-1].done == sent[0].total
    events.clear()
    again = await asyncio.to_thread(client.upload_blobs, [file, b"small"], progress=events.append)
    assert again == digests[:2]
    assert [(e.done, e.total) for e in events if e.stage == "uploading"] == [(0, 0)]  # nothing travelled twice
    assert b"".join(await asyncio.to_thread(lambda: list(client.read_blob(digests[1])))) == b"small"


async def test_download_blob_verifies_and_download_files_refuses_escaping_paths(client: AnnotationClient, tmp_path: Path) -> None:
    (digest,) = await asyncio.to_thread(client.upload_blobs, [b"content"])
    target = tmp_path / "out" / "a" / "file.txt"
    assert await asyncio.to_thread(client.download_blob, digest, target) == 7
    assert target.read_bytes() == b"content"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]  # no temporary file left
    for path in ("../evil.txt", "/tmp/evil.txt"):
        with pytest.raises(ValueError):
            await asyncio.to_thread(client.download_files, [pb.ManifestFile(path=path, sha256=digest, size_bytes=7)], tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(NotFoundError):
        await asyncio.to_thread(client.download_blob, "0" * 64, tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


# ---- jobs from local files -----------------------------------------------------------------------


async def test_import_coco_checks_local_files_before_uploading_anything(client: AnnotationClient, tmp_path: Path) -> None:
    await asyncio.to_thread(client.create_dataset, "local")
    document = {"images": [{"id": 1, "file_name": "missing.png", "width": 8, "height": 8}], "annotations": [], "categories": []}
    (tmp_path / "a.json").write_text(json.dumps(document))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        await asyncio.to_thread(client.import_coco, "local", tmp_path / "a.json", tmp_path)
    document["images"][0]["file_name"] = "../../etc/passwd"
    (tmp_path / "a.json").write_text(json.dumps(document))
    with pytest.raises(ValueError, match="safe relative path"):
        await asyncio.to_thread(client.import_coco, "local", tmp_path / "a.json", tmp_path)
    assert await asyncio.to_thread(lambda: list(client.list_import_jobs("local"))) == []


async def test_import_mnist_checks_its_arrays(client: AnnotationClient) -> None:
    with pytest.raises(ValueError, match="uint8"):
        await asyncio.to_thread(client.import_mnist, "x", np.zeros((2, 28, 28), np.float32), [0, 1])
    with pytest.raises(ValueError, match="labels"):
        await asyncio.to_thread(client.import_mnist, "x", np.zeros((2, 28, 28), np.uint8), [0, 1, 2])


async def test_a_client_without_the_token_is_refused(server: ServiceServer) -> None:
    with AnnotationClient(server.address) as anonymous:
        with pytest.raises(UnauthenticatedError) as caught:
            await asyncio.to_thread(lambda: list(anonymous.list_datasets()))
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN")
