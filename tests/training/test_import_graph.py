"""The training server process imports no torch, onnx or onnxruntime: only its worker processes do.

The gRPC server (job API, supervision, registry service) runs in a fresh interpreter through a
whole job (create, watch to the end, checkpoints, previews, the registered version's file) and an
import of a foreign ONNX generator, good and bad; then its ``sys.modules`` is read. The worker
trains (torch) and the ONNX check runs in a process of its own (onnx + onnxruntime), so a
training step never fights the server for the GIL and a hostile file never crashes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.training.conftest import training_settings
from tests.training.test_service import job_request

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "onnx", "onnxruntime", "onnxscript", "mlxtend", "sklearn")

_REPORT = f"""
import json, sys
print("HEAVY " + json.dumps(sorted({{name.split(".")[0] for name in sys.modules}} & set({list(HEAVY)!r}))))
"""

_SERVE_A_JOB = textwrap.dedent(
    """
    import asyncio, sys
    import grpc
    from simulacra_client.api.common.v1 import common_pb2
    from simulacra_client.api.training.v1 import model_registry_service_pb2 as reg
    from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as reg_grpc
    from simulacra_client.api.training.v1 import training_service_pb2 as rpc
    from simulacra_client.api.training.v1 import training_service_pb2_grpc as rpc_grpc
    from simulacra_client.channel import open_aio_channel
    from simulacra_services.core.config import Settings
    from simulacra_services.core.server import METRICS_OFF, ServiceServer
    from simulacra_services.services import definition

    async def main():
        server = ServiceServer(definition("training"), Settings.from_env(), port=0, metrics_port=METRICS_OFF)
        await server.start()
        async with open_aio_channel(server.address) as channel:
            jobs, registry = rpc_grpc.TrainingServiceStub(channel), reg_grpc.ModelRegistryServiceStub(channel)
            request = rpc.CreateTrainingJobRequest.FromString(bytes.fromhex(sys.argv[1]))
            name = (await jobs.CreateTrainingJob(request)).training_job.name
            async for response in jobs.WatchTrainingJob(rpc.WatchTrainingJobRequest(name=name), timeout=180):
                job = response.training_job
            assert job.state == common_pb2.JOB_STATE_SUCCEEDED, job.error
            assert (await jobs.ListCheckpoints(rpc.ListCheckpointsRequest(parent=name))).checkpoints
            kind = rpc.PREVIEW_KIND_LOSS_CURVE
            assert (await jobs.GetTrainingPreview(rpc.GetTrainingPreviewRequest(name=name, kind=kind))).png
            read = reg.ReadModelVersionFileRequest(name=job.model_version, file=reg.MODEL_VERSION_FILE_ONNX)
            onnx = b"".join([chunk.chunk async for chunk in registry.ReadModelVersionFile(read)])
            imported = await registry.ImportModelVersion(reg.ImportModelVersionRequest(
                model="models/imported", onnx=onnx, class_names=["a", "b", "c"]))
            assert imported.model_version.signature.latent_dim == 8, imported
            try:
                await registry.ImportModelVersion(reg.ImportModelVersionRequest(model="models/bad", onnx=b"not onnx"))
                raise AssertionError("a bad file was imported")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        await server.stop(1)
        print("SERVED")

    asyncio.run(main())
    """
)


def _heavy_imports(script: str, *args: str, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    done = subprocess.run([sys.executable, "-c", script + _REPORT, *args], capture_output=True, text=True, timeout=200,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("HEAVY ")]
    return json.loads(line.removeprefix("HEAVY ")), done.stdout


async def test_the_training_server_serves_a_whole_job_and_an_import_without_torch_or_onnx(annotation_store, tmp_path):
    version = await asyncio.to_thread(annotation_store.import_digits, "digits")
    settings = training_settings(annotation_store, tmp_path / "training")
    env = os.environ | settings.to_env() | {"SIMULACRA_TRAINING_THREADS": "1", "SIMULACRA_LOG_LEVEL": "WARNING"}
    request = job_request(version, model="digits").SerializeToString().hex()
    heavy, out = await asyncio.to_thread(_heavy_imports, _SERVE_A_JOB, request, env=env)
    assert "SERVED" in out  # the job trained (in its worker, with torch) and both imports were checked
    assert heavy == []


def test_the_check_sees_torch_and_onnx_when_a_server_module_imports_the_worker_side() -> None:
    # Guards the guard: a server module that imported the checkpoint or export code would bring
    # torch and onnx into the server, and this report must say so.
    heavy, _ = _heavy_imports("import simulacra_services.training.service\nimport simulacra_services.training.worker.pipeline\n")
    assert {"torch", "onnx"} <= set(heavy)
