"""What every command group shares: the SDK's connection arguments and how an RPC error is shown.

Kept free of server code (the CLI talks to services only through the SDK).
"""

from __future__ import annotations

from typing import Any, TextIO

from simulacra_services.core.config import Settings

TITLES = {"annotation": "annotation-store", "augmentation": "augmentation", "training": "generator-training", "sampling": "sampling"}


def connection(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of every SDK client built from the command line's settings."""
    return {
        "token": settings.auth_token or None,
        "tls_ca": settings.tls_ca or None,
        "max_message_bytes": settings.max_message_bytes,
    }


def report_rpc_error(error: Any, service: str, address: str, err: TextIO) -> int:
    """One line for a failed call (the server's message and stable reason; an unreachable service named
    with its address), and the exit status 1."""
    message = error.message
    if not error.reason and error.code.name == "UNAVAILABLE":
        message = f"{TITLES.get(service, service)} at {address} is unreachable ({error.message})"
    print(f"error: {message} ({error.reason or error.code.name})", file=err)
    return 1
