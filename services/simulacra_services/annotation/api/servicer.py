"""The AnnotationService RPCs: each parses names, converts, calls the store in a thread, converts back.

Read it as the table of contents of the service. Domain errors raised here
or in the store become gRPC statuses with ErrorInfo in the server's
interceptor. The import/export job RPCs are delegated to the ``JobService``
of annotation/api/jobs.py.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_services.annotation.api import convert, wire
from simulacra_services.annotation.domain import names
from simulacra_services.annotation.domain.model import PixelMap
from simulacra_services.annotation.domain.prepare import check_request_id
from simulacra_services.annotation.domain.records import BatchResult, ItemChanges, ItemRecord, ItemSlice
from simulacra_services.annotation.persistence.blobs import MAX_BLOB_BYTES, READ_CHUNK_BYTES
from simulacra_services.annotation.persistence.row_codec import EncodedItem
from simulacra_services.annotation.persistence.staging import Stagings, check_staging_id
from simulacra_services.annotation.persistence.store import AnnotationStore
from simulacra_services.core import errors
from simulacra_services.core.api import blobs as blob_api
from simulacra_services.core.api import pagination

if TYPE_CHECKING:
    from simulacra_services.annotation.api.jobs import JobService

T = TypeVar("T")

MAX_FIND_BLOBS = 10_000
STREAM_DEFAULT_ITEMS = 64
STREAM_MAX_ITEMS = 1000
STREAM_RESPONSE_BYTES = 1024 * 1024
"""A StreamItems response stops at about this many bytes of encoded items (a larger item travels alone)."""
_STREAM_READ_ROWS = 256
_CURSOR_HINT = "start_cursor must be a cursor of an earlier response of a stream with the same parent, filter and shard"
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


def stream_items_per_response(requested: int) -> int:
    """``max_items_per_response`` of a StreamItems request: 0 = default, above the maximum = the maximum."""
    if requested < 0:
        raise errors.InvalidArgument(
            "INVALID_MAX_ITEMS_PER_RESPONSE",
            f"max_items_per_response must be >= 0 (0: the server default, {STREAM_DEFAULT_ITEMS}), got {requested}",
            {"field": "max_items_per_response", "value": requested},
        )
    return STREAM_DEFAULT_ITEMS if requested == 0 else min(requested, STREAM_MAX_ITEMS)


def _payload_bytes(record: EncodedItem | ItemRecord) -> int:
    """Image and pixel-map bytes the item will carry, known from its metadata before any blob is read."""
    if isinstance(record, EncodedItem):
        return record.image_size  # never has pixel maps
    size = record.image.size_bytes
    for annotation in record.annotations:
        geometry = annotation.geometry
        if isinstance(geometry, PixelMap):
            size += math.prod(geometry.shape) * np.dtype(geometry.dtype.value).itemsize
    return size


class _StreamReader:
    """Reads a StreamItems stream one response at a time, each call in a worker thread (never two at once).

    Rows are read from the database a few hundred at a time and kept until sent;
    a response takes the next rows up to the item and byte limits, then reads
    only their blobs, so memory stays near two responses whatever the images.
    Most items come with their stored encoding and are sent from it, joined
    with their image bytes into the response's wire bytes (annotation/api/wire.py);
    the others are decoded, converted and serialized. The cursor is encoded once per
    response, for its last item.
    """

    def __init__(
        self, store: AnnotationStore, dataset_id: str, version: int, filter: str, shard_index: int, shard_count: int,
        full: bool, query: str, items_per_response: int, after: str,
    ) -> None:
        self.store, self.dataset_id, self.version, self.filter = store, dataset_id, version, filter
        self.shard_index, self.shard_count, self.full, self.query = shard_index, shard_count, full, query
        self.items_per_response = items_per_response
        self.read_rows = max(items_per_response, _STREAM_READ_ROWS)
        self.buffered: collections.deque[EncodedItem | ItemRecord] = collections.deque()
        self.last_read = after  # item_id of the last row read from the database
        self.exhausted = False

    def _fill(self) -> None:
        """Top the buffer up to a full response when the database has more rows."""
        if self.exhausted or len(self.buffered) >= self.items_per_response:
            return
        where = ItemSlice(self.filter, self.last_read, self.shard_index, self.shard_count)
        rows = self.store.stream_page(self.dataset_id, self.version, where, limit=self.read_rows)
        self.buffered.extend(rows)
        self.exhausted = len(rows) < self.read_rows
        if rows:
            self.last_read = rows[-1].item_id

    def next_response(self) -> bytes | None:
        """The next response, serialized (see annotation/api/wire.py), or None at the end of the stream."""
        self._fill()
        if not self.buffered:
            return None
        # Plan by what the metadata tells before reading: the item limit, and the image and
        # pixel-map bytes, so that only the blobs of this response are read.
        records = [self.buffered.popleft()]
        planned = _payload_bytes(records[0]) if self.full else 0
        while self.buffered and len(records) < self.items_per_response:
            more = _payload_bytes(self.buffered[0]) if self.full else 0
            if planned + more > STREAM_RESPONSE_BYTES:
                break
            planned += more
            records.append(self.buffered.popleft())
        loaded = self.store.read_stream_entries(records) if self.full else [(record, None) for record in records]
        # Then by the encoded size, which large annotations (polygons, RLE masks) can swell:
        # items past the limit go back to the buffer for the next response.
        items: list[wire.Item] = []
        size = 0
        for index, (record, image) in enumerate(loaded):
            if isinstance(record, EncodedItem):
                item = wire.encoded_item(record.encoded, self.version, image)
            else:
                item = wire.message_item(convert.item_to_proto(record, image))
            size += item[0]
            if index and size > STREAM_RESPONSE_BYTES:
                self.buffered.extendleft(reversed(records[index:]))
                break
            items.append(item)
        cursor = pagination.encode_token([records[len(items) - 1].item_id, self.version], self.query)
        return wire.stream_response(items, cursor)


class AnnotationServicer(api_grpc.AnnotationServiceServicer):
    def __init__(self, store: AnnotationStore, jobs: JobService) -> None:
        self.store = store
        self.jobs = jobs
        self.stagings = Stagings(store.item_writes, store.versions)

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
            prepared = self.store.prepare_batch(dataset_id, new_items, policy=policy)
            return self.stagings.write_batch(dataset_id, request.staging_id, prepared, request_id=request.request_id, payload_digest=digest)
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

    async def StreamItems(
        self, request: api.StreamItemsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """Responses go out as wire bytes made by ``_StreamReader`` (the interceptor passes bytes through)."""
        state = names.parse_version(request.parent, "parent")
        shard_index, shard_count = request.shard_index, request.shard_count
        if shard_count < 0 or not (0 <= shard_index < max(shard_count, 1)):
            raise errors.InvalidArgument(
                "INVALID_SHARD",
                f"shard_index must lie in [0, shard_count) (shard_count 0 or 1: no sharding), got {shard_index} of {shard_count}",
                {"field": "shard_index", "shard_index": shard_index, "shard_count": shard_count},
            )
        items_per_response = stream_items_per_response(request.max_items_per_response)
        full = convert.full_view(request.view, pb.ITEM_VIEW_FULL)
        dataset = await _run(self.store.get_dataset, state.dataset_id)
        query = pagination.fingerprint(
            rpc="StreamItems", dataset=state.dataset_id, created=dataset.create_time, filter=request.filter,
            shard=[shard_index, shard_count if shard_count > 1 else 0],
        )
        after = ""
        if request.start_cursor:
            # A cursor is [item_id, version]: the last item sent and the version the stream reads.
            after, version = pagination.decode_token(
                request.start_cursor, query, validate=pagination.values_of(pagination.is_str, pagination.is_int),
                field="start_cursor", reason="INVALID_CURSOR", hint=_CURSOR_HINT,
            )
            if state.version != "latest" and int(state.version or 0) != version:
                raise pagination.invalid_token("start_cursor", "made for a different version", reason="INVALID_CURSOR", hint=_CURSOR_HINT)
        else:
            version = (await _run(self.store.resolve_version, state.dataset_id, state.version or "latest")).version
        reader = _StreamReader(
            self.store, state.dataset_id, version, request.filter, shard_index, shard_count, full, query, items_per_response, after
        )
        pending = asyncio.ensure_future(_run(reader.next_response))
        try:
            while (response := await pending) is not None:
                pending = asyncio.ensure_future(_run(reader.next_response))  # read the next one while this one is sent
                yield response
        finally:
            if not pending.done():
                pending.cancel()

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
