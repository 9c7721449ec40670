"""The training service on a real server: jobs train, checkpoint, export, report and register."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.training.v1 import model_registry_service_pb2 as reg
from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as reg_grpc
from simulacra_client.api.training.v1 import training_job_pb2 as pb
from simulacra_client.api.training.v1 import training_service_pb2 as rpc
from simulacra_client.api.training.v1 import training_service_pb2_grpc as rpc_grpc
from simulacra_client.errors import from_rpc_error

TINY = dict(batch_size=8, max_steps=6, base_width=8, latent_dim=8, checkpoint_every_steps=2, preview_every_steps=3)


def job_request(version: str, model: str = "digits-gan", kind=pb.MODEL_KIND_GAN, **hp) -> rpc.CreateTrainingJobRequest:
    return rpc.CreateTrainingJobRequest(training_job=pb.TrainingJob(
        dataset_version=version, model_kind=kind, device_preference=pb.DEVICE_PREFERENCE_CPU,
        hyperparameters=pb.Hyperparameters(**(TINY | hp)),
        export=pb.ExportSpec(model=f"models/{model}", evaluation_sample_count=40, holdout_fraction=0.25),
    ))


async def wait_end(stub, name: str) -> pb.TrainingJob:
    last = None
    async for response in stub.WatchTrainingJob(rpc.WatchTrainingJobRequest(name=name), timeout=240):
        last = response.training_job
    return last


async def error_of(call) -> object:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


async def test_a_job_trains_checkpoints_exports_reports_and_registers(training):
    version = await asyncio.to_thread(training.store.import_digits, "digits")
    stub = rpc_grpc.TrainingServiceStub(training.channel)
    # The worker's r_v path, and LeCam's anchors through its checkpoints.
    request = job_request(version, kind=pb.MODEL_KIND_ENHANCED_GAN, ada_heuristic=pb.ADA_HEURISTIC_R_V, lecam_weight=0.25)
    created = (await stub.CreateTrainingJob(request)).training_job
    assert created.state == common_pb2.JOB_STATE_QUEUED and created.name.startswith("trainingJobs/")
    assert created.hyperparameters.batch_size == 8 and created.hyperparameters.ema_decay == pytest.approx(0.999)
    assert list(created.hyperparameters.diff_augment) == [1, 2, 3]  # the kind's default written back
    assert created.hyperparameters.ada_heuristic == pb.ADA_HEURISTIC_R_V
    assert created.hyperparameters.ada_target == pytest.approx(0.3)  # r_v's default target, written back
    assert created.hyperparameters.HasField("lecam_weight") and created.hyperparameters.lecam_weight == pytest.approx(0.25)

    job = await wait_end(stub, created.name)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert job.model_version == "models/digits-gan/versions/1" and job.quality_gate_passed
    assert job.training_progress.step == 6 and job.training_progress.total_steps == 6
    assert list(job.class_names) == ["0", "1", "2"] and list(job.category_ids) == [1, 2, 3]
    assert job.training_progress.train_examples + job.training_progress.holdout_examples == 36

    checkpoints = (await stub.ListCheckpoints(rpc.ListCheckpointsRequest(parent=created.name))).checkpoints
    assert [c.step for c in checkpoints] == [6, 4, 2] and all(len(c.sha256) == 64 for c in checkpoints)
    page = await stub.ListCheckpoints(rpc.ListCheckpointsRequest(parent=created.name, page_size=2))
    rest = await stub.ListCheckpoints(rpc.ListCheckpointsRequest(parent=created.name, page_size=2, page_token=page.next_page_token))
    assert [c.step for c in page.checkpoints] + [c.step for c in rest.checkpoints] == [6, 4, 2] and not rest.next_page_token

    for kind in (rpc.PREVIEW_KIND_SAMPLES, rpc.PREVIEW_KIND_LOSS_CURVE, rpc.PREVIEW_KIND_REPORT):
        preview = await stub.GetTrainingPreview(rpc.GetTrainingPreviewRequest(name=created.name, kind=kind))
        assert preview.png.startswith(b"\x89PNG")

    registry = reg_grpc.ModelRegistryServiceStub(training.channel)
    found = (await registry.GetModelVersion(reg.GetModelVersionRequest(name="models/digits-gan/versions/latest"))).model_version
    assert found.training_job == created.name and found.dataset_version == version
    assert found.signature.latent_dim == 8 and list(found.signature.class_names) == ["0", "1", "2"]
    assert found.model_kind == pb.MODEL_KIND_ENHANCED_GAN
    assert found.quality_report.fidelity.frechet_distance > 0 and found.quality_report.utility.trtr_accuracy > 0
    assert found.quality_report.onnx_parity_max_abs_diff < 1e-4
    onnx = b"".join([r.chunk async for r in registry.ReadModelVersionFile(reg.ReadModelVersionFileRequest(name=found.name))])
    assert len(onnx) == found.onnx_size_bytes

    listed = (await stub.ListTrainingJobs(rpc.ListTrainingJobsRequest(dataset_version=version))).training_jobs
    assert [j.name for j in listed] == [created.name]
    assert not (await stub.ListTrainingJobs(rpc.ListTrainingJobsRequest(state=common_pb2.JOB_STATE_FAILED))).training_jobs


async def test_bad_requests_get_precise_statuses(training):
    version = await asyncio.to_thread(training.store.import_digits, "digits")
    stub = rpc_grpc.TrainingServiceStub(training.channel)
    cases = [
        (job_request(version, batch_size=0), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_HYPERPARAMETER"),
        (job_request(version, image_height=4), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_HYPERPARAMETER"),
        (job_request(version, kind=pb.MODEL_KIND_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL_KIND"),
        (job_request(version, kind=42), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ENUM_VALUE"),
        (job_request(version, model="Bad_Name"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL_ID"),
        (job_request("datasets/digits/versions/9"), grpc.StatusCode.NOT_FOUND, "DATASET_VERSION_NOT_FOUND"),
        (job_request("datasets/nope/versions/1"), grpc.StatusCode.NOT_FOUND, "DATASET_VERSION_NOT_FOUND"),
        (job_request("datasets/x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"),
    ]
    for request, code, reason in cases:
        error = await error_of(stub.CreateTrainingJob(request))
        assert (error.code, error.reason) == (code, reason), (request.training_job.dataset_version, error)
    error = await error_of(stub.CreateTrainingJob(job_request(version, kind=pb.MODEL_KIND_ENHANCED_GAN, lecam_weight=-0.1)))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_HYPERPARAMETER")
    assert error.metadata["field"] == "hyperparameters.lecam_weight" and "-0.1" in error.message
    error = await error_of(stub.GetTrainingJob(rpc.GetTrainingJobRequest(name="trainingJobs/missing")))
    assert error.code == grpc.StatusCode.NOT_FOUND
    error = await error_of(stub.GetTrainingJob(rpc.GetTrainingJobRequest(name="jobs/x")))
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")
    registry = reg_grpc.ModelRegistryServiceStub(training.channel)
    error = await error_of(registry.GetModelVersion(reg.GetModelVersionRequest(name="models/none/versions/1")))
    assert error.code == grpc.StatusCode.NOT_FOUND


async def test_a_wrong_kind_dataset_fails_the_job_with_a_reason(training):
    version = await asyncio.to_thread(training.store.import_digits, "digits")
    stub = rpc_grpc.TrainingServiceStub(training.channel)
    request = job_request(version)
    request.training_job.data.crop_category_ids.append(1)  # digits have no boxes
    job = await wait_end(stub, (await stub.CreateTrainingJob(request)).training_job.name)
    assert job.state == common_pb2.JOB_STATE_FAILED
    assert (job.error.code, job.error.reason) == (grpc.StatusCode.FAILED_PRECONDITION.value[0], "DATASET_UNSUITABLE")


async def test_object_crops_with_attribute_conditioning(training):
    version = await asyncio.to_thread(training.store.import_scenes, "streets")
    stub = rpc_grpc.TrainingServiceStub(training.channel)
    request = job_request(version, model="street-objects", channels=3, image_height=16, image_width=16)
    request.training_job.data.crop_category_ids.extend([1, 2])
    request.training_job.data.attribute_keys.extend(["weather", "time"])
    job = await wait_end(stub, (await stub.CreateTrainingJob(request)).training_job.name)
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
    assert list(job.class_names) == ["car", "tree"] and list(job.category_ids) == [1, 2]
    assert job.training_progress.train_examples + job.training_progress.holdout_examples == 32  # two crops per scene
    assert [(a.name, list(a.values)) for a in job.attributes] == [("weather", ["clear", "fog"]), ("time", ["day", "night"])]

    registry = reg_grpc.ModelRegistryServiceStub(training.channel)
    version_record = (await registry.GetModelVersion(reg.GetModelVersionRequest(name=job.model_version))).model_version
    signature = version_record.signature
    assert (signature.channels, signature.height, signature.width, signature.num_classes) == (3, 16, 16, 2)
    assert [(a.name, list(a.values)) for a in signature.attributes] == [("weather", ["clear", "fog"]), ("time", ["day", "night"])]
    onnx = b"".join([r.chunk async for r in registry.ReadModelVersionFile(reg.ReadModelVersionFileRequest(name=job.model_version))])
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["z", "labels", "attributes"]
    feed = {"z": np.zeros((2, 8), np.float32), "labels": np.array([0, 1], np.int64),
            "attributes": np.array([[1, 1], [0, 0]], np.int64)}  # a foggy night car, a clear day tree
    assert session.run(None, feed)[0].shape == (2, 3, 16, 16)
