"""simulacra_client.SamplingClient against a real sampling service, resuming across a killed server."""

from __future__ import annotations

import asyncio
import io
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from simulacra_client import AsyncSamplingClient, SamplingClient
from simulacra_client.api.inference import grpc_service_pb2 as inference_pb
from simulacra_client.api.inference import grpc_service_pb2_grpc as inference_grpc
from simulacra_client.errors import NotFoundError, OutOfRangeError
from simulacra_client.sampling import generator_name
from tests.sampling.conftest import Sampling
from tests.sampling.generators import DIGITS, SCENES, export
from tests.harness import free_port
from tests.sampling.test_process import registry_at, sampling_process


def test_generator_names() -> None:
    assert generator_name("digits") == "models/digits/versions/latest"
    assert generator_name("digits@3") == "models/digits/versions/3"
    assert generator_name("digits@production") == "models/digits/versions/production"
    assert generator_name("models/digits") == "models/digits/versions/latest"
    assert generator_name("models/digits/versions/2") == "models/digits/versions/2"


async def test_sample_and_stream_as_numpy(sampling: Sampling) -> None:
    sampling.register("digits")
    sampling.register("scenes", SCENES)
    address = sampling.server.address  # type: ignore[union-attr]

    def use_the_sdk() -> dict:
        with SamplingClient(address) as client:
            out = {"batch": client.sample("digits", 10, seed=3, start_index=5)}
            out["uint8"] = client.sample("digits@1", 10, seed=3, start_index=5, format="uint8", layout="NHWC")
            out["png"] = client.sample("digits@1", 2, seed=3, start_index=5, format="png")
            out["scenes"] = client.sample("scenes", 4, seed=1, attribute_mix={"time": {"night": 1.0}}, class_mix={2: 1.0}, truncation=0.7)
            out["stream"] = list(client.stream("digits", seed=3, start_index=5, count=10, batch_size=3))
            out["shard"] = list(client.stream("digits", seed=3, start_index=5, count=5, batch_size=2, shard_index=1, shard_count=2))
            out["loaded"] = client.load("digits@latest", pin=True)
            out["listed"] = [g.name for g in client.list_generators(loaded_only=True)]
            out["got"] = client.get_generator("scenes")
            out["unloaded"] = client.unload("digits@1")
            with pytest.raises(NotFoundError):
                client.sample("nope", 1)
            with pytest.raises(OutOfRangeError) as raised:
                client.sample("digits", 100_000)
            out["reason"] = raised.value.reason
        return out

    out = await asyncio.to_thread(use_the_sdk)
    batch = out["batch"]
    assert batch.generator == "models/digits/versions/1" and batch.samples.shape == (10, 1, 8, 8) and batch.samples.dtype == np.float32
    assert batch.indices.tolist() == list(range(5, 15)) and batch.seed == 3 and batch.truncation is None
    source = batch.lineage(2).synthetic
    assert (source.generator, source.generator_version, source.seed, source.sample_index) == ("models/digits", 1, 3, 7)
    assert source.label == batch.labels[2] and not source.HasField("truncation") and list(source.attributes) == []
    expected = np.clip(np.rint((batch.samples + np.float32(1)) * np.float32(127.5)), 0, 255).astype(np.uint8)
    assert np.array_equal(out["uint8"].samples, expected.transpose(0, 2, 3, 1))
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(out["png"].images[1]))), expected[1, 0])
    scenes = out["scenes"]
    assert set(scenes.labels.tolist()) == {2} and set(scenes.attributes[:, 1].tolist()) == {1}
    scene = scenes.lineage(0).synthetic
    assert list(scene.attributes) == scenes.attributes[0].tolist() and scene.label == 2
    assert scene.HasField("truncation") and scene.truncation == pytest.approx(0.7)
    stream = out["stream"]
    assert [len(b) for b in stream] == [3, 3, 3, 1]
    assert np.array_equal(np.concatenate([b.samples for b in stream]), batch.samples)
    assert np.concatenate([b.indices for b in out["shard"]]).tolist() == [5, 7, 9, 11, 13]
    assert out["loaded"].pinned and out["listed"] == ["models/digits/versions/1", "models/scenes/versions/1"]
    assert out["got"].name == "models/scenes/versions/1" and [a.name for a in out["got"].attributes] == ["weather", "time"]
    assert out["reason"] == "COUNT_OUT_OF_RANGE"

    async with AsyncSamplingClient(address) as client:
        again = await client.sample("digits@1", 10, seed=3, start_index=5)
        parts = [b async for b in client.stream("digits@1", seed=3, start_index=5, count=10, batch_size=4)]
        names = [g.name async for g in client.list_generators("digits", page_size=1)]
    assert names == ["models/digits/versions/1"]
    assert np.array_equal(again.samples, batch.samples)
    assert np.array_equal(np.concatenate([b.samples for b in parts]), batch.samples)


def test_a_stream_resumes_by_itself_across_a_killed_server(tmp_path: Path) -> None:
    registry_at(tmp_path / "objects").register_version("digits", export(DIGITS), DIGITS, model_kind="gan")
    port = free_port()
    address = f"127.0.0.1:{port}"
    total = 2000
    options = dict(seed=8, count=total, batch_size=8, format="uint8", max_in_flight=1)
    with sampling_process(tmp_path, port):
        with SamplingClient(address) as client:
            reference = list(client.stream("digits", **options))
    first = sampling_process(tmp_path, port)
    process = first.__enter__()
    second = sampling_process(tmp_path, port)
    restarted = threading.Event()

    def restart() -> None:
        second.__enter__()
        restarted.set()

    got = []
    served_after_restart = 0
    try:
        with SamplingClient(address) as client:
            for batch in client.stream("digits", resumes=40, **options):
                got.append(batch)
                if len(got) == 3:
                    process.kill()  # the server dies mid-stream; a new one starts on the same port
                    first.__exit__(None, None, None)
                    threading.Thread(target=restart, daemon=True).start()
        assert restarted.wait(60)
        with grpc.insecure_channel(address) as channel:
            stats = inference_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(inference_pb.ModelStatisticsRequest(name="digits"))
            served_after_restart = stats.model_stats[0].inference_count
    finally:
        restarted.wait(60)
        second.__exit__(None, None, None)
    assert served_after_restart > 0  # the rest came from the new server: the client did resume
    assert np.concatenate([b.indices for b in got]).tolist() == list(range(total))
    assert {b.generator for b in got} == {"models/digits/versions/1"}
    assert np.array_equal(np.concatenate([b.samples for b in got]), np.concatenate([b.samples for b in reference]))
    assert np.concatenate([b.labels for b in got]).tolist() == np.concatenate([b.labels for b in reference]).tolist()
