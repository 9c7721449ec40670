"""The sampling service, as the server bootstrap runs it.

``register`` opens the object store, reads the model registry through it, and adds the
SamplingService servicer. The process imports ONNX Runtime and numpy, never torch
(tests/sampling/test_import_graph.py keeps it so).
"""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import CollectorRegistry

from simulacra_client.api.inference import grpc_service_pb2_grpc as inference_grpc
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as api_grpc
from simulacra_services.core.config import Settings
from simulacra_services.core.registry import ModelRegistry
from simulacra_services.core.server import CloseHook, ServiceDefinition
from simulacra_services.core.storage import open_object_store
from simulacra_services.sampling.api.inference import SERVICE_NAME as INFERENCE_SERVICE
from simulacra_services.sampling.api.balance import ClassBalancer
from simulacra_services.sampling.api.inference import InferenceServicer
from simulacra_services.sampling.api.servicer import SamplingServicer
from simulacra_services.sampling.config import SamplingConfig
from simulacra_services.sampling.serving.metrics import SamplingMetrics
from simulacra_services.sampling.serving.pool import GeneratorPool

SERVICE_NAMES = ("simulacra.sampling.v1.SamplingService", INFERENCE_SERVICE)
"""The native API and the Open Inference Protocol (KServe v2), on one port."""


async def register(
    server: grpc.aio.Server, settings: Settings, *, config: SamplingConfig | None = None, metrics_registry: CollectorRegistry | None = None
) -> CloseHook:
    """Dependency ``config`` (tests, embedding): the sampling settings; default: SIMULACRA_SAMPLING_* from
    the environment. ``metrics_registry`` comes from the server: per-generator metrics join its endpoint."""
    chosen = config if config is not None else SamplingConfig.from_env()
    objects = await asyncio.to_thread(open_object_store, settings)
    pool = GeneratorPool(ModelRegistry(objects), chosen, SamplingMetrics(metrics_registry))
    await pool.start()
    balancer = ClassBalancer(settings)
    api_grpc.add_SamplingServiceServicer_to_server(SamplingServicer(pool, chosen, settings.max_message_bytes, balancer), server)
    inference_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(pool, chosen, balancer), server)

    async def close() -> None:
        try:
            await pool.close()
            await asyncio.to_thread(balancer.close)
        finally:
            await asyncio.to_thread(objects.close)

    return close


DEFINITION = ServiceDefinition(
    name="sampling",
    title="sampling",
    error_domain="sampling.simulacra.dev",
    service_names=SERVICE_NAMES,
    register=register,
    wants_metrics_registry=True,
)
