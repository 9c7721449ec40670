"""The SDK's TrainingClient and the `simulacra train` / `simulacra generators` commands on a real server."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import onnxruntime
import pytest

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.training.v1 import training_job_pb2 as pb
from simulacra_client.errors import SimulacraRpcError
from simulacra_client.training import TrainingClient, model_version_name
from simulacra_services.cli.main import main as cli

TINY = {"batch_size": 8, "max_steps": 4, "base_width": 8, "latent_dim": 8, "checkpoint_every_steps": 2, "preview_every_steps": 2}


def test_model_version_names():
    assert model_version_name("m@3") == "models/m/versions/3"
    assert model_version_name("m") == "models/m/versions/latest"
    assert model_version_name("m@prod") == "models/m/versions/prod"
    assert model_version_name("models/m/versions/2") == "models/m/versions/2"


HP = TINY | {"loss": "nonsaturating", "r1_gamma": 1.0, "ada_heuristic": "r_v"}  # names, as the CLI's --set gives them


def _client_flow(address: str, version: str) -> None:
    with TrainingClient(address) as client:
        job = client.create_job(version, "enhanced_gan", model="digits", hyperparameters=HP,
                                device="cpu", evaluation_sample_count=30, holdout_fraction=0.25, request_id="once")
        again = client.create_job(version, "enhanced_gan", model="digits", hyperparameters=HP,
                                  device="cpu", evaluation_sample_count=30, holdout_fraction=0.25, request_id="once")
        assert again.name == job.name  # the request id made the retry idempotent
        assert job.hyperparameters.ada_heuristic == pb.ADA_HEURISTIC_R_V and job.hyperparameters.loss == pb.GAN_LOSS_NON_SATURATING
        seen = []
        done = client.wait_job(job.name, progress=seen.append)
        assert done.state == common_pb2.JOB_STATE_SUCCEEDED and seen[-1].state == done.state
        assert [c.step for c in client.list_checkpoints(job.name)] == [4, 2]
        assert client.preview(job.name, "loss_curve").startswith(b"\x89PNG")
        assert [j.name for j in client.list_jobs(state=common_pb2.JOB_STATE_SUCCEEDED)] == [job.name]

        version_record = client.get_version("digits")
        assert version_record.name == done.model_version == "models/digits/versions/1"
        model = client.get_model("digits")
        client.set_alias("digits", "production", 1, etag=model.etag)
        with pytest.raises(SimulacraRpcError) as stale:
            client.set_alias("digits", "staging", 1, etag=model.etag)  # the etag moved with the first alias
        assert stale.value.code == grpc.StatusCode.ABORTED
        assert client.get_version("digits@production").version == 1
        with pytest.raises(SimulacraRpcError) as aliased:
            client.delete_version("digits@1")
        assert aliased.value.code == grpc.StatusCode.FAILED_PRECONDITION

        onnx = client.download("digits@production")
        session = onnxruntime.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        (samples,) = session.run(None, {"z": np.zeros((3, 8), np.float32), "labels": np.array([0, 1, 2], np.int64)})
        assert samples.shape == (3, 1, 28, 28)
        imported = client.import_onnx("elsewhere", onnx, class_names=["zero", "one", "two"], tags={"source": "test"})
        assert imported.model_kind == 4 and imported.signature.latent_dim == 8 and imported.signature.height == 28
        assert list(imported.signature.class_names) == ["zero", "one", "two"]
        assert [m.name for m in client.list_models(tags={"source": "test"})] == []  # tags are the version's, not the model's
        with pytest.raises(SimulacraRpcError) as bad:
            client.import_onnx("elsewhere", b"not an onnx file")
        assert (bad.value.code, bad.value.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "ONNX_SIGNATURE_MISMATCH")
        with pytest.raises(SimulacraRpcError) as missing:
            client.get_version("digits@9")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        assert sorted(m.name for m in client.list_models()) == ["models/digits", "models/elsewhere"]


async def test_training_client_end_to_end(training):
    version = await asyncio.to_thread(training.store.import_digits, "digits")
    await asyncio.to_thread(_client_flow, training.address, version)


async def test_cli_train_and_generators(training, capsys, tmp_path):
    await asyncio.to_thread(training.store.import_digits, "digits")
    flags = ["--training-address", training.address]

    def run(*argv: str) -> int:
        return cli([*argv, *flags])

    code = await asyncio.to_thread(run, "train", "create", "digits@1", "--kind", "cgan", "--model", "digits-cli", "--steps", "4",
                                   "--batch-size", "8", "--width", "8", "--latent-dim", "8", "--device", "cpu", "--set",
                                   "ema_decay=0.9", "--watch")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "SUCCEEDED" in out and "models/digits-cli/versions/1" in out
    assert await asyncio.to_thread(run, "train", "list", "--state", "succeeded") == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 and "SUCCEEDED" in listed[0] and "models/digits-cli/versions/1" in listed[0]
    curve = tmp_path / "loss.png"
    job_id = out.split()[0]
    assert await asyncio.to_thread(run, "train", "preview", job_id, "--kind", "loss-curve", "--out", str(curve)) == 0
    assert curve.read_bytes().startswith(b"\x89PNG") and "bytes" in capsys.readouterr().out
    assert await asyncio.to_thread(run, "generators", "list") == 0
    assert "models/digits-cli  latest 1" in capsys.readouterr().out
    png = tmp_path / "report.png"
    assert await asyncio.to_thread(run, "generators", "report", "digits-cli@1", "--per-class", "--png", str(png)) == 0
    report = capsys.readouterr().out
    assert "Frechet distance" in report and "TSTR / TRTR accuracy" in report and png.read_bytes().startswith(b"\x89PNG")
    assert await asyncio.to_thread(run, "generators", "alias", "digits-cli", "1", "production") == 0
    assert "production -> 1" in capsys.readouterr().out
    assert await asyncio.to_thread(run, "train", "create", "digits@1", "--kind", "cgan", "--set", "batch_size=0", "--model", "x") == 1
    assert "INVALID_HYPERPARAMETER" in capsys.readouterr().err
    assert await asyncio.to_thread(run, "train", "cancel", "nope") == 1
    assert "NOT_FOUND" in capsys.readouterr().err
