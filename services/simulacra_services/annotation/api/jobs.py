"""Import and export jobs as resources: the ten job RPCs, on ``core.jobs``.

``JobService`` answers the job RPCs for the servicer (one async method per
RPC; the Watch methods are async generators): it validates each request,
turns it into a job spec (JSON, no protobuf below this layer), and converts
``core.jobs.JobRecord``s back into ImportJob/ExportJob messages. The work
itself is ``job_handlers.py``; running, leases, cancel, watch and recovery are
``core.jobs.JobRunner``'s; the rows live in the service's own
``annotation_jobs`` table (``tables.jobs``, migration 0004).

Life of a job:

1. ``Create*Job`` checks the request completely before anything is stored:
   the dataset (and for exports the version) exists, every manifest path is a
   safe relative path listed once with a well-formed sha256 (else
   INVALID_ARGUMENT), every named blob has been uploaded (else
   FAILED_PRECONDITION, BLOB_NOT_FOUND) and is within its size limit, the
   source or format is known, an export filter parses. Then it stores the job
   (QUEUED, under the dataset's row lock; a retry with the same
   ``request_id`` returns the same job, another request with it is
   REQUEST_ID_REUSED) and wakes the runner.
2. A runner (this replica's or another's sharing the database) claims it under
   a lease and runs it in a worker thread in chunks of ``chunk_size`` items,
   with progress between chunks and a stop check (cancel, service stopping).
3. An import reads and checks everything first (the long part), then writes
   its items chunk by chunk (the new categories with the first chunk), each
   chunk one transaction recorded under the request id ``{job}-{chunk}``.
   ``progress.done`` counts each item half when checked and half when written.
   A cancel or failure, a graceful stop, or the death of the process (kill
   -9: once the lease has run out, the next runner takes the job over) ends
   the job only after ``store.discard_import`` removed everything those
   records name, so an import is all or nothing. Until then the job is
   unfinished and ``CommitVersion`` refuses to run (IMPORT_IN_PROGRESS): no
   version ever holds part of an import.
4. It ends SUCCEEDED (with its result), CANCELLED, or FAILED with a
   ``JobError`` (code, stable reason, message, metadata naming file, record
   and field); an unexpected exception becomes INTERNAL with an error id that
   finds the stack trace in the service log, never the trace itself; a job
   stopped by a shutdown or a dead process ends FAILED with INTERRUPTED
   (imports and exports do not resume: create the job again; items already
   in the dataset under the same file name and image are skipped).

Watching: ``Watch*Job`` sends the job at once, then again whenever its row
changes, and ends after the message with a terminal state. Watch and List
responses leave out the per-image manifest lists of the source
(``coco.images``, ``yolo.images``) to stay small; Get and Create return the
job in full.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.common.v1 import common_pb2

from simulacra_services.annotation.domain import filters, names
from simulacra_services.annotation.formats import importers, mnist, yolo
from simulacra_services.annotation.formats.coco import MAX_COCO_BYTES
from simulacra_services.annotation.persistence import blobs as blob_rules
from simulacra_services.annotation.api.job_handlers import (
    EXPORT,
    EXPORT_FORMATS,
    IMPORT,
    POLICIES,
    ChunkHook,
    ExportHandler,
    ImportHandler,
    JobOptions,
    import_source,
    request_of,
)
from simulacra_services.annotation.persistence.tables import jobs as jobs_table
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.pagination import PageRequest
from simulacra_services.core.jobs import JobRecord, JobRunner, JobStore

__all__ = ["JobService", "import_source"]

_COLLECTION = {IMPORT: "importJobs", EXPORT: "exportJobs"}
MAX_IMAGE_BYTES = blob_rules.MAX_IMAGE_BYTES
MAX_LABEL_FILE_BYTES = yolo.MAX_LABEL_FILE_BYTES
_JOB_FILTER_FIELDS = {
    "state": filters.FieldSpec(filters.FieldType.STRING),
    "format": filters.FieldSpec(filters.FieldType.STRING),
    "create_time": filters.FieldSpec(filters.FieldType.TIMESTAMP),
}
INTERRUPTED_MESSAGE = (
    "the annotation-store stopped while the job ran; its writes were undone or are skipped by a re-run: create the job again"
)


def job_name(kind: str, parent: str, job_id: str) -> str:
    return f"{parent}/{_COLLECTION.get(kind, kind + 'Jobs')}/{job_id}"


def _utc(value: dt.datetime | None) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    if value is not None:
        stamp.FromDatetime(value.astimezone(dt.timezone.utc))
    return stamp


def _to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


# ---------------------------------------------------------------------------
# Requests: up-front checks
# ---------------------------------------------------------------------------


def _manifest_files(job: pb.ImportJob) -> list[pb.ManifestFile]:
    """Every ManifestFile message of an import job's source (to fill in their sizes)."""
    if job.HasField("coco"):
        return [job.coco.annotations, *job.coco.images]
    if job.HasField("yolo"):
        return [f for image in job.yolo.images for f in ([image.image, image.labels] if image.HasField("labels") else [image.image])]
    return [job.mnist.images, job.mnist.labels]


def _size_limits(source: importers.ImportSource) -> list[tuple[str, importers.ManifestEntry, int]]:
    """(field, file, largest size allowed) of every file of a source."""
    if isinstance(source, importers.CocoSource):
        return [("import_job.coco.annotations", source.annotations, MAX_COCO_BYTES)] + [
            (f"import_job.coco.images[{i}]", e, MAX_IMAGE_BYTES) for i, e in enumerate(source.images)
        ]
    if isinstance(source, importers.YoloSource):
        limits = []
        for index, image in enumerate(source.images):
            limits.append((f"import_job.yolo.images[{index}].image", image.image, MAX_IMAGE_BYTES))
            if image.labels is not None:
                limits.append((f"import_job.yolo.images[{index}].labels", image.labels, MAX_LABEL_FILE_BYTES))
        return limits
    return [("import_job.mnist.images", source.images, mnist.MAX_IDX_BYTES), ("import_job.mnist.labels", source.labels, mnist.MAX_IDX_BYTES)]


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------


class JobService:
    """Import/export job RPCs of one annotation-store process (see the module docstring)."""

    def __init__(
        self,
        store: Any,
        *,
        chunk_size: int = 256,
        max_running: int = 2,
        prepare_workers: int = 4,
        progress_interval: float = 0.25,
        watch_poll_seconds: float = 1.0,
        stop_timeout: float = 30.0,
        lease_seconds: float = 30.0,
        owner: str = "",
        chunk_hook: ChunkHook | None = None,
    ) -> None:
        self.store = store
        self.options = JobOptions(chunk_size=chunk_size, prepare_workers=prepare_workers, chunk_hook=chunk_hook)
        self.jobs = JobStore(store.engine, jobs_table, job_name=job_name)
        self.runner = JobRunner(
            self.jobs,
            {IMPORT: ImportHandler(store, self.options), EXPORT: ExportHandler(store, self.options)},
            owner=owner,
            max_running=max_running,
            lease_seconds=lease_seconds,
            progress_interval=progress_interval,
            watch_poll_seconds=watch_poll_seconds,
            stop_timeout=stop_timeout,
            interrupted_message=INTERRUPTED_MESSAGE,
        )
        self._requests: collections.OrderedDict[str, Message] = collections.OrderedDict()

    # Tunables, read by the handlers at each job (tests make chunks small or hold a job at a chunk).
    @property
    def chunk_size(self) -> int:
        return self.options.chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        self.options.chunk_size = value

    @property
    def chunk_hook(self) -> Any:
        return self.options.chunk_hook

    @chunk_hook.setter
    def chunk_hook(self, hook: Any) -> None:
        self.options.chunk_hook = hook

    # ---- life cycle ------------------------------------------------------------
    async def start(self) -> None:
        """Start the runner: it ends or resumes what dead runners left (see core.jobs.runner)."""
        await self.runner.start()

    async def close(self) -> None:
        """Stop running jobs at their next chunk boundary (discarding an import's writes) and wait for them."""
        await self.runner.close()

    # ---- import RPCs -----------------------------------------------------------
    async def CreateImportJob(self, request: rpc.CreateImportJobRequest, context: Any = None) -> rpc.CreateImportJobResponse:
        # A manifest may list 100,000 files: checking it, and building the answer, happen off the event loop.
        dataset_id, kind, job = await asyncio.to_thread(self._prepare_import, request)
        record = await self._create(dataset_id, IMPORT, kind, job, request.request_id)
        return await asyncio.to_thread(lambda: rpc.CreateImportJobResponse(import_job=self._import_job(record)))

    def _prepare_import(self, request: rpc.CreateImportJobRequest) -> tuple[str, str, pb.ImportJob]:
        """The request checked in full (source, policy, uploaded blobs and their sizes), as the job to store."""
        dataset_id = names.parse_dataset(request.parent, "parent")
        source = import_source(request.import_job)
        policy = request.import_job.box_bounds_policy
        if policy not in POLICIES:
            raise errors.InvalidArgument("INVALID_BOX_BOUNDS_POLICY", f"import_job.box_bounds_policy: unknown value {policy}", {"field": "import_job.box_bounds_policy"})
        importers.check_source(source)
        sizes = self._check_blobs(dataset_id, source)
        kind = request.import_job.WhichOneof("source")
        job = pb.ImportJob(box_bounds_policy=policy)  # the input fields only
        getattr(job, kind).CopyFrom(getattr(request.import_job, kind))
        for file in _manifest_files(job):  # size_bytes is output only on import: the stored size
            file.size_bytes = sizes[file.sha256]
        return dataset_id, kind, job

    async def GetImportJob(self, request: rpc.GetImportJobRequest, context: Any = None) -> rpc.GetImportJobResponse:
        record = await self._get(IMPORT, request.name)
        return rpc.GetImportJobResponse(import_job=self._import_job(record))

    async def ListImportJobs(self, request: rpc.ListImportJobsRequest, context: Any = None) -> rpc.ListImportJobsResponse:
        records, token = await self._list(IMPORT, request.parent, request.page_size, request.page_token, request.filter)
        return rpc.ListImportJobsResponse(import_jobs=[self._import_job(r, compact=True) for r in records], next_page_token=token)

    async def CancelImportJob(self, request: rpc.CancelImportJobRequest, context: Any = None) -> rpc.CancelImportJobResponse:
        record = await self._cancel(IMPORT, request.name)
        return rpc.CancelImportJobResponse(import_job=self._import_job(record))

    async def WatchImportJob(self, request: rpc.WatchImportJobRequest, context: Any = None) -> AsyncIterator[rpc.WatchImportJobResponse]:
        async for record in self._watch(IMPORT, request.name):
            yield rpc.WatchImportJobResponse(import_job=self._import_job(record, compact=True))

    # ---- export RPCs -----------------------------------------------------------
    async def CreateExportJob(self, request: rpc.CreateExportJobRequest, context: Any = None) -> rpc.CreateExportJobResponse:
        dataset_id = names.parse_dataset(request.parent, "parent")
        given = request.export_job
        if given.format not in EXPORT_FORMATS:
            raise errors.InvalidArgument(
                "INVALID_EXPORT_FORMAT", "export_job.format: choose EXPORT_FORMAT_COCO or EXPORT_FORMAT_YOLO", {"field": "export_job.format"}
            )
        state = names.parse_version(given.version, "export_job.version")
        if state.dataset_id != dataset_id:
            raise errors.InvalidArgument(
                "VERSION_OF_OTHER_DATASET",
                f"export_job.version: {given.version!r} is not a version of {request.parent!r}",
                {"field": "export_job.version", "parent": request.parent},
            )
        version = await asyncio.to_thread(self.store.resolve_version, dataset_id, state.version)
        await asyncio.to_thread(self.store.count_items, dataset_id, version.version, given.filter)  # checks the filter
        job = pb.ExportJob(
            version=names.version_name(dataset_id, version.version), format=given.format, filter=given.filter, skip_images=given.skip_images
        )
        record = await self._create(dataset_id, EXPORT, EXPORT_FORMATS[given.format], job, request.request_id)
        return rpc.CreateExportJobResponse(export_job=self._export_job(record))

    async def GetExportJob(self, request: rpc.GetExportJobRequest, context: Any = None) -> rpc.GetExportJobResponse:
        record = await self._get(EXPORT, request.name)
        return rpc.GetExportJobResponse(export_job=self._export_job(record))

    async def ListExportJobs(self, request: rpc.ListExportJobsRequest, context: Any = None) -> rpc.ListExportJobsResponse:
        records, token = await self._list(EXPORT, request.parent, request.page_size, request.page_token, request.filter)
        return rpc.ListExportJobsResponse(export_jobs=[self._export_job(r) for r in records], next_page_token=token)

    async def CancelExportJob(self, request: rpc.CancelExportJobRequest, context: Any = None) -> rpc.CancelExportJobResponse:
        record = await self._cancel(EXPORT, request.name)
        return rpc.CancelExportJobResponse(export_job=self._export_job(record))

    async def WatchExportJob(self, request: rpc.WatchExportJobRequest, context: Any = None) -> AsyncIterator[rpc.WatchExportJobResponse]:
        async for record in self._watch(EXPORT, request.name):
            yield rpc.WatchExportJobResponse(export_job=self._export_job(record))

    # ---- shared RPC plumbing -----------------------------------------------------
    def _check_blobs(self, dataset_id: str, source: importers.ImportSource) -> dict[str, int]:
        """The dataset exists; every file is an uploaded blob within its size limit (one HEAD each).

        Returns the size of each blob by sha256."""
        self.store.get_dataset(dataset_id)
        sizes: dict[str, int] = {}
        for field, entry, limit in _size_limits(source):
            try:
                size = self.store.blobs.size(entry.sha256, f"{field}.sha256")
            except errors.NotFound as error:
                raise errors.FailedPrecondition(
                    "BLOB_NOT_FOUND",
                    f"{field}: {entry.path!r} (sha256 {entry.sha256}) has not been uploaded; upload it with UploadBlobs first",
                    {**error.metadata, "field": f"{field}.sha256", "path": entry.path},
                ) from None
            if size > limit:
                raise errors.InvalidArgument(
                    "FILE_TOO_LARGE",
                    f"{field}: {entry.path!r} has {size} bytes, at most {limit}",
                    {"field": field, "path": entry.path, "size": size, "limit": limit},
                )
            sizes[entry.sha256] = size
        return sizes

    async def _create(self, dataset_id: str, kind: str, format: str, job: Message, request_id: str) -> JobRecord:
        spec = await asyncio.to_thread(lambda: {"format": format, "job": _to_json(job)})
        record, created = await asyncio.to_thread(
            self.store.create_job, self.jobs, dataset_id, kind, spec, label=format, request_id=request_id, job_id=secrets.token_hex(8)
        )
        if created:
            self._remember_request(record.job_id, job)
            await self.runner.submit(record.job_id)
        return record

    async def _job_of(self, kind: str, name: str) -> tuple[str, str]:
        """``(parent, job id)`` of a job name whose dataset exists (DATASET_NOT_FOUND otherwise)."""
        dataset_id, job_id = names.parse_job(name, _COLLECTION[kind])
        await asyncio.to_thread(self.store.get_dataset, dataset_id)
        return names.dataset_name(dataset_id), job_id

    async def _get(self, kind: str, name: str) -> JobRecord:
        parent, job_id = await self._job_of(kind, name)
        return await asyncio.to_thread(self.jobs.get, kind, job_id, parent)

    async def _list(self, kind: str, parent: str, page_size: int, page_token: str, filter: str) -> tuple[list[JobRecord], str]:
        dataset_id = None if parent == "datasets/-" else names.parse_dataset(parent, "parent")
        page = PageRequest.parse(
            page_size, page_token, pagination.fingerprint(rpc=f"List{kind}Jobs", parent=parent, filter=filter),
            validate=pagination.values_of(pagination.is_time, pagination.is_str),
        )
        condition = _job_filter(filter, kind)
        if dataset_id is not None:
            await asyncio.to_thread(self.store.get_dataset, dataset_id)
        after = None if page.first else (page.cursor[0], page.cursor[1])
        records = await asyncio.to_thread(
            self.jobs.list, kind, None if dataset_id is None else names.dataset_name(dataset_id),
            condition=condition, after=after, limit=page.size + 1,
        )
        return page.finish(records, lambda last: [last.create_time, last.job_id])

    async def _cancel(self, kind: str, name: str) -> JobRecord:
        parent, job_id = await self._job_of(kind, name)
        return await self.runner.cancel(kind, job_id, parent)

    async def _watch(self, kind: str, name: str) -> AsyncIterator[JobRecord]:
        parent, job_id = await self._job_of(kind, name)
        async for record in self.runner.watch(kind, job_id, parent):
            yield record

    # ---- records -> protos ---------------------------------------------------------
    def _remember_request(self, job_id: str, job: Message) -> None:
        self._requests[job_id] = job
        self._requests.move_to_end(job_id)
        while len(self._requests) > 256:
            self._requests.popitem(last=False)

    def _request_of(self, record: JobRecord, empty: Message) -> Message:
        cached = self._requests.get(record.job_id)
        if cached is None:
            cached = request_of(record, empty)
            self._remember_request(record.job_id, cached)
        return cached

    @staticmethod
    def _common(job: Any, record: JobRecord) -> None:
        job.name = job_name(record.kind, record.parent, record.job_id)
        job.state = common_pb2.JobState.Value(record.state)
        progress = record.progress
        job.progress.CopyFrom(
            common_pb2.Progress(done=progress.done, total=progress.total, message=progress.message, update_time=_utc(record.update_time))
        )
        if record.error is not None:
            error = record.error
            job.error.CopyFrom(common_pb2.JobError(code=error.code, reason=error.reason, message=error.message, metadata=dict(error.metadata)))
        job.create_time.CopyFrom(_utc(record.create_time))
        if record.start_time is not None:
            job.start_time.CopyFrom(_utc(record.start_time))
        if record.end_time is not None:
            job.end_time.CopyFrom(_utc(record.end_time))

    def _import_job(self, record: JobRecord, *, compact: bool = False) -> pb.ImportJob:
        job = pb.ImportJob()
        job.CopyFrom(self._request_of(record, pb.ImportJob()))
        if compact and job.HasField("coco"):
            job.coco.ClearField("images")
        if compact and job.HasField("yolo"):
            job.yolo.ClearField("images")
        self._common(job, record)
        if record.result:
            json_format.ParseDict(dict(record.result), job.result)
        return job

    def _export_job(self, record: JobRecord) -> pb.ExportJob:
        job = pb.ExportJob()
        job.CopyFrom(self._request_of(record, pb.ExportJob()))
        self._common(job, record)
        if record.result:
            json_format.ParseDict(dict(record.result), job.result)
        return job


def _job_filter(text: str, kind: str) -> sa.ColumnElement[bool] | None:
    """The SQL condition of a List*Jobs filter over state, format and create_time."""
    node = filters.parse_filter(text, _JOB_FILTER_FIELDS)
    if node is None:
        return None

    def state(comparison: filters.Comparison) -> sa.ColumnElement[bool]:
        value = str(comparison.value).upper()
        value = value if value.startswith("JOB_STATE_") else f"JOB_STATE_{value}"
        if value not in common_pb2.JobState.keys():
            raise errors.InvalidArgument(
                filters.REASON,
                f"filter: unknown job state {comparison.value!r}; one of QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED",
                {"field": "filter", "position": comparison.position},
            )
        return filters.compare(jobs_table.c.state, comparison.op, value)

    def format(comparison: filters.Comparison) -> sa.ColumnElement[bool]:
        value = str(comparison.value)
        return filters.compare(jobs_table.c.label, comparison.op, value.upper() if kind == EXPORT else value.lower())

    return filters.to_sqlalchemy(node, {"state": state, "format": format, "create_time": jobs_table.c.create_time})
