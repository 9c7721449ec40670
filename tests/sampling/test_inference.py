"""The Open Inference Protocol (KServe v2) on the sampling port: with our own stubs for the
statuses, and with a stock tritonclient, installed by this module in a virtual environment of its
own (tritonclient 2.73 needs protobuf < 7, the suite runs protobuf 7)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import venv
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from simulacra_client.api.inference import grpc_service_pb2 as pb
from simulacra_client.api.inference import grpc_service_pb2_grpc as pb_grpc
from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_services.sampling.runtime import noise
from simulacra_services.sampling.runtime.session import GeneratorSession, SessionOptions
from tests.sampling.conftest import Sampling, rpc_error
from tests.sampling.generators import DIGITS, SCENES, export
from tests.sampling.test_service import array

ROOT = Path(__file__).resolve().parents[2]
TRITONCLIENT = "tritonclient[grpc]==2.73.0"
VENV = ROOT / ".venv" / "tritonclient-2.73.0"


@pytest.fixture(scope="session")
def tritonclient_python() -> Path:
    """The python of a virtual environment with tritonclient (created once, kept under .venv/)."""
    python = VENV / "bin" / "python"
    ready = VENV / ".installed"
    if not ready.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", TRITONCLIENT, "numpy"],
            capture_output=True, text=True, timeout=600, check=False,
        )
        assert result.returncode == 0, f"pip could not install {TRITONCLIENT}:\n{result.stdout}\n{result.stderr}"
        ready.write_text(TRITONCLIENT)
    return python


def raw_request(model: str, **tensors: np.ndarray) -> pb.ModelInferRequest:
    names = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.float64): "FP64"}
    request = pb.ModelInferRequest(model_name=model)
    for name, value in tensors.items():
        request.inputs.add(name=name, datatype=names[value.dtype], shape=list(value.shape))
        request.raw_input_contents.append(value.tobytes())
    return request


async def test_a_stock_tritonclient_works_unchanged(sampling: Sampling, tritonclient_python: Path, tmp_path: Path) -> None:
    sampling.register("digits")
    z = noise.latents(3, np.arange(5), DIGITS.latent_dim)
    labels = np.array([0, 3, 9, 3, 1], dtype=np.int64)
    np.save(tmp_path / "z.npy", z)
    np.save(tmp_path / "labels.npy", labels)
    script = Path(__file__).with_name("tritonclient_script.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    process = await asyncio.create_subprocess_exec(
        str(tritonclient_python), str(script), sampling.server.address, str(tmp_path),  # type: ignore[union-attr]
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp_path,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, output.decode()
    out = json.loads((tmp_path / "results.json").read_text())

    assert out["live"] and out["ready"] and out["server"]["name"] == "simulacra-sampling"
    assert "model_repository" in out["server"]["extensions"]
    assert not out["ready_before_load"] and out["ready_after_load"] and not out["ready_after_unload"]
    assert out["metadata"]["platform"] == "onnxruntime_onnx" and out["metadata"]["versions"] == ["1"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in out["metadata"]["inputs"]] == [("z", "FP32", ["-1", "16"]), ("labels", "INT64", ["-1"])]
    assert out["metadata"]["outputs"][0]["shape"] == ["-1", "1", "8", "8"]
    assert out["config"]["config"]["max_batch_size"] == 32 and out["config"]["config"]["backend"] == "onnxruntime"
    assert "dynamic_batching" in out["config"]["config"]
    assert {"name": "digits", "version": "1", "state": "READY", "reason": ""} in [
        {"reason": "", **m} for m in out["index"]["models"]
    ]

    expected = GeneratorSession(export(DIGITS), DIGITS, SessionOptions(intra_op_threads=1)).run(z, labels)
    assert np.array_equal(np.load(tmp_path / "raw.npy"), expected) and out["raw_version"] == "1"

    native = await sampling.sample("models/digits/versions/1", 6, seed=11, start_index=100, format=gen_pb.SAMPLE_FORMAT_UINT8)
    assert np.array_equal(np.load(tmp_path / "seeded_samples.npy"), array(native.samples))
    assert np.load(tmp_path / "seeded_labels.npy").tolist() == list(native.labels)
    assert np.load(tmp_path / "seeded_indices.npy").tolist() == list(range(100, 106))
    streamed = np.load(tmp_path / "streamed.npy")
    native8 = await sampling.sample("models/digits/versions/1", 8, seed=11, start_index=100, format=gen_pb.SAMPLE_FORMAT_UINT8)
    assert np.array_equal(streamed, array(native8.samples))
    image = np.asarray(Image.open(io.BytesIO((tmp_path / "image1.png").read_bytes())))
    assert np.array_equal(image, array(native.samples)[1, 0])

    stats = out["statistics"]["model_stats"][0]
    assert stats["name"] == "digits" and stats["version"] == "1"
    assert int(stats["inference_count"]) >= 5 + 6 + 2 + 8 and int(stats["execution_count"]) >= 1
    assert int(stats["inference_stats"]["success"]["count"]) >= 4
    assert out["unknown_model"][0] == "StatusCode.NOT_FOUND"
    assert out["bad_shape"][0] == "StatusCode.INVALID_ARGUMENT" and "z" in out["bad_shape"][1]


async def test_inference_statuses_health_and_seeded_attributes(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.register("scenes", SCENES)
    stub = pb_grpc.GRPCInferenceServiceStub(sampling.channel)
    health = await health_pb2_grpc.HealthStub(sampling.channel).Check(health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"))
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    z, labels = np.zeros((2, 16), np.float32), np.zeros(2, np.int64)
    cases = [
        (raw_request("nope", z=z, labels=labels), grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"),
        (raw_request("Bad_Name", z=z, labels=labels), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_MODEL_ID"),
        (raw_request("digits", z=z.astype(np.float64), labels=labels), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_DATATYPE"),
        (raw_request("digits", z=np.zeros((2, 5), np.float32), labels=labels), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHAPE"),
        (raw_request("digits", z=z, labels=np.zeros(3, np.int64)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHAPE"),
        (raw_request("digits", z=z, labels=np.array([0, 10])), grpc.StatusCode.INVALID_ARGUMENT, "LABEL_OUT_OF_RANGE"),
        (raw_request("digits", z=z), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INPUTS"),
        (raw_request("digits", z=np.zeros((300, 16), np.float32), labels=np.zeros(300, np.int64)), grpc.StatusCode.OUT_OF_RANGE, "COUNT_OUT_OF_RANGE"),
        (pb.ModelInferRequest(model_name="digits", model_version="staging"), grpc.StatusCode.NOT_FOUND, "ALIAS_NOT_FOUND"),
        (pb.ModelInferRequest(model_name="digits", parameters={"count": pb.InferParameter(int64_param=1000)}), grpc.StatusCode.OUT_OF_RANGE, "COUNT_OUT_OF_RANGE"),
        (pb.ModelInferRequest(model_name="digits", parameters={"format": pb.InferParameter(string_param="jpeg")}), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_FORMAT"),
    ]
    bad_raw = raw_request("digits", z=z, labels=labels)
    bad_raw.raw_input_contents[0] = b"\x00" * 5
    cases.append((bad_raw, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SHAPE"))
    for request, code, reason in cases:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ModelInfer(request, timeout=30)
        error = rpc_error(raised.value)
        assert (error.code, error.reason) == (code, reason), request.model_name

    seeded = await stub.ModelInfer(
        pb.ModelInferRequest(
            model_name="scenes", model_version="1",
            parameters={"seed": pb.InferParameter(int64_param=4), "count": pb.InferParameter(int64_param=3), "layout": pb.InferParameter(string_param="NHWC")},
        )
    )
    names = [o.name for o in seeded.outputs]
    assert names == ["samples", "labels", "indices", "attributes"] and list(seeded.outputs[0].shape) == [3, 8, 8, 3]
    native = await sampling.sample("models/scenes/versions/1", 3, seed=4, layout=gen_pb.SAMPLE_LAYOUT_NHWC)
    assert seeded.raw_output_contents[0] == native.samples.data and seeded.raw_output_contents[3] == native.attributes.data
    # The answer carries each sample's lineage: resolved version, seed, indices, labels, attributes (and truncation when used).
    assert seeded.model_version == "1" and seeded.parameters["seed"].uint64_param == 4 and "truncation" not in seeded.parameters
    truncated = await stub.ModelInfer(pb.ModelInferRequest(
        model_name="scenes", parameters={"seed": pb.InferParameter(int64_param=9), "start_index": pb.InferParameter(int64_param=7),
                                         "count": pb.InferParameter(int64_param=2), "truncation": pb.InferParameter(double_param=0.5)},
    ))
    assert truncated.parameters["seed"].uint64_param == 9 and truncated.parameters["truncation"].double_param == 0.5
    lineage = {o.name: np.frombuffer(raw, dtype=np.uint64 if o.datatype == "UINT64" else np.int64) for o, raw in zip(truncated.outputs, truncated.raw_output_contents) if o.name != "samples"}
    assert lineage["indices"].tolist() == [7, 8]
    again = await sampling.sample(  # sample 8 drawn again from its lineage alone
        f"models/scenes/versions/{truncated.model_version}", 1, seed=truncated.parameters["seed"].uint64_param, start_index=int(lineage["indices"][1]),
        labels=[int(lineage["labels"][1])], truncation=truncated.parameters["truncation"].double_param,
        attribute_mix=[gen_pb.AttributeMix(name=a.name, weights={a.values[v]: 1.0}) for a, v in zip(SCENES.attributes, lineage["attributes"].reshape(2, -1)[1])],
    )
    assert again.samples.data == truncated.raw_output_contents[0][len(truncated.raw_output_contents[0]) // 2:]
    only = await stub.ModelInfer(
        pb.ModelInferRequest(model_name="digits", parameters={"count": pb.InferParameter(int64_param=2)}, outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="labels")])
    )
    assert [o.name for o in only.outputs] == ["labels"] and only.model_version == "1"

    stream = stub.ModelStreamInfer(
        iter([pb.ModelInferRequest(model_name="nope", id="a"), pb.ModelInferRequest(model_name="digits", id="b")])
    )
    answers = {r.infer_response.id: r for r in [r async for r in stream]}
    assert "MODEL_NOT_FOUND" in answers["a"].error_message and not answers["b"].error_message
    assert answers["b"].infer_response.outputs[0].name == "samples"


async def test_repository_calls_by_version(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.register("digits", weights_seed=1)
    stub = pb_grpc.GRPCInferenceServiceStub(sampling.channel)
    await stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="digits", parameters={"version": pb.ModelRepositoryParameter(string_param="1")}))
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="digits", version="1"))).ready
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="digits"))).ready  # the default alias, latest, is version 2
    index = await stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True))
    assert [(m.name, m.version, m.state) for m in index.models] == [("digits", "1", "READY")]
    everything = await stub.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.version) for m in everything.models] == [("digits", "2"), ("digits", "1")]
    config = (await stub.ModelConfig(pb.ModelConfigRequest(name="digits", version="1"))).config
    assert config.parameters["simulacra_version"].string_value == "1" and list(config.output[0].dims) == [1, 8, 8]
    metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
    assert list(metadata.versions) == ["2", "1"]
    await stub.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="digits"))
    assert not (await stub.ModelReady(pb.ModelReadyRequest(name="digits", version="1"))).ready
    for call, request, reason in [
        (stub.ModelConfig, pb.ModelConfigRequest(name="nope"), "MODEL_NOT_FOUND"),
        (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name="digits", parameters={"provider": pb.ModelRepositoryParameter(string_param="abacus")}), "UNKNOWN_PROVIDER"),
        (stub.ModelStatistics, pb.ModelStatisticsRequest(name="nope"), "MODEL_NOT_FOUND"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(request)
        assert rpc_error(raised.value).reason == reason
