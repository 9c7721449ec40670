"""Ask a running service for its health over grpc.health.v1."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from simulacra_client.channel import open_channel

from simulacra_services.core.config import Settings

UNREACHABLE = "UNREACHABLE"


def check(address: str, settings: Settings, *, timeout: float = 2.0) -> str:
    """SERVING, NOT_SERVING, ... as the server reports it, or UNREACHABLE."""
    channel = open_channel(
        address,
        token=settings.auth_token or None,
        tls_ca=settings.tls_ca or None,
        max_message_bytes=settings.max_message_bytes,
    )
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.RpcError:
        return UNREACHABLE
    finally:
        channel.close()
