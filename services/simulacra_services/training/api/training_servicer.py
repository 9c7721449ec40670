"""TrainingService: each RPC validates, calls the jobs layer, converts the result."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from simulacra_client.annotation import AnnotationClient
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.training.v1 import training_job_pb2 as pb
from simulacra_client.api.training.v1 import training_service_pb2 as rpc
from simulacra_client.api.training.v1 import training_service_pb2_grpc as rpc_grpc
from simulacra_client.errors import SimulacraRpcError
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.enums import known_enum
from simulacra_services.core.api.names import NamePattern
from simulacra_services.core.jobs.runner import JobRunner
from simulacra_services.core.jobs.store import JobStore
from simulacra_services.core.storage import ObjectStore
from simulacra_services.training.api import convert
from simulacra_services.training.jobs.spec import KIND, build_spec
from simulacra_services.training.layout import job_prefix, list_checkpoints, sidecar_key

JOB = NamePattern("trainingJobs/{job}", job=r"[a-z0-9][a-z0-9-]{0,62}")
MAX_PREVIEW_BYTES = 16 * 1024 * 1024


class TrainingServicer(rpc_grpc.TrainingServiceServicer):
    def __init__(self, runner: JobRunner, store: JobStore, objects: ObjectStore, annotation: AnnotationClient) -> None:
        self.runner = runner
        self.store = store
        self.objects = objects
        self.annotation = annotation

    # ---- helpers -----------------------------------------------------------------------------
    def _job_id(self, name: str, field: str = "name") -> str:
        return JOB.parse(name, field=field)["job"]

    async def _record(self, name: str, field: str = "name"):
        return await asyncio.to_thread(self.store.get, KIND, self._job_id(name, field))

    def _resolve_version(self, dataset_version: str) -> str:
        """The version's numbered name; NOT_FOUND / FAILED_PRECONDITION (empty) / UNAVAILABLE."""
        try:
            version = self.annotation.get_version(dataset_version)
        except SimulacraRpcError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                raise errors.NotFound("DATASET_VERSION_NOT_FOUND", f"dataset version {dataset_version!r} does not exist",
                                      {"dataset_version": dataset_version}) from None
            if error.code == grpc.StatusCode.INVALID_ARGUMENT:
                raise errors.InvalidArgument("INVALID_NAME", f"training_job.dataset_version: {error.message}",
                                             {"field": "training_job.dataset_version"}) from None
            raise errors.Unavailable("ANNOTATION_STORE_UNAVAILABLE", f"the annotation-store did not answer: {error.message}",
                                     {}) from None
        if version.item_count == 0:
            raise errors.FailedPrecondition("EMPTY_DATASET", f"dataset version {version.name!r} has no items",
                                            {"dataset_version": version.name})
        return version.name

    # ---- RPCs ----------------------------------------------------------------------------------
    async def CreateTrainingJob(self, request: rpc.CreateTrainingJobRequest, context: Any) -> rpc.CreateTrainingJobResponse:
        spec = build_spec(**convert.spec_in(request.training_job))
        resolved = await asyncio.to_thread(self._resolve_version, spec["data"]["dataset_version"])
        spec["data"]["dataset_version"] = resolved
        record, _ = await self.runner.create(KIND, spec, parent=resolved, request_id=request.request_id)
        return rpc.CreateTrainingJobResponse(training_job=convert.training_job(record))

    async def GetTrainingJob(self, request: rpc.GetTrainingJobRequest, context: Any) -> rpc.GetTrainingJobResponse:
        return rpc.GetTrainingJobResponse(training_job=convert.training_job(await self._record(request.name)))

    async def ListTrainingJobs(self, request: rpc.ListTrainingJobsRequest, context: Any) -> rpc.ListTrainingJobsResponse:
        known_enum(request.state, common_pb2.JobState, "state")
        fingerprint = pagination.fingerprint(rpc="ListTrainingJobs", state=request.state, dataset_version=request.dataset_version)
        page = pagination.PageRequest.parse(request.page_size, request.page_token, fingerprint,
                                            validate=pagination.values_of(pagination.is_time, pagination.is_str))
        states = [common_pb2.JobState.Name(request.state)] if request.state else None
        after = tuple(page.cursor) if page.cursor else None
        rows = await asyncio.to_thread(self.store.list, KIND, request.dataset_version or None, states=states, after=after,
                                       limit=page.size + 1)
        records, token = page.finish(rows, lambda r: [r.create_time, r.job_id])
        return rpc.ListTrainingJobsResponse(training_jobs=[convert.training_job(r) for r in records], next_page_token=token)

    async def CancelTrainingJob(self, request: rpc.CancelTrainingJobRequest, context: Any) -> rpc.CancelTrainingJobResponse:
        record = await self._record(request.name)
        if not record.terminal:
            record = await self.runner.cancel(KIND, record.job_id)
        return rpc.CancelTrainingJobResponse(training_job=convert.training_job(record))

    async def PauseTrainingJob(self, request: rpc.PauseTrainingJobRequest, context: Any) -> rpc.PauseTrainingJobResponse:
        record = await self.runner.pause(KIND, self._job_id(request.name))
        return rpc.PauseTrainingJobResponse(training_job=convert.training_job(record))

    async def ResumeTrainingJob(self, request: rpc.ResumeTrainingJobRequest, context: Any) -> rpc.ResumeTrainingJobResponse:
        record = await self.runner.resume(KIND, self._job_id(request.name), ended=True)
        return rpc.ResumeTrainingJobResponse(training_job=convert.training_job(record))

    async def DeleteTrainingJob(self, request: rpc.DeleteTrainingJobRequest, context: Any) -> rpc.DeleteTrainingJobResponse:
        record = await self._record(request.name)
        await asyncio.to_thread(self.store.delete, KIND, record.job_id)
        await asyncio.to_thread(self._delete_objects, record)
        return rpc.DeleteTrainingJobResponse()

    def _delete_objects(self, record) -> None:
        """Everything the job wrote, except the checkpoint a registered version names as its provenance."""
        keep = set()
        if record.result.get("model_version") and record.result.get("checkpoint"):
            keep = {record.result["checkpoint"], sidecar_key(record.result["checkpoint"])}
        for info in list(self.objects.list(job_prefix(record.job_id) + "/")):
            if info.key not in keep:
                self.objects.delete(info.key)

    async def WatchTrainingJob(self, request: rpc.WatchTrainingJobRequest, context: Any):
        job_id = self._job_id(request.name)
        async for record in self.runner.watch(KIND, job_id):
            yield rpc.WatchTrainingJobResponse(training_job=convert.training_job(record))

    async def ListCheckpoints(self, request: rpc.ListCheckpointsRequest, context: Any) -> rpc.ListCheckpointsResponse:
        record = await self._record(request.parent, "parent")
        fingerprint = pagination.fingerprint(rpc="ListCheckpoints", parent=request.parent)
        page = pagination.PageRequest.parse(request.page_size, request.page_token, fingerprint, validate=pagination.is_int)
        sidecars = await asyncio.to_thread(list_checkpoints, self.objects, job_prefix(record.job_id))
        if page.cursor is not None:
            sidecars = [s for s in sidecars if s["step"] < page.cursor]
        rows, token = page.finish(sidecars[: page.size + 1], lambda s: s["step"])
        return rpc.ListCheckpointsResponse(
            checkpoints=[
                pb.Checkpoint(
                    name=f"{convert.job_name(record.job_id)}/checkpoints/{s['step']}", step=s["step"], epoch=s.get("epoch", 0),
                    object_key=s["object_key"], sha256=s["sha256"], size_bytes=s["size_bytes"],
                    losses={k: float(v) for k, v in s.get("losses", {}).items() if isinstance(v, (int, float))},
                    create_time=convert._iso(s.get("create_time", "")),
                )
                for s in rows
            ],
            next_page_token=token,
        )

    async def GetTrainingPreview(self, request: rpc.GetTrainingPreviewRequest, context: Any) -> rpc.GetTrainingPreviewResponse:
        known_enum(request.kind, rpc.PreviewKind, "kind")
        record = await self._record(request.name)
        detail, result = dict(record.progress.detail or {}), dict(record.result or {})
        kind = request.kind or rpc.PREVIEW_KIND_SAMPLES
        if kind == rpc.PREVIEW_KIND_SAMPLES:
            key, step = detail.get("preview_object_key", ""), detail.get("preview_step", 0)
        elif kind == rpc.PREVIEW_KIND_LOSS_CURVE:
            key, step = result.get("loss_curve_key") or detail.get("loss_curve_object_key", ""), detail.get("step", 0)
        else:
            key, step = result.get("report_png_key", ""), result.get("step", 0)
        if not key:
            raise errors.NotFound("PREVIEW_NOT_FOUND", f"{request.name} has no {rpc.PreviewKind.Name(kind)} picture yet",
                                  {"name": request.name})
        data = await asyncio.to_thread(self.objects.get, key)
        if len(data) > MAX_PREVIEW_BYTES:
            raise errors.ResourceExhausted("PREVIEW_TOO_LARGE", f"the picture has {len(data)} bytes", {"object_key": key})
        return rpc.GetTrainingPreviewResponse(png=data, step=int(step), object_key=key)
