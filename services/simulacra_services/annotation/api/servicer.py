"""The AnnotationService RPCs: each parses names, converts, calls the store in a thread, converts back.

Read it as the table of contents of the service. Domain errors raised here
or in the store become gRPC statuses with ErrorInfo in the server's
interceptor. The import/export job RPCs are delegated to the ``JobService``
of annotation/api/jobs.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_services.annotation.api import convert
from simulacra_services.annotation.api.stream import (  # noqa: F401 (the stream limits, re-exported)
    STREAM_DEFAULT_ITEMS,
    STREAM_MAX_ITEMS,
    STREAM_RESPONSE_BYTES,
    ItemStreams,
    stream_items_per_response,
)
from simulacra_services.annotation.domain import names
from simulacra_services.annotation.domain.prepare import check_request_id
from simulacra_services.annotation.domain.records import BatchResult, ItemChanges, ItemRecord
from simulacra_services.annotation.persistence.blobs import MAX_BLOB_BYTES, READ_CHUNK_BYTES
from simulacra_services.annotation.persistence.staging import Stagings, check_staged_categories, check_staging_id
from simulacra_services.annotation.persistence.store import AnnotationStore
from simulacra_services.core import errors
from simulacra_services.core.api import blobs as blob_api

if TYPE_CHECKING:
    from simulacra_services.annotation.api.jobs import JobService

T = TypeVar("T")

MAX_FIND_BLOBS = 10_000
_UPDATE_PATHS = ("split", "attributes", "file_name", "annotations", "lineage")


async def _run(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(function, *args, **kwargs)


def _working_state(state: names.StateName, field: str) -> str:
    if state.is_version:
        raise errors.InvalidArgument(
            "VERSION_IS_READ_ONLY",
            f"{field}: committed versions are immutable; name the working state (datasets/{state.dataset_id}/...)",
            {"field": field},
        )
    return state.dataset_id


def _version_arg(state: names.StateName) -> str | None:
    return state.version


class AnnotationServicer(api_grpc.AnnotationServiceServicer):
    def __init__(self, store: AnnotationStore, jobs: JobService) -> None:
        self.store = store
        self.jobs = jobs
        self.stagings = Stagings(store.item_writes, store.versions)
        self.streams = ItemStreams(store, store.packs)

    async def close(self) -> None:
        """Wait for work that outlives its RPC (stream packs being published)."""
        await self.streams.close()

    # ---- datasets ------------------------------------------------------------
    async def CreateDataset(self, request: api.CreateDatasetRequest, context: grpc.aio.ServicerContext) -> api.CreateDatasetResponse:
        record = await _run(
            self.store.create_dataset,
            request.dataset_id,
            display_name=request.dataset.display_name,
            description=request.dataset.description,
            labels=dict(request.dataset.labels),
            categories=[convert.category_from_proto(c) for c in request.categories],
        )
        return api.CreateDatasetResponse(dataset=convert.dataset_to_proto(record))

    async def GetDataset(self, request: api.GetDatasetRequest, context: grpc.aio.ServicerContext) -> api.GetDatasetResponse:
        record = await _run(self.store.get_dataset, names.parse_dataset(request.name))
        return api.GetDatasetResponse(dataset=convert.dataset_to_proto(record))

    async def ListDatasets(self, request: api.ListDatasetsRequest, context: grpc.aio.ServicerContext) -> api.ListDatasetsResponse:
        page = await _run(
            self.store.list_datasets,
            page_size=request.page_size,
            page_token=request.page_token,
            filter=request.filter,
            order_by=request.order_by,
        )
        return api.ListDatasetsResponse(
            datasets=[convert.dataset_to_proto(r) for r in page.records], next_page_token=page.next_page_token
        )

    async def DeleteDataset(self, request: api.DeleteDatasetRequest, context: grpc.aio.ServicerContext) -> api.DeleteDatasetResponse:
        await _run(self.store.delete_dataset, names.parse_dataset(request.name), force=request.force)
        return api.DeleteDatasetResponse()

    # ---- categories ----------------------------------------------------------
    async def CreateCategory(self, request: api.CreateCategoryRequest, context: grpc.aio.ServicerContext) -> api.CreateCategoryResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        category = await _run(self.store.create_category, dataset_id, convert.category_from_proto(request.category))
        return api.CreateCategoryResponse(category=convert.category_to_proto(dataset_id, category))

    async def GetCategory(self, request: api.GetCategoryRequest, context: grpc.aio.ServicerContext) -> api.GetCategoryResponse:
        name = names.parse_category(request.name)
        category = await _run(self.store.get_category, name.state.dataset_id, name.category_id, _version_arg(name.state))
        return api.GetCategoryResponse(category=convert.category_to_proto(name.state.dataset_id, category))

    async def ListCategories(self, request: api.ListCategoriesRequest, context: grpc.aio.ServicerContext) -> api.ListCategoriesResponse:
        state = names.parse_state(request.parent)
        page = await _run(
            self.store.list_categories_page, state.dataset_id, _version_arg(state), page_size=request.page_size, page_token=request.page_token
        )
        return api.ListCategoriesResponse(
            categories=[convert.category_to_proto(state.dataset_id, c) for c in page.records], next_page_token=page.next_page_token
        )

    async def DeleteCategory(self, request: api.DeleteCategoryRequest, context: grpc.aio.ServicerContext) -> api.DeleteCategoryResponse:
        name = names.parse_category(request.name)
        await _run(self.store.delete_category, _working_state(name.state, "name"), name.category_id)
        return api.DeleteCategoryResponse()

    # ---- items ---------------------------------------------------------------
    async def UploadItems(
        self, request_iterator: AsyncIterator[api.UploadItemsRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[api.UploadItemsResponse]:
        parent = ""
        async for request in request_iterator:
            try:
                dataset_id = names.parse_dataset(request.parent, "parent")
                if parent and request.parent != parent:
                    raise errors.InvalidArgument(
                        "PARENT_CHANGED",
                        f"parent: every message of an upload stream names the same dataset ({parent!r}, then {request.parent!r})",
                        {"field": "parent"},
                    )
                parent = request.parent
                check_request_id(request.request_id)
                # Hashing and converting a batch of up to 64 MiB is no work for the event loop.
                result = await _run(self._write_batch, dataset_id, request)
            except errors.SimulacraError as error:
                error.metadata.setdefault("request_id", request.request_id)
                raise
            yield api.UploadItemsResponse(
                request_id=request.request_id,
                item_names=[names.item_name(dataset_id, item_id) for item_id in result.item_ids],
                replayed=result.replayed,
            )

    def _write_batch(self, dataset_id: str, request: api.UploadItemsRequest) -> BatchResult:
        """One UploadItems message, converted and written (in a worker thread: it may hold 64 MiB)."""
        digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()
        new_items = []
        for index, upload in enumerate(request.items):
            try:
                new_items.append(convert.new_item_from_proto(upload, f"items[{index}]"))
            except errors.SimulacraError as error:
                error.metadata.setdefault("item_index", str(index))
                raise
        policy = convert.box_bounds_policy(request.box_bounds_policy)
        if request.staging_id:  # invisible until CommitStagedVersion (annotation/persistence/staging.py)
            check_staging_id(request.staging_id)  # before any blob is stored
            replay = self.stagings.replayed_batch(dataset_id, request.staging_id, request.request_id, digest)
            if replay is not None:  # before the checks against categories that may have changed since
                return replay
            categories = [convert.category_from_proto(c) for c in request.categories]
            check_staged_categories(categories)
            known = self.stagings.known_categories(dataset_id, request.staging_id, categories)
            prepared = self.store.prepare_batch(dataset_id, new_items, policy=policy, extra_categories=known)
            return self.stagings.write_batch(
                dataset_id, request.staging_id, prepared, request_id=request.request_id, payload_digest=digest, categories=categories
            )
        if request.categories:
            raise errors.InvalidArgument(
                "CATEGORIES_NEED_STAGING", "categories: only a staged batch (staging_id set) carries categories; "
                "create categories of the working state with CreateCategory", {"field": "categories"},
            )
        return self.store.write_batch(
            dataset_id, new_items, request_id=request.request_id, payload_digest=digest, policy=policy,
        )

    def _items_to_proto(self, records: list[ItemRecord], full: bool) -> list[pb.Item]:
        """Items as messages; ``full``: with image bytes and pixel-map data (read in parallel: the object
        store may be remote). Called in a worker thread, as is the serializing of the response that holds them."""
        if not full:
            return [convert.item_to_proto(r) for r in records]
        return [convert.item_to_proto(r, data) for r, data in self.store.read_full(records)]

    # Item responses are built and serialized in a worker thread (a FULL view may hold many MiB of
    # images) and go out as bytes: the server's interceptor sends bytes as they are.
    async def GetItem(self, request: api.GetItemRequest, context: grpc.aio.ServicerContext) -> bytes:
        name = names.parse_item(request.name)
        full = convert.full_view(request.view, pb.ITEM_VIEW_FULL)
        record = await _run(self.store.get_item, name.state.dataset_id, name.item_id, version=_version_arg(name.state), full=False)
        return await _run(lambda: api.GetItemResponse(item=self._items_to_proto([record], full)[0]).SerializeToString())

    async def ListItems(self, request: api.ListItemsRequest, context: grpc.aio.ServicerContext) -> bytes:
        state = names.parse_state(request.parent)
        full = convert.full_view(request.view, pb.ITEM_VIEW_BASIC)
        page = await _run(
            self.store.list_items,
            state.dataset_id,
            _version_arg(state),
            filter=request.filter,
            order_by=request.order_by,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return await _run(
            lambda: api.ListItemsResponse(items=self._items_to_proto(page.records, full), next_page_token=page.next_page_token).SerializeToString()
        )

    async def UpdateItem(self, request: api.UpdateItemRequest, context: grpc.aio.ServicerContext) -> bytes:
        name = names.parse_item(request.item.name, "item.name")
        dataset_id = _working_state(name.state, "item.name")
        paths = list(request.update_mask.paths) or list(_UPDATE_PATHS)
        for index, path in enumerate(paths):
            if path not in _UPDATE_PATHS:
                raise errors.InvalidArgument(
                    "INVALID_UPDATE_MASK",
                    f"update_mask.paths[{index}]: {path!r} cannot be updated; choose among {', '.join(_UPDATE_PATHS)}",
                    {"field": f"update_mask.paths[{index}]", "path": path},
                )
        # Annotations may be large (long polygons, RLE masks): converted and written in a worker thread.
        return await _run(self._update_item, dataset_id, name.item_id, paths, request)

    def _update_item(self, dataset_id: str, item_id: str, paths: list[str], request: api.UpdateItemRequest) -> bytes:
        item = request.item
        changes = ItemChanges(
            split=item.split if "split" in paths else None,
            attributes=dict(item.attributes) if "attributes" in paths else None,
            file_name=item.file_name if "file_name" in paths else None,
            annotations=convert.annotations_from_proto(item.annotations, "item.annotations") if "annotations" in paths else None,
            lineage=convert.lineage_from_proto(item.lineage) if "lineage" in paths else None,
        )
        record = self.store.update_item(
            dataset_id, item_id, changes, etag=item.etag, policy=convert.box_bounds_policy(request.box_bounds_policy)
        )
        return api.UpdateItemResponse(item=convert.item_to_proto(record)).SerializeToString()

    async def DeleteItem(self, request: api.DeleteItemRequest, context: grpc.aio.ServicerContext) -> api.DeleteItemResponse:
        name = names.parse_item(request.name)
        await _run(self.store.delete_item, _working_state(name.state, "name"), name.item_id)
        return api.DeleteItemResponse()

    async def StreamItems(self, request: api.StreamItemsRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """Responses go out as wire bytes, from the version's rows or its pack (annotation/api/stream.py)."""
        async for response in self.streams.stream(request):
            yield response

    # ---- versions ------------------------------------------------------------
    async def CommitVersion(self, request: api.CommitVersionRequest, context: grpc.aio.ServicerContext) -> api.CommitVersionResponse:
        record, created = await _run(self.store.commit_version, names.parse_dataset(request.parent, "parent"), request.description)
        return api.CommitVersionResponse(version=convert.version_to_proto(record), created=created)

    async def CommitStagedVersion(
        self, request: api.CommitStagedVersionRequest, context: grpc.aio.ServicerContext
    ) -> api.CommitStagedVersionResponse:
        record, created = await _run(
            self.stagings.commit, names.parse_dataset(request.parent, "parent"), request.staging_id, request.description,
            source_version=request.derived_from.source_version, pipeline_digest=request.derived_from.pipeline_digest,
        )
        return api.CommitStagedVersionResponse(version=convert.version_to_proto(record), created=created)

    async def DiscardStaging(self, request: api.DiscardStagingRequest, context: grpc.aio.ServicerContext) -> api.DiscardStagingResponse:
        await _run(self.stagings.discard, names.parse_dataset(request.parent, "parent"), request.staging_id)
        return api.DiscardStagingResponse()

    async def GetVersion(self, request: api.GetVersionRequest, context: grpc.aio.ServicerContext) -> api.GetVersionResponse:
        state = names.parse_version(request.name)
        record = await _run(self.store.resolve_version, state.dataset_id, state.version or "latest")
        return api.GetVersionResponse(version=convert.version_to_proto(record))

    async def ListVersions(self, request: api.ListVersionsRequest, context: grpc.aio.ServicerContext) -> api.ListVersionsResponse:
        page = await _run(
            self.store.list_versions, names.parse_dataset(request.parent, "parent"), page_size=request.page_size, page_token=request.page_token
        )
        return api.ListVersionsResponse(
            versions=[convert.version_to_proto(r) for r in page.records], next_page_token=page.next_page_token
        )

    # ---- statistics ----------------------------------------------------------
    async def GetStatistics(self, request: api.GetStatisticsRequest, context: grpc.aio.ServicerContext) -> api.GetStatisticsResponse:
        state = names.parse_state(request.parent)
        stats = await _run(self.store.statistics, state.dataset_id, _version_arg(state), filter=request.filter)
        return api.GetStatisticsResponse(statistics=convert.statistics_to_proto(stats))

    # ---- blobs ---------------------------------------------------------------
    async def FindMissingBlobs(
        self, request: api.FindMissingBlobsRequest, context: grpc.aio.ServicerContext
    ) -> api.FindMissingBlobsResponse:
        missing = await blob_api.find_missing(self.store.blobs, request.sha256s, limit=MAX_FIND_BLOBS)
        return api.FindMissingBlobsResponse(missing_sha256s=missing)

    async def UploadBlobs(
        self, request_iterator: AsyncIterator[api.UploadBlobsRequest], context: grpc.aio.ServicerContext
    ) -> api.UploadBlobsResponse:
        done = await blob_api.receive_blobs(request_iterator, self.store.blobs, max_blob_bytes=MAX_BLOB_BYTES)
        return api.UploadBlobsResponse(blobs=[pb.BlobReference(sha256=sha256, size_bytes=size) for sha256, size in done])

    async def ReadBlob(self, request: api.ReadBlobRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[api.ReadBlobResponse]:
        pieces = blob_api.read_blob(self.store.blobs, request.sha256, request.offset, request.limit, chunk_bytes=READ_CHUNK_BYTES)
        async for offset, data, size in pieces:
            yield api.ReadBlobResponse(offset=offset, data=data, size_bytes=size)

    # ---- import and export jobs (annotation/api/jobs.py) ---------------------------
    async def CreateImportJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.jobs.CreateImportJob(request, context)

    async def GetImportJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.jobs.GetImportJob(request, context)

    async def ListImportJobs(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.jobs.ListImportJobs(request, context)

    async def CancelImportJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.jobs.CancelImportJob(request, context)

    async def WatchImportJob(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in self.jobs.WatchImportJob(request, context):
            yield response

    async def CreateExportJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.jobs.CreateExportJob(request, context)

    async def GetExportJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.jobs.GetExportJob(request, context)

    async def ListExportJobs(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.jobs.ListExportJobs(request, context)

    async def CancelExportJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self.jobs.CancelExportJob(request, context)

    async def WatchExportJob(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in self.jobs.WatchExportJob(request, context):
            yield response
