"""The same job over the production pair: checkpoints and the registry on S3 (SeaweedFS), jobs on PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.training.v1 import model_registry_service_pb2 as reg
from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as reg_grpc
from simulacra_client.api.training.v1 import training_service_pb2 as rpc
from simulacra_client.api.training.v1 import training_service_pb2_grpc as rpc_grpc
from simulacra_services.core.storage import open_object_store
from tests.harness import S3, backend_settings, running_service
from tests.training.test_service import job_request, wait_end


@pytest.mark.postgres
@pytest.mark.s3
async def test_a_job_on_s3_and_postgresql(request, annotation_store, tmp_path):
    from simulacra_services.training.service import DEFINITION

    version = await asyncio.to_thread(annotation_store.import_digits, "digits")
    settings = backend_settings(request, tmp_path, S3, annotation_address=annotation_store.address)
    async with running_service(DEFINITION, settings, worker_threads=1, lease_seconds=3.0) as service:
        stub = rpc_grpc.TrainingServiceStub(service.channel)
        job = await wait_end(stub, (await stub.CreateTrainingJob(job_request(version, model="on-s3"))).training_job.name)
        assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
        checkpoints = (await stub.ListCheckpoints(rpc.ListCheckpointsRequest(parent=job.name))).checkpoints
        assert [c.step for c in checkpoints] == [6, 4, 2]
        registry = reg_grpc.ModelRegistryServiceStub(service.channel)
        version_record = (await registry.GetModelVersion(reg.GetModelVersionRequest(name="models/on-s3/versions/1"))).model_version
        objects = open_object_store(settings)
        try:
            assert objects.head(version_record.onnx_object_key).size == version_record.onnx_size_bytes
            assert objects.exists(checkpoints[0].object_key)
        finally:
            objects.close()
