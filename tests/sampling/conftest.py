"""A real sampling service for each test: loopback gRPC over a registry in real object storage.

``sampling`` starts the service (``ServiceServer``, 127.0.0.1, port 0) over local files, and once
more over a real S3 server (SeaweedFS) in the tests that take ``sampling_any``; tests register
small exported generators straight into the registry the service reads (the training side of
the registry is another service's job).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as api_grpc
from simulacra_client.channel import open_aio_channel
from simulacra_client.errors import SimulacraRpcError, from_rpc_error
from simulacra_services.core.config import Settings
from simulacra_services.core.registry import GeneratorSignature, ModelRegistry, ModelVersionRecord
from simulacra_services.core.server import METRICS_OFF, ServiceServer
from simulacra_services.core.storage import open_object_store
from simulacra_services.sampling.config import SamplingConfig
from simulacra_services.sampling.runtime.batcher import BatchingPolicy
from simulacra_services.sampling.service import DEFINITION
from tests.sampling.generators import DIGITS, export

SMALL = SamplingConfig(
    max_sample_count=256,
    default_stream_batch_size=8,
    batching=BatchingPolicy(max_batch_size=32, max_queue_delay_us=2000),
)


def rpc_error(error: BaseException) -> SimulacraRpcError:
    assert isinstance(error, grpc.RpcError), error
    return from_rpc_error(error)


@dataclass
class Sampling:
    """A running sampling service, the registry it reads, and a stub."""

    settings: Settings
    config: SamplingConfig
    registry: ModelRegistry
    metrics_port: int = METRICS_OFF
    """0: a free port, for the tests that scrape metrics."""
    server: ServiceServer | None = None
    channel: grpc.aio.Channel | None = None
    stub: api_grpc.SamplingServiceStub = field(init=False)

    async def start(self) -> None:
        definition = DEFINITION.with_dependencies(config=self.config)
        self.server = ServiceServer(definition, self.settings, port=0, metrics_port=self.metrics_port)
        await self.server.start()
        self.channel = open_aio_channel(self.server.address)
        self.stub = api_grpc.SamplingServiceStub(self.channel)

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.server is not None:
            await self.server.stop(1.0)
        self.server = self.channel = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def register(self, model: str, signature: GeneratorSignature = DIGITS, weights_seed: int = 0) -> ModelVersionRecord:
        return self.registry.register_version(model, export(signature, weights_seed), signature, model_kind="gan")

    async def sample(self, generator: str, count: int, **fields: object) -> api.SampleResponse:
        return await self.stub.Sample(api.SampleRequest(generator=generator, count=count, **fields), timeout=30)

    async def stream(self, generator: str, **fields: object) -> list[api.StreamSamplesResponse]:
        call = self.stub.StreamSamples(api.StreamSamplesRequest(generator=generator, **fields), timeout=60)
        return [response async for response in call]


def local_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), host="127.0.0.1", log_level="WARNING", shutdown_grace_seconds=1.0)


async def started(settings: Settings, config: SamplingConfig) -> AsyncIterator[Sampling]:
    objects = open_object_store(settings)
    service = Sampling(settings, config, ModelRegistry(objects))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        objects.close()


@pytest.fixture
async def sampling(tmp_path: Path) -> AsyncIterator[Sampling]:
    async for service in started(local_settings(tmp_path), SMALL):
        yield service


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
async def sampling_any(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Sampling]:
    settings = local_settings(tmp_path)
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_server")
        settings = settings.replace(
            storage_backend="s3", s3_endpoint=s3.endpoint, s3_bucket=request.getfixturevalue("s3_bucket"),
            s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
        )
    async for service in started(settings, SMALL):
        yield service
