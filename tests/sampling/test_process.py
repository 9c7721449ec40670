"""The sampling service as its own process: no torch in it, and a stream cut by a killed server resumes exactly."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np

from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as api_grpc
from simulacra_services.core.config import Settings
from simulacra_services.core.registry import ModelRegistry
from simulacra_services.core.storage import LocalObjectStore
from tests.harness import free_port, service_process
from tests.sampling.generators import DIGITS, SCENES, export

ROOT = Path(__file__).resolve().parents[2]


def registry_at(objects_dir: Path) -> ModelRegistry:
    return ModelRegistry(LocalObjectStore(objects_dir))


def test_the_sampling_process_imports_no_torch(tmp_path: Path) -> None:
    objects = tmp_path / "objects"
    registry_at(objects).register_version("scenes", export(SCENES), SCENES, model_kind="gan")
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from simulacra_services.services import definition
        from simulacra_services.core.config import Settings
        from simulacra_services.core.server import METRICS_OFF, ServiceServer
        from simulacra_client.channel import open_aio_channel
        from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api, sampling_service_pb2_grpc as api_grpc

        async def main():
            settings = Settings(data_dir={str(tmp_path)!r}, storage_dir={str(objects)!r}, log_level="WARNING")
            server = ServiceServer(definition("sampling"), settings, port=0, metrics_port=METRICS_OFF)
            await server.start()
            async with open_aio_channel(server.address) as channel:
                stub = api_grpc.SamplingServiceStub(channel)
                response = await stub.Sample(api.SampleRequest(generator="models/scenes/versions/latest", count=3, format=3))
                assert len(response.images) == 3
                async for _ in stub.StreamSamples(api.StreamSamplesRequest(generator="models/scenes/versions/1", count=20, batch_size=10)):
                    pass
            await server.stop(1)

        asyncio.run(main())
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "PIL", "onnx", "simulacra_services.training"))
        print("HEAVY", heavy)
        assert not heavy, heavy
        assert "onnxruntime" in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HEAVY []" in result.stdout


@contextmanager
def sampling_process(data_dir: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """``simulacra serve sampling`` on ``port`` (the same one across restarts), data in ``data_dir``, dynamic batches of at most 16."""
    settings = Settings(data_dir=str(data_dir), log_level="WARNING")
    with service_process("sampling", settings, port=port, lease_seconds=None, env={"SIMULACRA_SAMPLING_MAX_BATCH_SIZE": "16"}) as (process, _):
        yield process


def test_a_stream_cut_by_a_killed_server_resumes_exactly(tmp_path: Path) -> None:
    registry_at(tmp_path / "objects").register_version("digits", export(DIGITS), DIGITS, model_kind="gan")
    name, port = "models/digits/versions/latest", free_port()
    total = 6400  # 100 messages of 16 KiB: far more than the transport buffers, so the kill cuts the stream
    request = dict(seed=21, count=total, batch_size=64, format=gen_pb.SAMPLE_FORMAT_FLOAT32, max_in_flight=1)
    with sampling_process(tmp_path, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = api_grpc.SamplingServiceStub(channel)
            reference = list(stub.StreamSamples(api.StreamSamplesRequest(generator=name, **request), timeout=60))
    with sampling_process(tmp_path, port) as process:
        received = []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = api_grpc.SamplingServiceStub(channel)
            try:
                for response in stub.StreamSamples(api.StreamSamplesRequest(generator=name, **request), timeout=60):
                    received.append(response)
                    if len(received) == 4:
                        process.send_signal(signal.SIGKILL)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert 4 <= len(received) < len(reference)
    resolved = received[0].generator
    last = received[-1].indices[-1]
    with sampling_process(tmp_path, port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = api_grpc.SamplingServiceStub(channel)
            resumed = list(
                stub.StreamSamples(
                    api.StreamSamplesRequest(generator=resolved, **{**request, "count": total - (last + 1)}, start_index=last + 1), timeout=60
                )
            )
    joined = received + resumed
    assert [i for r in joined for i in r.indices] == list(range(total))
    got = np.concatenate([np.frombuffer(r.samples.data, np.float32) for r in joined])
    want = np.concatenate([np.frombuffer(r.samples.data, np.float32) for r in reference])
    assert np.array_equal(got, want)
    assert [label for r in joined for label in r.labels] == [label for r in reference for label in r.labels]
