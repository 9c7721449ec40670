"""The training job handler for core.jobs: supervises the job's worker process and registers its model.

- Progress: worker events become ``ctx.progress`` (the job's TrainingProgress lives in
  ``progress.detail``) and ``ctx.save_checkpoint`` (the latest checkpoint's key and checksum).
- A stop (cancel, pause, service shutdown) is passed to the worker as SIGTERM: it checkpoints and
  exits, then ``ctx.check()`` raises and the runner records the state.
- A worker crash (kill -9, out of memory) releases the job to the queue: the runner claims it again
  with attempt + 1 and the new worker resumes from the latest checkpoint. After
  ``MAX_CRASHES`` crashes in a row without a new checkpoint the job fails (WORKER_CRASHED).
- At the end: the quality gate, then the registry. The registered version is saved in the job's
  checkpoint first, so a crash after registering never registers twice.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

from simulacra_services.core import errors
from simulacra_services.core.config import Settings
from simulacra_services.core.jobs.model import JobRecord
from simulacra_services.core.jobs.runner import JobContext, JobInterrupted
from simulacra_services.core.registry import ModelRegistry
from simulacra_services.core.storage import ObjectStore
from simulacra_services.training.jobs.registration import gate_failures, json_safe, register_result
from simulacra_services.training.jobs.supervisor import run_worker
from simulacra_services.training.worker import protocol

MAX_CRASHES = 3
_ERRORS = {
    "INVALID_ARGUMENT": errors.InvalidArgument,
    "NOT_FOUND": errors.NotFound,
    "FAILED_PRECONDITION": errors.FailedPrecondition,
    "PERMISSION_DENIED": errors.PermissionDenied,
    "RESOURCE_EXHAUSTED": errors.ResourceExhausted,
}


class TrainingJobHandler:
    resumable = True

    def __init__(self, objects: ObjectStore, registry: ModelRegistry, settings: Settings, *, threads: int = 0) -> None:
        self.objects = objects
        self.registry = registry
        self.env = os.environ | settings.to_env()
        if threads:
            self.env["SIMULACRA_TRAINING_THREADS"] = str(threads)

    async def run(self, job: JobRecord, ctx: JobContext) -> Mapping[str, Any]:
        saved = dict(ctx.checkpoint or {})
        if saved.get("result"):
            return saved["result"]  # registered before a crash: never twice
        detail = dict(job.progress.detail or {})
        detail["attempt"] = ctx.attempt
        done, total = job.progress.done, job.progress.total

        async def publish(force: bool = False) -> None:
            await ctx.progress(done, total, _message(detail), json_safe(detail), force=force)

        async def on_start(pid: int) -> None:
            detail["worker_pid"] = pid
            await publish(force=True)

        async def on_event(event: dict) -> None:
            nonlocal done, total, saved
            kind = event["type"]
            if kind == protocol.STAGE:
                detail["stage"] = event["stage"]
                await publish(force=True)
            elif kind == protocol.DATA:
                detail.update(train_examples=event["train"], holdout_examples=event["holdout"], skipped_items=event["skipped"],
                              class_names=event["class_names"], category_ids=event["category_ids"],
                              attributes=event["attributes"], device=event["device"])
                await publish(force=True)
            elif kind == protocol.PROGRESS:
                done, total = event["step"], event["total_steps"]
                detail.update(step=done, total_steps=total, epoch=event["epoch"], losses=event["losses"],
                              samples_per_second=event["samples_per_second"], eta_seconds=event["eta_seconds"])
                if "ada_p" in event["losses"]:
                    detail["ada_p"] = event["losses"]["ada_p"]
                await publish()
            elif kind == protocol.CHECKPOINT:
                info = {k: event[k] for k in ("step", "object_key", "sha256", "size_bytes")}
                saved = {"checkpoint": info, "crashes": 0}
                await ctx.save_checkpoint(saved)
                detail["latest_checkpoint"] = f"trainingJobs/{job.job_id}/checkpoints/{event['step']}"
                detail["best_checkpoint"] = f"trainingJobs/{job.job_id}/checkpoints/{event['best']['step']}"
                detail["best_frechet_distance"] = event["best"]["frechet_distance"]
                done = event["step"]
                detail["step"] = done
                await publish(force=True)
            elif kind == protocol.PREVIEW:
                detail.update(preview_object_key=event["grid_key"], loss_curve_object_key=event["loss_curve_key"],
                              preview_step=event["step"])
                await publish()

        request = {"job_id": job.job_id, "spec": dict(job.spec), "checkpoint": saved.get("checkpoint"), "attempt": ctx.attempt}
        exit_ = await run_worker(request, self.env, on_event, lambda: ctx.stop_requested, on_start)
        detail.pop("worker_pid", None)
        if exit_.crashed:
            ctx.check()  # stopped on request while it died: that request wins
            crashes = int(saved.get("crashes", 0)) + 1
            if crashes >= MAX_CRASHES:
                raise errors.Aborted("WORKER_CRASHED", f"the training worker died {crashes} times in a row (exit {exit_.returncode})",
                                      {"exit_code": str(exit_.returncode)})
            saved = dict(saved) | {"crashes": crashes}
            await ctx.save_checkpoint(saved)
            raise JobInterrupted()  # back to the queue: claimed again with attempt + 1, resumed from the checkpoint
        last = exit_.last
        if last["type"] == protocol.STOPPED:
            ctx.check()
            raise JobInterrupted()
        if last["type"] == protocol.ERROR:
            error_type = _ERRORS.get(last["code"], errors.FailedPrecondition)
            raise error_type(last["reason"], last["message"], {"dataset_version": job.spec["data"]["dataset_version"]})
        detail["stage"] = "REGISTERING"
        await publish(force=True)
        result = await asyncio.to_thread(self._register, job, detail, last)
        await ctx.save_checkpoint(dict(saved) | {"result": result})
        detail["stage"] = "DONE"
        await publish(force=True)
        return result

    def _register(self, job: JobRecord, detail: dict, last: dict) -> dict:
        import json

        report = json_safe(json.loads(self.objects.get(last["report_key"])))
        failures = gate_failures(report, dict(job.spec["export"].get("quality_gate") or {}))
        result = {
            "step": last["step"], "onnx_key": last["onnx_key"], "onnx_sha256": last["onnx_sha256"],
            "report_key": last["report_key"], "report_png_key": last["report_png_key"],
            "loss_curve_key": last["loss_curve_key"], "checkpoint": last["checkpoint"],
            "quality_gate_passed": not failures, "quality_gate_failures": failures, "model_version": "",
        }
        if not failures:
            record = register_result(self.registry, self.objects, job_id=job.job_id, spec=dict(job.spec), data=detail, result=last)
            result["model_version"] = record.name
        return result


def _message(detail: dict) -> str:
    stage = detail.get("stage", "QUEUED").lower().replace("_", " ")
    if "step" in detail and detail.get("stage") == "TRAINING":
        losses = ", ".join(f"{k} {v:.3f}" for k, v in sorted(detail.get("losses", {}).items()) if isinstance(v, float))
        return f"training: step {detail['step']}/{detail.get('total_steps', '?')} {losses}".strip()
    return stage
