"""Job life cycle on a real server: kill -9 of the worker (once, and three times in a row), cancel,
pause/resume, delete, quality gate."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path

import grpc
import pytest
import torch

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.training.v1 import model_registry_service_pb2 as reg
from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as reg_grpc
from simulacra_client.api.training.v1 import training_job_pb2 as pb
from simulacra_client.api.training.v1 import training_service_pb2 as rpc
from simulacra_client.api.training.v1 import training_service_pb2_grpc as rpc_grpc
from simulacra_services.core.storage import open_object_store
from tests.training.test_service import error_of, job_request, wait_end

LONG = dict(epochs=1000, max_steps=60, checkpoint_every_steps=10, preview_every_steps=0)


def worker_pids() -> list[int]:
    """Training workers started by this test process (the server runs in it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == os.getpid() and b"simulacra_services.training.worker" in cmdline:
            found.append(int(entry.name))
    return found


async def watch_until(stub, name: str, predicate) -> pb.TrainingJob:
    async for response in stub.WatchTrainingJob(rpc.WatchTrainingJobRequest(name=name), timeout=240):
        if predicate(response.training_job):
            return response.training_job
    raise AssertionError("the job ended before the condition held")


def history_steps(training, job: pb.TrainingJob) -> list[int]:
    objects = open_object_store(training.settings)
    key = f"training-jobs/{job.name.split('/')[1]}/checkpoints/{job.training_progress.step:010d}.pt"
    state = torch.load(io.BytesIO(objects.get(key)), weights_only=True)
    return [entry["step"] for entry in state["history"]]


async def test_kill_9_of_the_worker_resumes_from_the_checkpoint_with_the_same_result(training):
    version = await asyncio.to_thread(training.store.import_digits, "digits")
    stub = rpc_grpc.TrainingServiceStub(training.channel)
    straight = (await stub.CreateTrainingJob(job_request(version, model="straight", **LONG))).training_job
    straight = await wait_end(stub, straight.name)
    assert straight.state == common_pb2.JOB_STATE_SUCCEEDED and straight.attempt == 1

    created = (await stub.CreateTrainingJob(job_request(version, model="killed", **LONG))).training_job
    await watch_until(stub, created.name, lambda j: j.training_progress.latest_checkpoint != "")
    (pid,) = worker_pids()
    os.kill(pid, signal.SIGKILL)
    job = await wait_end(stub, created.name)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.attempt == 2
    assert job.training_progress.step == straight.training_progress.step == 60
    assert history_steps(training, job) == list(range(1, 61))  # one continuous loss history
    registry = reg_grpc.ModelRegistryServiceStub(training.channel)
    a = (await registry.GetModelVersion(reg.GetModelVersionRequest(name="models/straight/versions/1"))).model_version
    b = (await registry.GetModelVersion(reg.GetModelVersionRequest(name="models/killed/versions/1"))).model_version
    assert a.onnx_sha256 == b.onnx_sha256  # the same weights as the run nobody killed


async def new_worker(known: set[int]) -> int:
    for _ in range(2400):
        fresh = set(worker_pids()) - known
        if fresh:
            (pid,) = fresh
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError("no new worker process within 120 s")


async def test_a_worker_killed_three_times_in_a_row_fails_the_job_with_worker_crashed(training):
    version = await asyncio.to_thread(training.store.import_digits, "digits")
    stub = rpc_grpc.TrainingServiceStub(training.channel)
    # No checkpoint before the end: each worker is killed while it starts, so no attempt gets further.
    created = (await stub.CreateTrainingJob(job_request(version, model="crashing", **(LONG | dict(checkpoint_every_steps=1000))))).training_job
    killed: set[int] = set()
    for _ in range(3):
        pid = await new_worker(killed)
        os.kill(pid, signal.SIGKILL)
        killed.add(pid)
    job = await wait_end(stub, created.name)
    assert job.state == common_pb2.JOB_STATE_FAILED and job.attempt == 3
    assert (job.error.code, job.error.reason) == (grpc.StatusCode.ABORTED.value[0], "WORKER_CRASHED")
    assert "died 3 times in a row" in job.error.message and "exit -9" in job.error.message, job.error.message
    assert not set(worker_pids()) - killed  # no fourth attempt
    assert not job.model_version and not job.training_progress.latest_checkpoint
    registry = reg_grpc.ModelRegistryServiceStub(training.channel)
    error = await error_of(registry.GetModel(reg.GetModelRequest(name="models/crashing")))
    assert error.code == grpc.StatusCode.NOT_FOUND  # nothing half-registered
    objects = open_object_store(training.settings)
    assert not [o.key for o in objects.list(f"training-jobs/{created.name.split('/')[1]}/")]


async def test_cancel_pause_resume_and_delete(training):
    version = await asyncio.to_thread(training.store.import_digits, "digits")
    stub = rpc_grpc.TrainingServiceStub(training.channel)
    created = (await stub.CreateTrainingJob(job_request(version, model="paused", **LONG))).training_job
    await watch_until(stub, created.name, lambda j: j.training_progress.latest_checkpoint != "")
    await stub.PauseTrainingJob(rpc.PauseTrainingJobRequest(name=created.name))
    paused = await watch_until(stub, created.name, lambda j: j.state == common_pb2.JOB_STATE_PAUSED)
    assert 0 < paused.training_progress.step < 60 and not worker_pids()
    error = await error_of(stub.DeleteTrainingJob(rpc.DeleteTrainingJobRequest(name=created.name)))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION

    await stub.ResumeTrainingJob(rpc.ResumeTrainingJobRequest(name=created.name))
    job = await wait_end(stub, created.name)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED and job.attempt == 2 and job.training_progress.step == 60
    assert history_steps(training, job) == list(range(1, 61))

    cancelled = (await stub.CreateTrainingJob(job_request(version, model="cancelled", **LONG))).training_job
    await watch_until(stub, cancelled.name, lambda j: j.training_progress.latest_checkpoint != "")
    await stub.CancelTrainingJob(rpc.CancelTrainingJobRequest(name=cancelled.name))
    ended = await wait_end(stub, cancelled.name)
    assert ended.state == common_pb2.JOB_STATE_CANCELLED and not ended.model_version
    error = await error_of(stub.PauseTrainingJob(rpc.PauseTrainingJobRequest(name=cancelled.name)))
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION

    await stub.DeleteTrainingJob(rpc.DeleteTrainingJobRequest(name=cancelled.name))
    error = await error_of(stub.GetTrainingJob(rpc.GetTrainingJobRequest(name=cancelled.name)))
    assert error.code == grpc.StatusCode.NOT_FOUND
    objects = open_object_store(training.settings)
    assert not list(objects.list(f"training-jobs/{cancelled.name.split('/')[1]}/"))
    await stub.DeleteTrainingJob(rpc.DeleteTrainingJobRequest(name=job.name))
    registry = reg_grpc.ModelRegistryServiceStub(training.channel)
    registered = (await registry.GetModelVersion(reg.GetModelVersionRequest(name="models/paused/versions/1"))).model_version
    kept = [o.key for o in objects.list(f"training-jobs/{job.name.split('/')[1]}/")]
    assert kept == [registered.checkpoint.removesuffix(".pt") + ".json", registered.checkpoint]  # the version's provenance


async def test_the_quality_gate_keeps_a_bad_model_out_of_the_registry(training):
    version = await asyncio.to_thread(training.store.import_digits, "digits")
    stub = rpc_grpc.TrainingServiceStub(training.channel)
    request = job_request(version, model="gated")
    request.training_job.export.quality_gate.max_frechet_distance = 0.0  # nothing generated is that good
    request.training_job.export.quality_gate.max_memorization_rate = 1.0
    job = await wait_end(stub, (await stub.CreateTrainingJob(request)).training_job.name)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED and not job.quality_gate_passed and not job.model_version
    registry = reg_grpc.ModelRegistryServiceStub(training.channel)
    error = await error_of(registry.GetModel(reg.GetModelRequest(name="models/gated")))
    assert error.code == grpc.StatusCode.NOT_FOUND
    report = await stub.GetTrainingPreview(rpc.GetTrainingPreviewRequest(name=job.name, kind=rpc.PREVIEW_KIND_REPORT))
    assert report.png.startswith(b"\x89PNG")
