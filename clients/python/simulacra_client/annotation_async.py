"""The asyncio twin of ``AnnotationClient``, for programs that already run an event loop.

Same names, same arguments, same errors as ``simulacra_client.annotation``
(it builds its requests with the same functions), on ``grpc.aio`` through
``AsyncRawClient``: every call is awaited, every listing and stream is an
async iterator, and nothing blocks the loop (file hashing and reading run in
a worker thread). It covers datasets, categories, versions, statistics,
items (list, stream with resume, upload), blobs and import/export jobs, and
MNIST imports; the file-tree helpers of the blocking client (COCO/YOLO
folders, downloads of export results) stay there.

    async with AsyncAnnotationClient("127.0.0.1:50051") as client:
        await client.create_dataset("digits")
        job = await client.import_mnist("digits", images, labels)
        async for streamed in client.stream_items("digits@latest"):
            ...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import grpc
import numpy as np

from simulacra_client.annotation_types import (
    FIND_MISSING_LIMIT,
    TERMINAL_STATES,
    BlobSource,
    ProgressCallback,
    ProgressEvent,
    StreamedItem,
    _notify,
    _read_chunks,
    check_batching,
    create_dataset_request,
    create_export_job_request,
    create_import_job_request,
    dataset_name,
    item_batches,
    job_outcome,
    job_progress,
    jobs_parent,
    mnist_files,
    mnist_import_job,
    read_name,
    sha256_of,
    split_stream_cursor,
    stream_items_request,
    streamed_items,
    version_name,
)
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as rpc_grpc
from simulacra_client.errors import from_rpc_error
from simulacra_client.raw import AsyncRawClient, ServiceClient
from simulacra_client.retry import Backoff

__all__ = ["AsyncAnnotationClient"]

_WATCH_RETRIES = 5


class AsyncAnnotationClient(ServiceClient):
    """A ``grpc.aio`` connection to the annotation-store (arguments as ``AnnotationClient``'s).
    Use ``async with``, or await ``close()``."""

    RAW = AsyncRawClient
    STUB = rpc_grpc.AnnotationServiceStub
    SERVICES = rpc

    async def close(self) -> None:
        await self._raw.close()

    async def __aenter__(self) -> AsyncAnnotationClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _paged(self, method: str, request: Any, field: str) -> AsyncIterator[Any]:
        while True:
            page = await self._raw.call(method, request)
            for element in getattr(page, field):
                yield element
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # ---- datasets and categories -------------------------------------------
    async def create_dataset(
        self, dataset: str, *, display_name: str = "", description: str = "", labels: dict[str, str] | None = None,
        categories: Sequence[pb.Category] = (),
    ) -> pb.Dataset:
        request = create_dataset_request(dataset, display_name=display_name, description=description, labels=labels, categories=categories)
        return (await self._raw.call("CreateDataset", request)).dataset

    async def get_dataset(self, dataset: str) -> pb.Dataset:
        return (await self._raw.call("GetDataset", rpc.GetDatasetRequest(name=dataset_name(dataset)))).dataset

    def list_datasets(self, *, filter: str = "", order_by: str = "", page_size: int = 0) -> AsyncIterator[pb.Dataset]:
        return self._paged("ListDatasets", rpc.ListDatasetsRequest(page_size=page_size, filter=filter, order_by=order_by), "datasets")

    async def delete_dataset(self, dataset: str, *, force: bool = False) -> None:
        await self._raw.call("DeleteDataset", rpc.DeleteDatasetRequest(name=dataset_name(dataset), force=force))

    async def create_category(self, dataset: str, category: pb.Category) -> pb.Category:
        return (await self._raw.call("CreateCategory", rpc.CreateCategoryRequest(parent=dataset_name(dataset), category=category))).category

    async def list_categories(self, reference: str) -> list[pb.Category]:
        request = rpc.ListCategoriesRequest(parent=read_name(reference), page_size=1000)
        return [category async for category in self._paged("ListCategories", request, "categories")]

    # ---- versions, statistics, items -----------------------------------------
    async def commit(self, dataset: str, *, description: str = "") -> rpc.CommitVersionResponse:
        return await self._raw.call("CommitVersion", rpc.CommitVersionRequest(parent=dataset_name(dataset), description=description))

    async def get_version(self, reference: str) -> pb.DatasetVersion:
        return (await self._raw.call("GetVersion", rpc.GetVersionRequest(name=version_name(reference)))).version

    async def statistics(self, reference: str, *, filter: str = "") -> pb.DatasetStatistics:
        return (await self._raw.call("GetStatistics", rpc.GetStatisticsRequest(parent=read_name(reference), filter=filter))).statistics

    def list_items(
        self, reference: str, *, filter: str = "", order_by: str = "", page_size: int = 0, view: int = pb.ITEM_VIEW_BASIC
    ) -> AsyncIterator[pb.Item]:
        request = rpc.ListItemsRequest(parent=read_name(reference), filter=filter, order_by=order_by, page_size=page_size, view=view)
        return self._paged("ListItems", request, "items")

    async def stream_items(
        self, reference: str, *, start_cursor: str = "", filter: str = "", view: int = pb.ITEM_VIEW_FULL, shard_index: int = 0,
        shard_count: int = 0, max_items_per_response: int = 0, resume_attempts: int = 3,
    ) -> AsyncIterator[StreamedItem]:
        """Every item of a committed version with its cursor; a broken stream resumes (see ``AnnotationClient.stream_items``)."""
        cursor, skip = split_stream_cursor(start_cursor)
        backoff = Backoff(self.resume_policy(resume_attempts))
        parent = version_name(reference)
        while True:
            request = stream_items_request(parent, cursor, filter, view, shard_index, shard_count, max_items_per_response)
            call = self.stub.StreamItems(request)
            try:
                async for response in call:
                    backoff.reset()
                    streamed, skip = streamed_items(response, cursor, skip)
                    for entry in streamed:
                        yield entry
                    cursor = response.cursor
                return
            except grpc.RpcError as error:
                if not backoff.policy.retryable(error) or not await backoff.sleep_async():
                    raise from_rpc_error(error) from None
            finally:
                call.cancel()

    async def upload_items(
        self, dataset: str, items: Iterable[pb.Item | tuple[str, pb.Item]], *, batch_size: int = 64, max_in_flight: int = 4,
        box_bounds_policy: int = pb.BOX_BOUNDS_POLICY_REJECT, progress: ProgressCallback | None = None,
    ) -> list[str]:
        """Upload items in batches over one stream, at most ``max_in_flight`` batches ahead of their acknowledgement."""
        check_batching(batch_size, max_in_flight)
        slots = asyncio.Semaphore(max_in_flight)

        async def batches() -> AsyncIterator[rpc.UploadItemsRequest]:
            for request in item_batches(dataset, items, batch_size, box_bounds_policy):
                await slots.acquire()
                yield request

        names: list[str] = []
        async for ack in self._raw.exchange("UploadItems", batches()):  # typed errors; stopping cancels the call
            names.extend(ack.item_names)
            slots.release()
            _notify(progress, ProgressEvent("items", len(names), 0, "items"))
        return names

    # ---- blobs ------------------------------------------------------------
    async def find_missing_blobs(self, digests: Sequence[str]) -> list[str]:
        missing: list[str] = []
        for start in range(0, len(digests), FIND_MISSING_LIMIT):
            request = rpc.FindMissingBlobsRequest(sha256s=list(digests[start : start + FIND_MISSING_LIMIT]))
            missing.extend((await self._raw.call("FindMissingBlobs", request)).missing_sha256s)
        return missing

    async def upload_blobs(self, sources: Sequence[BlobSource], *, progress: ProgressCallback | None = None) -> list[str]:
        """Store files or bytes as blobs (those the server lacks); their sha256 in order."""
        hashed = [await asyncio.to_thread(sha256_of, source) for source in sources]
        digests = [digest for digest, _ in hashed]
        missing = set(await self.find_missing_blobs(sorted(set(digests))))
        todo = {digest: (source, size) for source, (digest, size) in zip(sources, hashed) if digest in missing}
        total = sum(size for _, size in todo.values())
        _notify(progress, ProgressEvent("uploading", 0, total, "bytes", f"{len(todo)} of {len(set(digests))} files to send"))
        if todo:
            sent = 0

            async def chunks() -> AsyncIterator[rpc.UploadBlobsRequest]:
                nonlocal sent
                for digest, (source, size) in todo.items():
                    reader = _read_chunks(source, size)  # one chunk at a time, read in a worker thread
                    while (piece := await asyncio.to_thread(next, reader, None)) is not None:
                        offset, data = piece
                        yield rpc.UploadBlobsRequest(sha256=digest, size_bytes=size, offset=offset, data=data)
                        sent += len(data)
                        _notify(progress, ProgressEvent("uploading", sent, total, "bytes"))

            try:
                await self.stub.UploadBlobs(chunks(), timeout=None)
            except grpc.RpcError as error:
                raise from_rpc_error(error) from None
        return digests

    async def read_blob(self, sha256: str, *, offset: int = 0, limit: int = 0) -> bytes:
        """A blob's bytes (or ``limit`` of them from ``offset``), unverified."""
        request = rpc.ReadBlobRequest(sha256=sha256, offset=offset, limit=limit)
        return b"".join([response.data async for response in self._raw.stream("ReadBlob", request)])

    # ---- jobs ---------------------------------------------------------------
    async def create_import_job(self, dataset: str, job: pb.ImportJob, *, request_id: str | None = None) -> pb.ImportJob:
        return (await self._raw.call("CreateImportJob", create_import_job_request(dataset, job, request_id))).import_job

    async def get_import_job(self, name: str) -> pb.ImportJob:
        return (await self._raw.call("GetImportJob", rpc.GetImportJobRequest(name=name))).import_job

    def list_import_jobs(self, dataset: str = "-", *, filter: str = "") -> AsyncIterator[pb.ImportJob]:
        return self._paged("ListImportJobs", rpc.ListImportJobsRequest(parent=jobs_parent(dataset), filter=filter), "import_jobs")

    async def cancel_import_job(self, name: str) -> pb.ImportJob:
        return (await self._raw.call("CancelImportJob", rpc.CancelImportJobRequest(name=name))).import_job

    def watch_import_job(self, name: str) -> AsyncIterator[pb.ImportJob]:
        return self._watch("WatchImportJob", rpc.WatchImportJobRequest(name=name), "import_job", lambda: self.get_import_job(name))

    async def wait_import_job(self, name: str, *, progress: ProgressCallback | None = None) -> pb.ImportJob:
        return await _finish(self.watch_import_job(name), "importing", progress)

    async def create_export_job(self, reference: str, job: pb.ExportJob, *, request_id: str | None = None) -> pb.ExportJob:
        return (await self._raw.call("CreateExportJob", create_export_job_request(reference, job, request_id))).export_job

    async def get_export_job(self, name: str) -> pb.ExportJob:
        return (await self._raw.call("GetExportJob", rpc.GetExportJobRequest(name=name))).export_job

    def list_export_jobs(self, dataset: str = "-", *, filter: str = "") -> AsyncIterator[pb.ExportJob]:
        return self._paged("ListExportJobs", rpc.ListExportJobsRequest(parent=jobs_parent(dataset), filter=filter), "export_jobs")

    async def cancel_export_job(self, name: str) -> pb.ExportJob:
        return (await self._raw.call("CancelExportJob", rpc.CancelExportJobRequest(name=name))).export_job

    def watch_export_job(self, name: str) -> AsyncIterator[pb.ExportJob]:
        return self._watch("WatchExportJob", rpc.WatchExportJobRequest(name=name), "export_job", lambda: self.get_export_job(name))

    async def wait_export_job(self, name: str, *, progress: ProgressCallback | None = None) -> pb.ExportJob:
        return await _finish(self.watch_export_job(name), "exporting", progress)

    async def import_mnist(
        self, dataset: str, images: np.ndarray, labels: np.ndarray | Sequence[int], *, split: str = "", limit: int = 0,
        progress: ProgressCallback | None = None,
    ) -> pb.ImportJob:
        """Upload digits as IDX files and run the MNIST import to its end (``limit``: a stratified subset)."""
        image_file, label_file = await asyncio.to_thread(mnist_files, images, labels)
        image_digest, label_digest = await self.upload_blobs([image_file, label_file], progress=progress)
        job = await self.create_import_job(dataset, mnist_import_job(image_digest, label_digest, split=split, limit=limit))
        return await self.wait_import_job(job.name, progress=progress)

    # ---- helpers ------------------------------------------------------------
    async def _watch(self, method: str, request: Any, field: str, get: Callable[[], Any]) -> AsyncIterator[Any]:
        backoff = Backoff(self.resume_policy(_WATCH_RETRIES))
        while True:
            try:
                async for response in getattr(self.stub, method)(request):
                    backoff.reset()
                    job = getattr(response, field)
                    yield job
                    if job.state in TERMINAL_STATES:
                        return
                job = await get()  # the server ended the stream early (draining): look once more
                if job.state in TERMINAL_STATES:
                    yield job
                    return
            except grpc.RpcError as error:
                if not backoff.policy.retryable(error) or not await backoff.sleep_async():
                    raise from_rpc_error(error) from None


async def _finish(snapshots: AsyncIterator[Any], stage: str, progress: ProgressCallback | None) -> Any:
    job = None
    async for job in snapshots:
        job_progress(job, stage, progress)
    return job_outcome(job)
