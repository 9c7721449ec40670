"""The asyncio AnnotationClient against a real annotation-store on loopback: the same calls
as the blocking client, awaited, with async iterators, typed errors and jobs run to their end."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image
from simulacra_client.annotation import JobFailedError, ProgressEvent
from simulacra_client.annotation_async import AsyncAnnotationClient
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
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


def png(seed: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_datasets_items_versions_and_streams(server: ServiceServer) -> None:
    async with AsyncAnnotationClient(server.address, token="secret") as client:
        await client.create_dataset("cars", display_name="Cars", categories=[pb.Category(category_id=1, display_name="car")])
        assert (await client.get_dataset("cars")).display_name == "Cars"
        assert [d.name async for d in client.list_datasets()] == ["datasets/cars"]
        events: list[ProgressEvent] = []
        items = [(f"i{n}", pb.Item(image=pb.Image(data=png(n)), split="train" if n % 2 else "val")) for n in range(7)]
        names = await client.upload_items("cars", items, batch_size=2, max_in_flight=1, progress=events.append)
        assert names == [f"datasets/cars/items/i{n}" for n in range(7)] and events[-1].done == 7
        commit = await client.commit("cars", description="first")
        assert commit.created and commit.version.version == 1
        assert (await client.get_version("cars@latest")).item_count == 7
        listed = [i.name async for i in client.list_items("cars@1", filter='split = "train"', page_size=2)]
        assert listed == [f"datasets/cars/items/i{n}" for n in (1, 3, 5)]  # items keep their working-state name
        streamed = [s async for s in client.stream_items("cars@1", max_items_per_response=3)]
        assert [s.item.name.rsplit("/", 1)[1] for s in streamed] == [f"i{n}" for n in range(7)]
        assert streamed[0].item.image.data == png(0)  # FULL view: the bytes come along
        # Resuming from any item's cursor continues right after it.
        rest = [s.item.name async for s in client.stream_items("cars@1", start_cursor=streamed[3].cursor, max_items_per_response=3)]
        assert rest == [s.item.name for s in streamed[4:]]
        assert (await client.statistics("cars@1")).item_count == 7
        with pytest.raises(NotFoundError) as missing:
            await client.get_dataset("nobody")
        assert missing.value.reason == "DATASET_NOT_FOUND"
        # A rejected batch raises its typed error; the batches acknowledged before it stay.
        bad = [("ok", pb.Item(image=pb.Image(data=png(20)))), ("bad", pb.Item(image=pb.Image(data=b"not an image")))]
        with pytest.raises(InvalidArgumentError) as rejected:
            await client.upload_items("cars", bad, batch_size=1, max_in_flight=1)
        assert rejected.value.reason == "INVALID_IMAGE"
        assert [i.name async for i in client.list_items("cars", filter='split = "train"')][-1] == "datasets/cars/items/ok"
        with pytest.raises(InvalidArgumentError) as bad_filter:
            [i async for i in client.list_items("cars", filter="width > 1" + "0" * 30)]
        assert bad_filter.value.reason == "INVALID_FILTER"


async def test_blobs_and_an_mnist_import_run_to_their_end(server: ServiceServer) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 10)
    async with AsyncAnnotationClient(server.address, token="secret") as client:
        (digest,) = await client.upload_blobs([b"hello blob"])
        assert await client.read_blob(digest) == b"hello blob" and await client.find_missing_blobs([digest]) == []
        await client.create_dataset("digits")
        job = await client.import_mnist("digits", images, labels, limit=20)
        assert job.result.items_created == 20 and job.result.categories_created == 4
        assert [j.name async for j in client.list_import_jobs("digits")] == [job.name]
        assert (await client.get_import_job(job.name)).state == job.state
        # A job that fails raises JobFailedError with the job's reason.
        bad = pb.ImportJob(mnist=pb.MnistImportSource(images=pb.ManifestFile(path="x", sha256=digest), labels=pb.ManifestFile(path="y", sha256=digest)))
        with pytest.raises((JobFailedError, InvalidArgumentError)) as failed:
            created = await client.create_import_job("digits", bad)
            await client.wait_import_job(created.name)
        assert failed.value.reason == "INVALID_IDX"


async def test_without_the_token_the_error_is_typed(server: ServiceServer) -> None:
    async with AsyncAnnotationClient(server.address) as anonymous:
        with pytest.raises(UnauthenticatedError) as refused:
            await anonymous.get_dataset("cars")
    assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.UNAUTHENTICATED, "MISSING_TOKEN")
