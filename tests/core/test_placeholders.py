"""Services whose domain layer has not landed: every RPC of their contract answers
UNIMPLEMENTED with reason NOT_YET_IMPLEMENTED, while health and reflection work."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as sampling
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as sampling_grpc
from simulacra_client.api.training.v1 import model_registry_service_pb2 as registry
from simulacra_client.api.training.v1 import model_registry_service_pb2_grpc as registry_grpc
from simulacra_client.channel import open_aio_channel
from simulacra_client.errors import from_rpc_error

from simulacra_services.core.config import Settings
from simulacra_services.core.contracts import placeholder_definition, services_of
from simulacra_services.core.server import METRICS_OFF, ServiceServer
from simulacra_services.services import definition


def test_each_placeholder_serves_its_whole_package() -> None:
    assert definition("training").service_names == (
        "simulacra.training.v1.ModelRegistryService",
        "simulacra.training.v1.TrainingService",
    )
    for name in ("augmentation", "sampling"):
        # Every service of the package is served (sampling adds inference.GRPCInferenceService).
        assert set(definition(name).service_names) >= {s.full_name for s in services_of(name)}
        assert definition(name).service_names


async def test_unary_and_streaming_rpcs_answer_not_yet_implemented(tmp_path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    # The placeholder itself (the sampling service has its own servicer now; its package stays the example).
    server = ServiceServer(placeholder_definition("sampling"), settings, port=0, metrics_port=METRICS_OFF)
    await server.start()
    try:
        async with open_aio_channel(server.address) as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="simulacra.sampling.v1.SamplingService"), timeout=10
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stub = sampling_grpc.SamplingServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.Sample(sampling.SampleRequest(), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                async for _ in stub.StreamSamples(sampling.StreamSamplesRequest(), timeout=10):
                    pass
        for raised, method in ((unary.value, "Sample"), (streamed.value, "StreamSamples")):
            error = from_rpc_error(raised)
            assert error.code is grpc.StatusCode.UNIMPLEMENTED
            assert error.reason == "NOT_YET_IMPLEMENTED"
            assert error.domain == "sampling.simulacra.dev"
            assert error.metadata == {"service": "simulacra.sampling.v1.SamplingService", "method": method}
    finally:
        await server.stop(1.0)


async def test_a_package_with_two_services_answers_for_both(tmp_path) -> None:
    # The placeholder itself: the training service has its own servicers now.
    server = ServiceServer(placeholder_definition("training"), Settings(data_dir=str(tmp_path)), port=0, metrics_port=METRICS_OFF)
    await server.start()
    try:
        async with open_aio_channel(server.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await registry_grpc.ModelRegistryServiceStub(channel).ListModels(registry.ListModelsRequest(), timeout=10)
        assert from_rpc_error(raised.value).reason == "NOT_YET_IMPLEMENTED"
    finally:
        await server.stop(1.0)
