"""The import and export jobs' work, as ``core.jobs`` handlers: no RPCs, no job table here.

A job's spec is ``{"format": ..., "job": <the ImportJob/ExportJob request as protobuf JSON>}``
(``annotation/api/jobs.py`` makes it); the result is the ImportResult/ExportResult as protobuf
JSON. The work runs in a worker thread (database and object storage block) and talks to
its job through ``WorkContext``: progress, and a check between chunks that raises
``core.jobs.JobStopped`` when the job must stop.

Neither kind resumes: an import's partial writes are not a checkpoint. So a job whose
runner died is not run again: the runner that takes it over calls ``discard`` (an
import's writes are removed: ``store.discard_import``) and ends it FAILED with reason
INTERRUPTED; the same happens on a graceful stop. Cancelled and failed imports are
discarded the same way, so an import is all or nothing even under kill -9.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb

from simulacra_services.annotation.domain import identifiers, names
from simulacra_services.annotation.domain.model import AnnotationKind, BoxBoundsPolicy
from simulacra_services.annotation.formats import exporters, import_run, importers
from simulacra_services.annotation.formats.exporters import ExportOutput
from simulacra_services.annotation.persistence import blobs as blob_rules
from simulacra_services.core import errors
from simulacra_services.core.jobs import JobContext, JobRecord

IMPORT, EXPORT = "import", "export"
EXPORT_FORMATS = {pb.EXPORT_FORMAT_COCO: "COCO", pb.EXPORT_FORMAT_YOLO: "YOLO"}
POLICIES = {
    pb.BOX_BOUNDS_POLICY_UNSPECIFIED: BoxBoundsPolicy.REJECT,
    pb.BOX_BOUNDS_POLICY_REJECT: BoxBoundsPolicy.REJECT,
    pb.BOX_BOUNDS_POLICY_CLIP: BoxBoundsPolicy.CLIP,
}
_KIND_ENUM = {kind: pb.AnnotationKind.Value(f"ANNOTATION_KIND_{kind.name}") for kind in AnnotationKind}

ChunkHook = Callable[[str, str, int], None]
"""``(job id, phase, chunk)`` at every chunk boundary, before the stop check."""


class JobOptions:
    """Tunables shared by both handlers (tests make chunks small or hold a job with ``chunk_hook``)."""

    def __init__(self, *, chunk_size: int = 256, prepare_workers: int = 4, chunk_hook: ChunkHook | None = None) -> None:
        self.chunk_size = chunk_size
        self.prepare_workers = prepare_workers
        # Phases: "start", "check", "checked", "write", "export", "finish". None in production.
        self.chunk_hook = chunk_hook


class WorkContext:
    """What ``import_run.run_import`` and ``exporters.run_export`` see of their job, from a worker thread."""

    def __init__(self, ctx: JobContext, dataset_id: str, options: JobOptions) -> None:
        self.ctx = ctx
        self.job_id = ctx.job_id
        self.dataset_id = dataset_id
        self._options = options
        self._done = 0

    def checkpoint(self, phase: str, chunk: int) -> None:
        """Between chunks: the test hook, then stop here if the job must stop."""
        hook = self._options.chunk_hook
        if hook is not None:
            hook(self.job_id, phase, chunk)
        self.ctx.check()

    def progress(self, done: int, total: int, message: str, *, force: bool = False) -> None:
        self._done = max(done, self._done)  # progress never goes back
        self.ctx.progress_sync(self._done, total, message, force=force)

    def finished(self) -> None:
        """The last progress message of a job that succeeded."""
        self.ctx.progress_sync(self.ctx.current.done, self.ctx.current.total, "done", force=True)


def _entry(file: pb.ManifestFile, field: str) -> importers.ManifestEntry:
    identifiers.validate_relative_path(file.path, f"{field}.path")
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


def dataset_of(job: JobRecord) -> str:
    return job.parent.removeprefix("datasets/")


def request_of(job: JobRecord, message: Any) -> Any:
    """The job's request (an ImportJob or ExportJob message) from its spec."""
    json_format.ParseDict(job.spec["job"], message)
    return message


def to_json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class _ThreadedHandler(abc.ABC):
    """A job whose work runs in a worker thread, given its request message and its ``WorkContext``."""

    resumable = False
    REQUEST: type = pb.ImportJob

    def __init__(self, store: Any, options: JobOptions) -> None:
        self.store = store
        self.options = options

    async def run(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        return await asyncio.to_thread(self._start, job, ctx)

    def _start(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        context = WorkContext(ctx, dataset_of(job), self.options)
        context.checkpoint("start", 0)
        result = self.work(request_of(job, self.REQUEST()), context)
        context.finished()
        return to_json(result)

    @abc.abstractmethod
    def work(self, request: Any, context: WorkContext) -> Any:
        """The job's result message."""


class ImportHandler(_ThreadedHandler):
    """Runs import jobs (COCO, YOLO, MNIST) and discards what failed ones wrote."""

    REQUEST = pb.ImportJob

    def work(self, request: pb.ImportJob, context: WorkContext) -> pb.ImportResult:
        summary = import_run.run_import(
            self.store, context, import_source(request), POLICIES[request.box_bounds_policy],
            chunk_size=self.options.chunk_size, workers=self.options.prepare_workers,
        )
        return pb.ImportResult(
            items_created=summary.items_created,
            annotations_created=summary.annotations_created,
            categories_created=summary.categories_created,
            items_skipped=summary.items_skipped,
            warnings=summary.warnings,
        )

    async def discard(self, job: JobRecord) -> None:
        await asyncio.to_thread(self.store.discard_import, dataset_of(job), job.job_id)


class ExportHandler(_ThreadedHandler):
    """Runs export jobs (COCO, YOLO). An export writes only new blobs: nothing to discard."""

    REQUEST = pb.ExportJob

    def work(self, request: pb.ExportJob, context: WorkContext) -> pb.ExportResult:
        version = int(names.parse_version(request.version, "export_job.version").version or 0)
        output = exporters.run_export(
            self.store, context, version, EXPORT_FORMATS[request.format], filter=request.filter,
            skip_images=request.skip_images, chunk_size=self.options.chunk_size,
        )
        return export_result(output)


def export_result(output: ExportOutput) -> pb.ExportResult:
    return pb.ExportResult(
        files=[pb.ManifestFile(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes) for f in output.files],
        items_exported=output.items_exported,
        annotations_exported=output.annotations_exported,
        skipped=[
            pb.AnnotationKindCount(kind=_KIND_ENUM[kind], annotation_count=count)
            for kind, count in sorted(output.skipped.items(), key=lambda kv: kv[0].value)
        ],
    )
