"""Import and export jobs: long-running work as resources, run inside the service process.

``JobService`` answers the ten job RPCs for the servicer (one async method per
RPC, taking the request and the gRPC context; the Watch methods are async
generators) and runs the jobs.

Life of a job:

1. ``Create*Job`` checks the request completely before anything is stored:
   the dataset (and for exports the version) exists, every manifest path is a
   safe relative path listed once with a well-formed sha256 (else
   INVALID_ARGUMENT), every named blob has been uploaded (else
   FAILED_PRECONDITION, BLOB_NOT_FOUND) and is within its size limit, the
   source or format is known, an export filter parses. Then it stores a job
   row (QUEUED; a retry with the same ``request_id`` returns the same job) and
   starts the job as an asyncio task.
2. The task waits for one of ``max_running`` slots, then runs the work in a
   worker thread (database and object storage block) in chunks of
   ``chunk_size`` items. Between chunks it records progress (at most a few
   times a second) and checks whether the job was cancelled or the service is
   stopping.
3. An import first reads and checks everything (``importers`` plans it,
   ``prepare`` decodes each image and checks each annotation, chunk by chunk:
   the long part, counted in ``progress.done``) and only then writes: its
   categories, then the items in chunks, each chunk one transaction with the
   request id ``{job}-{chunk}`` (a retried chunk is never written twice).
   A cancel or failure during the write removes the chunks already written
   and the categories the job created, so a job that does not succeed leaves
   the working state as it found it. The job's row is QUEUED from its
   creation and leaves RUNNING/CANCELLING only after that undo, and
   ``store.commit_version`` refuses to commit while a row of an import of
   the dataset is in one of those states (IMPORT_IN_PROGRESS): no version
   ever holds part of an import.
4. It ends SUCCEEDED (with its result), CANCELLED, or FAILED with a
   ``JobError`` (code, stable reason, message, metadata naming file, record
   and field); an unexpected exception becomes INTERNAL with an error id
   that finds the stack trace in the service log, never the trace itself.

Watching: ``Watch*Job`` sends the job at once, then again whenever its row
changes (woken in-process by the job, and polling the row every
``watch_poll_seconds`` for changes made elsewhere), and ends after the
message with a terminal state; a job finished before the watch began yields
one message. Watch and List responses leave out the per-image manifest
lists of the source (``coco.images``, ``yolo.images``) to stay small; Get
and Create return the job in full.

Restarts: jobs run in the process that created them. At start-up
(``start()``) jobs left QUEUED or RUNNING by a previous process are marked
FAILED with reason INTERRUPTED (CANCELLING ones CANCELLED); on a graceful stop (``close()``)
running jobs stop at their next chunk boundary, undo their writes and end the
same way. Run such an import again: items already in the dataset under the
same file name and image are skipped, so nothing is duplicated. (A process
killed outright during an import's short write phase can leave the chunks it
had written; the re-run skips them.) Several replicas sharing one database
would need job leases before they could run jobs; this design assumes one
annotation-store process per database.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.common.v1 import common_pb2

from simulacra_services.annotation import blobs as blob_rules
from simulacra_services.annotation import exporters, filters, importers, mnist, names, validation, yolo
from simulacra_services.annotation.coco import MAX_COCO_BYTES
from simulacra_services.annotation.exporters import ExportOutput
from simulacra_services.annotation.model import AnnotationKind, BoxBoundsPolicy
from simulacra_services.annotation.records import JobRecord
from simulacra_services.annotation.tables import datasets as datasets_table
from simulacra_services.annotation.tables import jobs as jobs_table
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.pagination import PageRequest
from simulacra_services.core.db import transaction, utcnow

__all__ = ["JobService"]

_log = logging.getLogger("simulacra.annotation.jobs")

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED = (
    "JOB_STATE_QUEUED",
    "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLING",
    "JOB_STATE_CANCELLED",
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
IMPORT, EXPORT = "import", "export"
_COLLECTION = {IMPORT: "importJobs", EXPORT: "exportJobs"}
_EXPORT_FORMATS = {pb.EXPORT_FORMAT_COCO: "COCO", pb.EXPORT_FORMAT_YOLO: "YOLO"}
_POLICIES = {
    pb.BOX_BOUNDS_POLICY_UNSPECIFIED: BoxBoundsPolicy.REJECT,
    pb.BOX_BOUNDS_POLICY_REJECT: BoxBoundsPolicy.REJECT,
    pb.BOX_BOUNDS_POLICY_CLIP: BoxBoundsPolicy.CLIP,
}
_KIND_ENUM = {kind: pb.AnnotationKind.Value(f"ANNOTATION_KIND_{kind.name}") for kind in AnnotationKind}
_MAX_MESSAGE_CHARS = 1024  # the progress_message column
MAX_IMAGE_BYTES = blob_rules.MAX_IMAGE_BYTES
MAX_LABEL_FILE_BYTES = yolo.MAX_LABEL_FILE_BYTES
_JOB_FILTER_FIELDS = {
    "state": filters.FieldSpec(filters.FieldType.STRING),
    "format": filters.FieldSpec(filters.FieldType.STRING),
    "create_time": filters.FieldSpec(filters.FieldType.TIMESTAMP),
}
_INTERRUPTED_MESSAGE = "the annotation-store stopped while the job ran; its writes were undone or are skipped by a re-run: create the job again"


class _Cancelled(Exception):
    """The job was asked to stop (CancelImportJob/CancelExportJob)."""


class _Interrupted(Exception):
    """The service is stopping."""


def _utc(value: dt.datetime | None) -> Any:
    from google.protobuf import timestamp_pb2

    stamp = timestamp_pb2.Timestamp()
    if value is not None:
        stamp.FromDatetime(value.astimezone(dt.timezone.utc))
    return stamp


def _to_json(message: Message) -> str:
    return json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), separators=(",", ":"), sort_keys=True)


def _job_error(error: errors.SimulacraError) -> dict[str, Any]:
    return {"code": code_pb2.Code.Value(error.code.value), "reason": error.reason, "message": error.message, "metadata": dict(error.metadata)}


def _digest(message: Message) -> str:
    return hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()


# ---------------------------------------------------------------------------
# Requests -> domain sources (and their up-front checks)
# ---------------------------------------------------------------------------


def _entry(file: pb.ManifestFile, field: str) -> importers.ManifestEntry:
    validation.validate_relative_path(file.path, f"{field}.path")
    blob_rules.check_sha256(file.sha256, f"{field}.sha256")
    return importers.ManifestEntry(file.path, file.sha256)


def import_source(job: pb.ImportJob) -> importers.ImportSource:
    """The domain source of a request's ImportJob, with every path and digest checked."""
    which = job.WhichOneof("source")
    if which == "coco":
        coco = job.coco
        if not coco.HasField("annotations"):
            raise errors.InvalidArgument("MISSING_FILE", "import_job.coco.annotations: name the uploaded COCO JSON file", {"field": "import_job.coco.annotations"})
        return importers.CocoSource(
            _entry(coco.annotations, "import_job.coco.annotations"),
            tuple(_entry(f, f"import_job.coco.images[{i}]") for i, f in enumerate(coco.images)),
            coco.split,
        )
    if which == "yolo":
        images = []
        for index, image in enumerate(job.yolo.images):
            field = f"import_job.yolo.images[{index}]"
            labels = _entry(image.labels, f"{field}.labels") if image.HasField("labels") else None
            images.append(importers.YoloImage(_entry(image.image, f"{field}.image"), labels, image.split))
        return importers.YoloSource(tuple(job.yolo.class_names), tuple(images))
    if which == "mnist":
        source = job.mnist
        for name in ("images", "labels"):
            if not source.HasField(name):
                raise errors.InvalidArgument("MISSING_FILE", f"import_job.mnist.{name}: name the uploaded IDX file", {"field": f"import_job.mnist.{name}"})
        return importers.MnistSource(
            _entry(source.images, "import_job.mnist.images"), _entry(source.labels, "import_job.mnist.labels"), source.split, source.limit
        )
    raise errors.InvalidArgument(
        "MISSING_SOURCE", "import_job: set one source (coco, yolo or mnist)", {"field": "import_job.source"}
    )


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
    """Import/export jobs of one annotation-store process (see the module docstring)."""

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
        chunk_hook: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self.store = store
        self.chunk_size = chunk_size
        self.max_running = max_running
        self.prepare_workers = prepare_workers
        self.progress_interval = progress_interval
        self.watch_poll_seconds = watch_poll_seconds
        self.stop_timeout = stop_timeout
        # Called by the worker thread at every chunk boundary with (job id, phase, chunk number),
        # before the cancel check: phases "start", "check", "checked", "write", "export", "finish". For tests
        # that must stop a job at a known point; None in production.
        self.chunk_hook = chunk_hook
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started: set[str] = set()
        self._cancels: set[str] = set()
        self._cancels_lock = threading.Lock()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self._changed: asyncio.Event | None = None
        self._requests: collections.OrderedDict[str, Message] = collections.OrderedDict()

    # ---- life cycle ------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._slots = asyncio.Semaphore(self.max_running)
            self._changed = asyncio.Event()

    async def start(self) -> None:
        """Mark jobs a previous process left unfinished as FAILED (INTERRUPTED), or CANCELLED when asked to."""
        self._ensure_loop()
        left = await asyncio.to_thread(self.store.unfinished_jobs)
        for record in left:
            if record.cancel_requested:  # asked to stop before the process ended: that is what happened
                await asyncio.to_thread(self._finish, record.job_id, CANCELLED)
            else:
                await asyncio.to_thread(self._finish, record.job_id, FAILED, error=_interrupted_error())
        if left:
            _log.warning("marked %d unfinished job(s) of a previous run as FAILED (INTERRUPTED)", len(left))

    async def close(self) -> None:
        """Stop running jobs at their next chunk boundary (undoing their writes) and wait for them."""
        self._stopping.set()
        tasks = list(self._tasks.values())
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
            for task in pending:
                task.cancel()

    def _notify(self) -> None:
        """Wake every watcher (call on the event loop)."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _notify_threadsafe(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # the loop closed meanwhile
                pass

    # ---- import RPCs -----------------------------------------------------------
    async def CreateImportJob(self, request: rpc.CreateImportJobRequest, context: Any = None) -> rpc.CreateImportJobResponse:
        self._ensure_loop()
        dataset_id = names.parse_dataset(request.parent, "parent")
        source = import_source(request.import_job)
        policy = request.import_job.box_bounds_policy
        if policy not in _POLICIES:
            raise errors.InvalidArgument("INVALID_BOX_BOUNDS_POLICY", f"import_job.box_bounds_policy: unknown value {policy}", {"field": "import_job.box_bounds_policy"})
        importers.check_source(source)
        sizes = await asyncio.to_thread(self._check_blobs, dataset_id, source)
        kind = request.import_job.WhichOneof("source")
        job = pb.ImportJob(box_bounds_policy=policy)  # the input fields only
        getattr(job, kind).CopyFrom(getattr(request.import_job, kind))
        for file in _manifest_files(job):  # size_bytes is output only on import: the stored size
            file.size_bytes = sizes[file.sha256]
        record = await self._create(dataset_id, IMPORT, kind, job, request.request_id, request)
        return rpc.CreateImportJobResponse(import_job=self._import_job(record))

    async def GetImportJob(self, request: rpc.GetImportJobRequest, context: Any = None) -> rpc.GetImportJobResponse:
        dataset_id, job_id = names.parse_job(request.name, "importJobs")
        record = await asyncio.to_thread(self.store.get_job, dataset_id, IMPORT, job_id)
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
        self._ensure_loop()
        dataset_id = names.parse_dataset(request.parent, "parent")
        given = request.export_job
        if given.format not in _EXPORT_FORMATS:
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
        record = await self._create(dataset_id, EXPORT, _EXPORT_FORMATS[given.format], job, request.request_id, request)
        return rpc.CreateExportJobResponse(export_job=self._export_job(record))

    async def GetExportJob(self, request: rpc.GetExportJobRequest, context: Any = None) -> rpc.GetExportJobResponse:
        dataset_id, job_id = names.parse_job(request.name, "exportJobs")
        record = await asyncio.to_thread(self.store.get_job, dataset_id, EXPORT, job_id)
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

    async def _create(self, dataset_id: str, kind: str, format: str, job: Message, request_id: str, request: Message) -> JobRecord:
        payload = type(request)()
        payload.CopyFrom(request)
        payload.ClearField("request_id")
        record, created = await asyncio.to_thread(
            self.store.create_job,
            dataset_id,
            kind=kind,
            format=format,
            request=_to_json(job),
            request_id=request_id,
            payload_digest=_digest(payload),
            job_id=secrets.token_hex(8),
        )
        if created:
            self._remember_request(record.job_id, job)
            self._launch(record)
        return record

    def _launch(self, record: JobRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._run(record), name=f"{record.kind}-job-{record.job_id}")
        self._tasks[record.job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(record.job_id, None))

    async def _list(self, kind: str, parent: str, page_size: int, page_token: str, filter: str) -> tuple[list[JobRecord], str]:
        dataset_id = None if parent == "datasets/-" else names.parse_dataset(parent, "parent")
        page = PageRequest.parse(
            page_size, page_token, pagination.fingerprint(rpc=f"List{kind}Jobs", parent=parent, filter=filter),
            validate=pagination.values_of(pagination.is_time, pagination.is_str),
        )
        condition = _job_filter(filter, kind)
        after = None if page.first else (page.cursor[0], page.cursor[1])
        records = await asyncio.to_thread(
            self.store.list_jobs, dataset_id, kind, condition=condition, after=after, limit=page.size + 1
        )
        return page.finish(records, lambda last: [last.create_time, last.job_id])

    async def _cancel(self, kind: str, name: str) -> JobRecord:
        dataset_id, job_id = names.parse_job(name, _COLLECTION[kind])
        record = await asyncio.to_thread(self.store.request_job_cancel, dataset_id, kind, job_id)
        if record.state not in TERMINAL:
            with self._cancels_lock:
                self._cancels.add(job_id)
            if job_id not in self._started:
                # Still waiting for a slot (or not run by this process): it has done nothing, end it now.
                task = self._tasks.get(job_id)
                if task is not None:
                    task.cancel()
                record = await asyncio.to_thread(self._finish, job_id, CANCELLED) or record
        self._notify()
        return record

    async def _watch(self, kind: str, name: str) -> AsyncIterator[JobRecord]:
        self._ensure_loop()
        dataset_id, job_id = names.parse_job(name, _COLLECTION[kind])
        last = None
        while True:
            changed = self._changed
            record = await asyncio.to_thread(self._status, dataset_id, kind, job_id)
            key = (record.state, record.progress_done, record.progress_total, record.progress_message, record.error, record.result)
            if key != last:
                last = key
                yield record
            if record.state in TERMINAL:
                return
            assert changed is not None
            try:
                await asyncio.wait_for(changed.wait(), self.watch_poll_seconds)
            except asyncio.TimeoutError:
                pass

    def _status(self, dataset_id: str, kind: str, job_id: str) -> JobRecord:
        """The job's row without its request text (which may be large): what watching needs."""
        columns = [c for c in jobs_table.c if c.name not in ("request", "dataset")]
        with self.store.engine.connect() as conn:
            row = conn.execute(
                sa.select(*columns, datasets_table.c.dataset_id)
                .join(datasets_table, jobs_table.c.dataset == datasets_table.c.id)
                .where(jobs_table.c.job_id == job_id, jobs_table.c.kind == kind, datasets_table.c.dataset_id == dataset_id)
            ).first()
        if row is None:
            return self.store.get_job(dataset_id, kind, job_id)  # raises the store's JOB_NOT_FOUND (or DATASET_NOT_FOUND)
        values = dict(row._mapping)
        values["request"] = ""
        values["progress_done"] = int(values["progress_done"])
        values["progress_total"] = int(values["progress_total"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return JobRecord(**values)

    # ---- records -> protos ---------------------------------------------------------
    def _remember_request(self, job_id: str, job: Message) -> None:
        self._requests[job_id] = job
        self._requests.move_to_end(job_id)
        while len(self._requests) > 256:
            self._requests.popitem(last=False)

    def _request_of(self, record: JobRecord, empty: Message) -> Message:
        cached = self._requests.get(record.job_id)
        if cached is None:
            text = record.request or self.store.get_job(record.dataset_id, record.kind, record.job_id).request
            cached = type(empty)()
            json_format.ParseDict(json.loads(text), cached)
            self._remember_request(record.job_id, cached)
        return cached

    def _common(self, job: Any, record: JobRecord) -> None:
        job.name = f"datasets/{record.dataset_id}/{_COLLECTION[record.kind]}/{record.job_id}"
        job.state = common_pb2.JobState.Value(record.state)
        job.progress.CopyFrom(
            common_pb2.Progress(done=record.progress_done, total=record.progress_total, message=record.progress_message, update_time=_utc(record.update_time))
        )
        if record.error:
            error = json.loads(record.error)
            job.error.CopyFrom(common_pb2.JobError(code=error["code"], reason=error["reason"], message=error["message"], metadata=error.get("metadata", {})))
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
            json_format.ParseDict(json.loads(record.result), job.result)
        return job

    def _export_job(self, record: JobRecord) -> pb.ExportJob:
        job = pb.ExportJob()
        job.CopyFrom(self._request_of(record, pb.ExportJob()))
        self._common(job, record)
        if record.result:
            json_format.ParseDict(json.loads(record.result), job.result)
        return job

    # ---- running ---------------------------------------------------------------------
    async def _run(self, record: JobRecord) -> None:
        assert self._slots is not None
        try:
            async with self._slots:
                self._started.add(record.job_id)
                await asyncio.to_thread(self._work, record)
        finally:
            self._started.discard(record.job_id)
            with self._cancels_lock:
                self._cancels.discard(record.job_id)
            self._notify()

    def _work(self, record: JobRecord) -> None:
        """A job from start to end state, in a worker thread; never raises."""
        job_id = record.job_id
        context = _JobContext(self, record)
        try:
            context.checkpoint("start", 0)
            self._mark_running(job_id)
            result = self._import(context, record) if record.kind == IMPORT else self._export(context, record)
            self._finish(job_id, SUCCEEDED, result=_to_json(result), progress=context.final_progress("done"))
        except _Cancelled:
            self._finish(job_id, CANCELLED, progress=context.final_progress("cancelled"))
        except _Interrupted:
            self._finish(job_id, FAILED, error=_interrupted_error())
        except errors.SimulacraError as error:
            self._finish(job_id, FAILED, error=_job_error(error))
        except Exception:
            error_id = secrets.token_hex(8)
            _log.exception("job %s failed unexpectedly (error id %s)", job_id, error_id)
            self._finish(
                job_id,
                FAILED,
                error={
                    "code": code_pb2.INTERNAL,
                    "reason": "INTERNAL",
                    "message": f"the job failed on an internal error; the service log has the details under error id {error_id}",
                    "metadata": {"error_id": error_id},
                },
            )

    def _mark_running(self, job_id: str) -> None:
        """QUEUED -> RUNNING (a job already CANCELLING keeps that state)."""
        now = utcnow()
        with transaction(self.store.engine) as conn:
            conn.execute(
                sa.update(jobs_table)
                .where(jobs_table.c.job_id == job_id)
                .values(
                    state=sa.case((jobs_table.c.state == QUEUED, RUNNING), else_=jobs_table.c.state),
                    start_time=now,
                    update_time=now,
                    progress_message="starting",
                )
            )
        self._notify_threadsafe()

    def _set_progress(self, job_id: str, progress: dict[str, Any]) -> None:
        """Write progress only (a small update: the row's request text may be large)."""
        with transaction(self.store.engine) as conn:
            conn.execute(sa.update(jobs_table).where(jobs_table.c.job_id == job_id).values(update_time=utcnow(), **progress))
        self._notify_threadsafe()

    def _finish(self, job_id: str, state: str, *, error: dict[str, Any] | None = None, result: str = "", progress: dict[str, Any] | None = None) -> JobRecord | None:
        fields: dict[str, Any] = {"state": state, "end_time": utcnow(), **(progress or {})}
        if error is not None:
            fields["error"] = json.dumps(error, separators=(",", ":"))
        if result:
            fields["result"] = result
        try:
            record = self.store.update_job(job_id, **fields)
        except errors.NotFound:
            return None
        self._notify_threadsafe()
        return record

    def _import(self, context: _JobContext, record: JobRecord) -> pb.ImportResult:
        job = self._request_of(record, pb.ImportJob())
        assert isinstance(job, pb.ImportJob)
        summary = importers.run_import(
            self.store, context, import_source(job), _POLICIES[job.box_bounds_policy], chunk_size=self.chunk_size, workers=self.prepare_workers
        )
        return pb.ImportResult(
            items_created=summary.items_created,
            annotations_created=summary.annotations_created,
            categories_created=summary.categories_created,
            items_skipped=summary.items_skipped,
            warnings=summary.warnings,
        )

    def _export(self, context: _JobContext, record: JobRecord) -> pb.ExportResult:
        job = self._request_of(record, pb.ExportJob())
        assert isinstance(job, pb.ExportJob)
        version = int(names.parse_version(job.version, "export_job.version").version or 0)
        output = exporters.run_export(
            self.store, context, version, _EXPORT_FORMATS[job.format], filter=job.filter, skip_images=job.skip_images, chunk_size=self.chunk_size
        )
        return _export_result(output)

    def cancel_requested(self, job_id: str) -> bool:
        with self._cancels_lock:
            if job_id in self._cancels:
                return True
        with self.store.engine.connect() as conn:
            flag = conn.execute(sa.select(jobs_table.c.cancel_requested).where(jobs_table.c.job_id == job_id)).scalar()
        return bool(flag)

class _JobContext:
    """What a running job's worker thread uses to report progress and to learn that it must stop."""

    def __init__(self, service: JobService, record: JobRecord) -> None:
        self.service = service
        self.job_id = record.job_id
        self.dataset_id = record.dataset_id
        self._last_write = 0.0
        self._done = 0
        self._total = 0
        self._message = ""

    def checkpoint(self, phase: str, chunk: int) -> None:
        """Between chunks: stop here if the job was cancelled or the service is stopping."""
        if self.service.chunk_hook is not None:
            self.service.chunk_hook(self.job_id, phase, chunk)
        if self.service._stopping.is_set():
            raise _Interrupted()
        if self.service.cancel_requested(self.job_id):
            raise _Cancelled()

    def progress(self, done: int, total: int, message: str, *, force: bool = False) -> None:
        """Record progress; written at most every ``progress_interval`` seconds unless forced."""
        self._done, self._total, self._message = max(done, self._done), total, message[:_MAX_MESSAGE_CHARS]
        now = time.monotonic()
        if force or now - self._last_write >= self.service.progress_interval:
            self._last_write = now
            self.service._set_progress(self.job_id, self.final_progress())

    def final_progress(self, message: str | None = None) -> dict[str, Any]:
        text = self._message if message is None else message
        if message is None and self._total and self._done >= self._total:
            text = "done"
        return {"progress_done": self._done, "progress_total": self._total, "progress_message": text[:_MAX_MESSAGE_CHARS]}


def _interrupted_error() -> dict[str, Any]:
    return {"code": code_pb2.ABORTED, "reason": "INTERRUPTED", "message": _INTERRUPTED_MESSAGE, "metadata": {}}


def _export_result(output: ExportOutput) -> pb.ExportResult:
    return pb.ExportResult(
        files=[pb.ManifestFile(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes) for f in output.files],
        items_exported=output.items_exported,
        annotations_exported=output.annotations_exported,
        skipped=[pb.AnnotationKindCount(kind=_KIND_ENUM[kind], annotation_count=count) for kind, count in sorted(output.skipped.items(), key=lambda kv: kv[0].value)],
    )


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
        return filters.compare(jobs_table.c.format, comparison.op, value.upper() if kind == EXPORT else value.lower())

    return filters.to_sqlalchemy(node, {"state": state, "format": format, "create_time": jobs_table.c.create_time})

