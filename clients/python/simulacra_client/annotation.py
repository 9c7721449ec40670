"""The friendly client of the annotation-store: datasets, uploads, imports, exports.

It speaks in resource names and protobuf messages of
``simulacra_client.api.annotation.v1`` and hides the plumbing: pagination,
content-addressed uploads (``FindMissingBlobs`` first, so bytes the server
already has never travel twice), batched item uploads with a bounded number
of batches in flight, and long-running jobs (create, watch, download).

Names: a dataset is ``NAME`` or ``datasets/NAME``; a version is ``NAME@VERSION``
(``VERSION`` a number or ``latest``) or ``datasets/NAME/versions/VERSION``.

Every failed RPC raises the typed ``SimulacraRpcError`` of ``simulacra_client.errors``
(with ``code``, ``reason``, ``metadata``); a job that ends FAILED raises
``JobFailedError`` carrying the job's ``JobError`` the same way, a cancelled
one ``JobCancelledError``. Only grpcio, protobuf and numpy are needed.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import grpc

from simulacra_client.annotation_blobs import BlobCalls
from simulacra_client.annotation_jobs import JobCalls
from simulacra_client.annotation_types import (
    JobCancelledError,
    JobFailedError,
    ProgressCallback,
    ProgressEvent,
    StreamedItem,
    _notify,
    check_batching,
    create_dataset_request,
    dataset_name,
    item_batches,
    read_name,
    split_stream_cursor,
    stream_items_request,
    streamed_items,
    version_name,
)
from simulacra_client.annotation_types import (  # noqa: F401 - re-exported: callers import these from here
    check_relative_path,
    idx_bytes,
    mnist_files,
    mnist_import_job,
)
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as rpc_grpc
from simulacra_client.errors import from_rpc_error
from simulacra_client.raw import RawClient, ServiceClient
from simulacra_client.retry import Backoff

__all__ = [
    "AnnotationClient",
    "JobCancelledError",
    "JobFailedError",
    "ProgressEvent",
    "StreamedItem",
    "dataset_name",
    "version_name",
    "read_name",
]


class AnnotationClient(BlobCalls, JobCalls, ServiceClient):
    """A connection to the annotation-store. Use as a context manager, or call ``close()``.

    Arguments: ``address`` (host:port), ``token``, ``tls_ca``, ``max_message_bytes``,
    ``timeout`` (seconds per unary call) and ``retry`` (``simulacra_client.retry``; None: never).
    """

    RAW = RawClient
    STUB = rpc_grpc.AnnotationServiceStub
    SERVICES = rpc

    @property
    def _channel(self) -> grpc.Channel:
        return self._raw.channel

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AnnotationClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, **kwargs: Any) -> Any:
        return self._raw.call(method, request, **kwargs)

    def _paged(self, method: str, request: Any, field: str) -> Iterator[Any]:
        """Every element of ``field`` over all pages of a List RPC, fetched as the iterator advances."""
        while True:
            page = self._call(method, request)
            yield from getattr(page, field)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    # ---- datasets and categories -------------------------------------------
    def create_dataset(
        self,
        dataset: str,
        *,
        display_name: str = "",
        description: str = "",
        labels: dict[str, str] | None = None,
        categories: Sequence[pb.Category] = (),
    ) -> pb.Dataset:
        request = create_dataset_request(dataset, display_name=display_name, description=description, labels=labels, categories=categories)
        return self._call("CreateDataset", request).dataset

    def get_dataset(self, dataset: str) -> pb.Dataset:
        return self._call("GetDataset", rpc.GetDatasetRequest(name=dataset_name(dataset))).dataset

    def list_datasets(self, *, filter: str = "", order_by: str = "", page_size: int = 0) -> Iterator[pb.Dataset]:
        """Every dataset (pages are fetched as the iterator advances)."""
        return self._paged("ListDatasets", rpc.ListDatasetsRequest(page_size=page_size, filter=filter, order_by=order_by), "datasets")

    def delete_dataset(self, dataset: str, *, force: bool = False) -> None:
        self._call("DeleteDataset", rpc.DeleteDatasetRequest(name=dataset_name(dataset), force=force))

    def create_category(self, dataset: str, category: pb.Category) -> pb.Category:
        return self._call("CreateCategory", rpc.CreateCategoryRequest(parent=dataset_name(dataset), category=category)).category

    def list_categories(self, reference: str) -> list[pb.Category]:
        """Categories of the working state (``NAME``) or of a version (``NAME@VERSION``), by id."""
        return list(self._paged("ListCategories", rpc.ListCategoriesRequest(parent=read_name(reference), page_size=1000), "categories"))

    # ---- versions, statistics, items -----------------------------------------
    def commit(self, dataset: str, *, description: str = "") -> rpc.CommitVersionResponse:
        """Freeze the working state; the response has ``version`` and ``created``
        (False when the content equals the latest version's, which is returned).
        FAILED_PRECONDITION ``IMPORT_IN_PROGRESS`` while an import job of the dataset is unfinished."""
        return self._call("CommitVersion", rpc.CommitVersionRequest(parent=dataset_name(dataset), description=description))

    def commit_staged(
        self, dataset: str, staging_id: str, *, description: str = "", source_version: str = "", pipeline_digest: str = ""
    ) -> rpc.CommitStagedVersionResponse:
        """Commit the items uploaded with ``staging_id`` as the next version (the working state is not
        touched), recording ``derived_from`` when ``source_version`` is given; committing again returns
        the same version with ``created`` False."""
        request = rpc.CommitStagedVersionRequest(parent=dataset_name(dataset), staging_id=staging_id, description=description)
        if source_version:
            request.derived_from.CopyFrom(pb.DerivedFrom(source_version=source_version, pipeline_digest=pipeline_digest))
        return self._call("CommitStagedVersion", request)

    def discard_staging(self, dataset: str, staging_id: str) -> None:
        """Remove an uncommitted staging and its items (nothing when there is none)."""
        self._call("DiscardStaging", rpc.DiscardStagingRequest(parent=dataset_name(dataset), staging_id=staging_id))

    def get_version(self, reference: str) -> pb.DatasetVersion:
        return self._call("GetVersion", rpc.GetVersionRequest(name=version_name(reference))).version

    def statistics(self, reference: str, *, filter: str = "") -> pb.DatasetStatistics:
        """Statistics of ``NAME@VERSION`` (or of the working state for plain ``NAME``)."""
        return self._call("GetStatistics", rpc.GetStatisticsRequest(parent=read_name(reference), filter=filter)).statistics

    def list_items(self, reference: str, *, filter: str = "", order_by: str = "", page_size: int = 0, view: int = pb.ITEM_VIEW_BASIC) -> Iterator[pb.Item]:
        request = rpc.ListItemsRequest(parent=read_name(reference), page_size=page_size, filter=filter, order_by=order_by, view=view)
        return self._paged("ListItems", request, "items")

    def stream_items(
        self,
        reference: str,
        *,
        start_cursor: str = "",
        filter: str = "",
        view: int = pb.ITEM_VIEW_FULL,
        shard_index: int = 0,
        shard_count: int = 0,
        max_items_per_response: int = 0,
        resume_attempts: int = 3,
    ) -> Iterator[StreamedItem]:
        """Every item of a committed version, one at a time, each with the cursor that continues after it.

        The server sends several items per response (up to ``max_items_per_response``,
        0 = its default); this yields them one by one. When the connection breaks
        (UNAVAILABLE) the stream is reopened from the last cursor received, up to
        ``resume_attempts`` times in a row, so no item is lost or repeated.
        """
        cursor, skip = split_stream_cursor(start_cursor)
        backoff = Backoff(self.resume_policy(resume_attempts))
        parent = version_name(reference)
        while True:
            call = self.stub.StreamItems(stream_items_request(parent, cursor, filter, view, shard_index, shard_count, max_items_per_response))
            try:
                for response in call:
                    backoff.reset()
                    streamed, skip = streamed_items(response, cursor, skip)
                    yield from streamed
                    cursor = response.cursor
                return
            except grpc.RpcError as error:
                if not backoff.policy.retryable(error) or not backoff.sleep():
                    raise from_rpc_error(error) from None
            finally:
                call.cancel()  # a no-op when the stream ended; frees the server when the caller stops early

    def upload_items(
        self,
        dataset: str,
        items: Iterable[pb.Item | tuple[str, pb.Item]],
        *,
        batch_size: int = 64,
        max_in_flight: int = 4,
        box_bounds_policy: int = pb.BOX_BOUNDS_POLICY_REJECT,
        progress: ProgressCallback | None = None,
        staging_id: str = "",
        categories: Sequence[pb.Category] = (),
    ) -> list[str]:
        """Upload items (``Item`` or ``(item_id, Item)``) in batches over one stream.

        With ``staging_id`` the items go to that staging area of the dataset,
        invisible until ``commit_staged`` (or removed by ``discard_staging``);
        ``categories`` (with ``staging_id`` only) are staged first, for the
        committed version alone: the items may use them, the working state never
        gets them.

        At most ``max_in_flight`` batches are sent ahead of their acknowledgement,
        so memory stays bounded whatever the number of items. Returns the created
        item names in order. A rejected batch raises its error; every batch
        acknowledged before it stays written (see ``UploadItems`` in the contract).
        """
        check_batching(batch_size, max_in_flight)
        if categories and not staging_id:
            raise ValueError("categories: only a staged upload (staging_id) carries categories; use create_category for the working state")
        slots = threading.Semaphore(max_in_flight)
        stop = threading.Event()
        head = [rpc.UploadItemsRequest(parent=dataset_name(dataset), request_id=str(uuid.uuid4()), categories=categories)] if categories else []

        def batches() -> Iterator[rpc.UploadItemsRequest]:
            for request in itertools.chain(head, item_batches(dataset, items, batch_size, box_bounds_policy)):
                if not _acquire(slots, stop):
                    return
                request.staging_id = staging_id
                yield request

        names: list[str] = []
        try:
            for ack in self.stub.UploadItems(batches()):
                names.extend(ack.item_names)
                slots.release()
                if ack.item_names:  # not for the categories' item-less batch
                    _notify(progress, ProgressEvent("items", len(names), 0, "items"))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            stop.set()
        return names


def _acquire(slots: threading.Semaphore, stop: threading.Event) -> bool:
    """Wait for a free in-flight slot; False once the call is over (so the sender thread ends)."""
    while not slots.acquire(timeout=0.1):
        if stop.is_set():
            return False
    return not stop.is_set()

