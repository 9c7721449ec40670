"""Ask a running service for its health over grpc.health.v1 (through the SDK)."""

from __future__ import annotations

import grpc
from simulacra_client.channel import check_health, open_channel

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
        return check_health(channel, timeout=timeout).name
    except grpc.RpcError:
        return UNREACHABLE
    finally:
        channel.close()
