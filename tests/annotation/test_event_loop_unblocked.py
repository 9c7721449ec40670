"""No RPC of the annotation-store blocks its event loop: heavy work runs in threads.

The service runs in this test's event loop (``running_service``, loopback),
beside a probe task that sleeps 5 ms at a time and records the CPU time the
loop's thread spent between two of its wake-ups. Work done on the loop by a
handler (hashing a 64 MiB upload, serializing a 50 MB batch, copying images
into messages) shows there in full; the threads the handlers hand their work
to do not, and neither does a shared machine's noise (the thread waiting for
a CPU or for the interpreter lock spends no CPU time). An RPC fails the test
when one gap exceeds 50 ms.

The client is a synchronous stub called in a worker thread, so that building
and parsing its large messages happens off the loop as well.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
from PIL import Image

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_client.channel import open_channel
from simulacra_services.annotation.persistence.blobs import READ_CHUNK_BYTES
from simulacra_services.annotation.service import DEFINITION
from tests.harness import png, running_service

T = TypeVar("T")

BLOCK_LIMIT_SECONDS = 0.050
PROBE_SECONDS = 0.005
BLOB_BYTES = 64 * 1024 * 1024


class LoopProbe:
    """The most CPU time the loop's thread spent between two wake-ups of a task sleeping 5 ms."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._woke = asyncio.Event()

    async def _run(self) -> None:
        while True:
            before = time.thread_time()
            await asyncio.sleep(PROBE_SECONDS)
            self.worst = max(self.worst, time.thread_time() - before)
            self._woke.set()

    async def measure(self, call: Callable[[], T]) -> tuple[T | BaseException, float]:
        """Run the blocking client ``call`` in a thread; its result (or error) and the worst gap meanwhile."""
        self.worst = 0.0
        task = asyncio.get_running_loop().create_task(self._run())
        try:
            await asyncio.sleep(PROBE_SECONDS * 2)  # the probe is running
            result: T | BaseException
            try:
                result = await asyncio.to_thread(call)
            except Exception as error:  # noqa: BLE001 - the caller re-raises it after the check
                result = error
            # The gap in which the call ended is recorded at the probe's next wake-up.
            self._woke.clear()
            await self._woke.wait()
        finally:
            task.cancel()
        return result, self.worst


def _noise_png(width: int, height: int, seed: int) -> bytes:
    """Incompressible pixels stored uncompressed: a large PNG that is quick to make and to decode."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    """About 24 MB (2900 x 2900 RGB): two of them make a 48 MB UploadItems message."""
    return _noise_png(2900, 2900, seed=1)


@pytest.fixture(scope="module")
def big_blob() -> bytes:
    return os.urandom(BLOB_BYTES)


class Service:
    def __init__(self, stub: api_grpc.AnnotationServiceStub, probe: LoopProbe) -> None:
        self.stub = stub
        self.probe = probe

    async def check(self, what: str, call: Callable[[], T]) -> T:
        result, worst = await self.probe.measure(call)
        assert worst <= BLOCK_LIMIT_SECONDS, f"{what} blocked the event loop for {worst * 1000:.0f} ms of CPU (limit {BLOCK_LIMIT_SECONDS * 1000:.0f} ms)"
        if isinstance(result, BaseException):
            raise result
        return result


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(DEFINITION, "local", data_dir=tmp_path / "data") as running:
        channel = open_channel(running.address)
        try:
            yield Service(api_grpc.AnnotationServiceStub(channel), LoopProbe())
        finally:
            await asyncio.to_thread(channel.close)


async def _dataset_with_big_items(service: Service, big_png: bytes, dataset_id: str = "big") -> None:
    """Two items sharing one 24 MB image, in one 48 MB UploadItems message, and version 1."""
    await asyncio.to_thread(service.stub.CreateDataset, api.CreateDatasetRequest(dataset_id=dataset_id))
    request = api.UploadItemsRequest(
        parent=f"datasets/{dataset_id}",
        request_id="big-batch",
        items=[api.UploadItemsRequest.ItemUpload(item_id=f"big-{i}", item=pb.Item(image=pb.Image(data=big_png))) for i in range(2)],
    )
    assert request.ByteSize() > 40_000_000
    acks = await service.check("UploadItems of a 48 MB batch", lambda: list(service.stub.UploadItems(iter([request]))))
    assert [list(a.item_names) for a in acks] == [["datasets/big/items/big-0", "datasets/big/items/big-1"]]
    await asyncio.to_thread(service.stub.CommitVersion, api.CommitVersionRequest(parent=f"datasets/{dataset_id}"))


async def test_uploading_and_reading_large_items_leaves_the_loop_free(service: Service, big_png: bytes) -> None:
    await _dataset_with_big_items(service, big_png)
    sha256 = hashlib.sha256(big_png).hexdigest()

    response = await service.check(
        "GetItem FULL of a 24 MB image",
        lambda: service.stub.GetItem(api.GetItemRequest(name="datasets/big/versions/1/items/big-0", view=pb.ITEM_VIEW_FULL)),
    )
    assert response.item.image.data == big_png

    listing = await service.check(
        "ListItems FULL of two 24 MB images",
        lambda: service.stub.ListItems(api.ListItemsRequest(parent="datasets/big/versions/1", view=pb.ITEM_VIEW_FULL)),
    )
    assert [item.image.sha256 for item in listing.items] == [sha256, sha256]
    assert all(item.image.data == big_png for item in listing.items)

    def stream() -> list[api.StreamItemsResponse]:
        return list(service.stub.StreamItems(api.StreamItemsRequest(parent="datasets/big/versions/1", view=pb.ITEM_VIEW_FULL)))

    responses = await service.check("StreamItems FULL of two 24 MB images", stream)
    streamed = [item for response in responses for item in response.items]
    assert [item.name for item in streamed] == ["datasets/big/items/big-0", "datasets/big/items/big-1"]
    assert all(item.image.data == big_png and item.version == 1 for item in streamed)


async def test_updating_an_item_with_a_huge_polygon_leaves_the_loop_free(service: Service) -> None:
    """Two polygons of 50 parts of 10,000 points (the most a part may have; 16 MB of coordinates)
    are converted and checked off the loop."""
    await asyncio.to_thread(
        service.stub.CreateDataset,
        api.CreateDatasetRequest(dataset_id="poly", categories=[pb.Category(category_id=1, display_name="shape")]),
    )
    upload = api.UploadItemsRequest.ItemUpload(item_id="p", item=pb.Item(image=pb.Image(data=png(64, 48))))
    await asyncio.to_thread(lambda: list(service.stub.UploadItems(iter([api.UploadItemsRequest(parent="datasets/poly", request_id="p", items=[upload])]))))
    coordinates = np.random.default_rng(3).uniform(0, 48, size=(2, 50, 20_000)).tolist()
    polygons = [
        pb.Annotation(category_id=1, polygon=pb.Polygon(parts=[pb.PolygonPart(coordinates=part) for part in parts])) for parts in coordinates
    ]
    request = api.UpdateItemRequest(item=pb.Item(name="datasets/poly/items/p", annotations=polygons))
    request.update_mask.paths.append("annotations")
    updated = await service.check("UpdateItem with polygons of 1,000,000 points", lambda: service.stub.UpdateItem(request))
    assert [[list(part.coordinates) for part in a.polygon.parts] for a in updated.item.annotations] == coordinates


def _chunks(data: bytes, sha256: str) -> Iterator[api.UploadBlobsRequest]:
    for offset in range(0, len(data), READ_CHUNK_BYTES):
        yield api.UploadBlobsRequest(
            sha256=sha256, size_bytes=len(data), offset=offset, data=data[offset : offset + READ_CHUNK_BYTES]
        )


async def test_a_64_mib_blob_goes_up_and_down_without_blocking_the_loop(service: Service, big_blob: bytes) -> None:
    sha256 = hashlib.sha256(big_blob).hexdigest()
    uploaded = await service.check("UploadBlobs of 64 MiB", lambda: service.stub.UploadBlobs(_chunks(big_blob, sha256)))
    assert [(b.sha256, b.size_bytes) for b in uploaded.blobs] == [(sha256, BLOB_BYTES)]

    def read() -> bytes:
        return b"".join(r.data for r in service.stub.ReadBlob(api.ReadBlobRequest(sha256=sha256)))

    assert await service.check("ReadBlob of 64 MiB", read) == big_blob

    # A corrupted upload is hashed in full before it is refused: off the loop as well.
    wrong = "0" * 64
    with pytest.raises(grpc.RpcError) as refused:
        await service.check("UploadBlobs of 64 MiB that do not match their sha256", lambda: service.stub.UploadBlobs(_chunks(big_blob, wrong)))
    assert refused.value.code() == grpc.StatusCode.DATA_LOSS


async def test_an_import_job_with_a_30000_file_manifest_is_created_without_blocking_the_loop(service: Service) -> None:
    """Checking a large manifest, storing its job and building the answer happen off the loop."""
    image = png(8, 8)
    coco = b'{"images": [], "annotations": [], "categories": []}'
    for data in (image, coco):
        digest = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(service.stub.UploadBlobs, iter([api.UploadBlobsRequest(sha256=digest, size_bytes=len(data), offset=0, data=data)]))
    await asyncio.to_thread(service.stub.CreateDataset, api.CreateDatasetRequest(dataset_id="manifest"))
    files = [pb.ManifestFile(path=f"images/{i:05d}.png", sha256=hashlib.sha256(image).hexdigest()) for i in range(30_000)]
    request = api.CreateImportJobRequest(
        parent="datasets/manifest",
        import_job=pb.ImportJob(
            coco=pb.CocoImportSource(annotations=pb.ManifestFile(path="coco.json", sha256=hashlib.sha256(coco).hexdigest()), images=files)
        ),
    )
    created = await service.check("CreateImportJob with 30,000 manifest files", lambda: service.stub.CreateImportJob(request))
    assert len(created.import_job.coco.images) == 30_000
    assert {f.size_bytes for f in created.import_job.coco.images} == {len(image)}


async def test_the_probe_sees_a_blocked_loop() -> None:
    """The measure itself: a callback that computes on the loop for 80 ms is caught."""
    probe = LoopProbe()

    def block() -> None:
        until = time.thread_time() + 0.080
        while time.thread_time() < until:
            pass

    async def blocked_call() -> None:
        await asyncio.sleep(0.02)
        block()  # on the loop

    loop = asyncio.get_running_loop()
    waiter = loop.create_task(blocked_call())
    _, worst = await probe.measure(lambda: time.sleep(0.2))
    await waiter
    assert worst > BLOCK_LIMIT_SECONDS
