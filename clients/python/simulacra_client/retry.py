"""Retries for every Simulacra client: one backoff, one retry policy, one service config.

Two layers retry, and both follow the same ``RetryPolicy``:

- gRPC itself, through the channel's service config (``service_config``):
  a call to an idempotent method that fails with a retryable code (UNAVAILABLE
  by default) is sent again, with the same bytes, before the caller sees the
  failure. That covers a server restarting or a connection dropped.
- ``Backoff`` for what gRPC cannot retry by itself: reopening a stream that
  broke after some responses (StreamItems, Watch*), resuming from the last
  cursor. ``retry_call`` / ``retry_call_async`` wrap a whole call the same way.

Which methods are idempotent is decided from the contract, never per call
site (``idempotent_methods``): reads (Get, List, Stream, Watch, Read, Find,
Check) and every method whose request has a ``request_id``, because the
server answers a repeated request id with the first call's result. The raw
layer (``simulacra_client.raw``) fills an empty ``request_id`` once per
logical call, so a retried Create* never creates a second resource.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

T = TypeVar("T")

READ_PREFIXES = ("Get", "List", "Stream", "Watch", "Read", "Find", "Check", "BatchGet")
"""Method name prefixes of the contracts' read-only RPCs (AIP-131/132 and the streaming reads)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a failed call.

    ``max_attempts`` counts the first try (in the service config gRPC caps it at 5).
    Delays grow from ``initial_backoff`` by ``multiplier`` up to ``max_backoff``
    seconds, each drawn uniformly below its cap ("full jitter"), so that many
    clients of a restarted server do not come back in lockstep.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 3.0
    multiplier: float = 2.0
    retryable_codes: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.initial_backoff <= self.max_backoff or self.multiplier < 1:
            raise ValueError("backoff needs 0 < initial_backoff <= max_backoff and multiplier >= 1")
        if grpc.StatusCode.OK in self.retryable_codes:
            raise ValueError("OK is not a retryable status code")

    def retryable(self, error: BaseException) -> bool:
        code = error.code() if isinstance(error, grpc.RpcError) else getattr(error, "code", None)
        return code in self.retryable_codes

    def service_config(self, methods: Iterable[tuple[str, str]]) -> str:
        """The channel's ``grpc.service_config`` JSON: this policy for each ``(service, method)``."""
        names = [{"service": service, "method": method} for service, method in sorted(set(methods))]
        if not names:
            return json.dumps({})
        policy = {
            "maxAttempts": min(self.max_attempts, 5),
            "initialBackoff": f"{self.initial_backoff}s",
            "maxBackoff": f"{self.max_backoff}s",
            "backoffMultiplier": self.multiplier,
            "retryableStatusCodes": [code.name for code in self.retryable_codes],
        }
        return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass
class Backoff:
    """Successive retry delays of one logical call; ``reset()`` after progress.

    ``next_delay()`` is None once the attempts are spent. ``sleep`` /
    ``sleep_async`` wait that long and say whether another try may follow.
    """

    policy: RetryPolicy = DEFAULT_RETRY
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0

    def next_delay(self) -> float | None:
        if self.failures + 1 >= self.policy.max_attempts:
            return None
        cap = min(self.policy.max_backoff, self.policy.initial_backoff * self.policy.multiplier**self.failures)
        self.failures += 1
        return self.rng.uniform(0, cap)

    def reset(self) -> None:
        self.failures = 0

    def sleep(self) -> bool:
        delay = self.next_delay()
        if delay is None:
            return False
        time.sleep(delay)
        return True

    async def sleep_async(self) -> bool:
        delay = self.next_delay()
        if delay is None:
            return False
        await asyncio.sleep(delay)
        return True


def retry_call(call: Callable[[], T], policy: RetryPolicy = DEFAULT_RETRY) -> T:
    """``call()``, again after a backoff while it fails with a retryable code. Only for idempotent calls."""
    backoff = Backoff(policy)
    while True:
        try:
            return call()
        except Exception as error:
            if not policy.retryable(error) or not backoff.sleep():
                raise


async def retry_call_async(call: Callable[[], Awaitable[T]], policy: RetryPolicy = DEFAULT_RETRY) -> T:
    """The asyncio twin of ``retry_call``."""
    backoff = Backoff(policy)
    while True:
        try:
            return await call()
        except Exception as error:
            if not policy.retryable(error) or not await backoff.sleep_async():
                raise


def is_idempotent(method: MethodDescriptor) -> bool:
    """Whether sending ``method``'s request twice does what sending it once does (module doc)."""
    return method.name.startswith(READ_PREFIXES) or "request_id" in method.input_type.fields_by_name


def idempotent_methods(services: Sequence[ServiceDescriptor]) -> Iterator[tuple[str, str]]:
    """``(service full name, method name)`` of each idempotent method of ``services``."""
    for service in services:
        for method in service.methods:
            if is_idempotent(method):
                yield service.full_name, method.name
