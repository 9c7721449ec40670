"""Class weights that fill the gaps of a dataset version's class histogram ("balance against").

The histogram comes from the annotation-store (``GetStatistics`` through the SDK), once per
version: versions are immutable, so the weights, and the labels drawn with them, never change.
"""

from __future__ import annotations

import asyncio
import re

from simulacra_services.core import errors
from simulacra_services.core.config import Settings
from simulacra_services.core.registry import GeneratorSignature

_VERSION_NAME = re.compile(r"datasets/([a-z][a-z0-9-]{0,62})/versions/([1-9][0-9]{0,9})")
_CACHE_LIMIT = 256


def gap_weights(counts: dict[int, int], signature: GeneratorSignature) -> dict[int, float]:
    """Label k -> M - n_k (n_k: objects of category category_ids[k]; M: the largest); {} (uniform) when all equal."""
    category_ids = signature.category_ids or tuple(range(signature.num_classes))
    per_label = [counts.get(int(category_ids[k]), 0) if k < len(category_ids) else 0 for k in range(signature.num_classes)]
    top = max(per_label, default=0)
    weights = {k: float(top - n) for k, n in enumerate(per_label)}
    return {} if not any(weights.values()) else weights


class ClassBalancer:
    """Reads class histograms from the annotation-store named by the settings."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client = None
        self._counts: dict[str, dict[int, int]] = {}
        self._lock = asyncio.Lock()

    def _open(self):  # noqa: ANN202 - simulacra_client.AnnotationClient
        from simulacra_client.annotation import AnnotationClient

        if self._client is None:
            s = self._settings
            self._client = AnnotationClient(
                s.address("annotation"), token=s.auth_token or None, tls_ca=s.tls_ca or None, timeout=30.0
            )
        return self._client

    async def weights(self, reference: str, signature: GeneratorSignature) -> dict[int, float]:
        if not signature.conditional:
            raise errors.InvalidArgument("GENERATOR_UNCONDITIONAL", "this generator takes no class labels: leave class_mix empty", {})
        if not _VERSION_NAME.fullmatch(reference):
            raise errors.InvalidArgument(
                "INVALID_BALANCE_REFERENCE",
                f"balance_against must be 'datasets/{{dataset}}/versions/{{number}}' (a fixed version), got {reference[:120]!r}",
                {"balance_against": reference[:120]},
            )
        counts = self._counts.get(reference)
        if counts is None:
            counts = await asyncio.to_thread(self._read, reference)
            async with self._lock:
                if len(self._counts) >= _CACHE_LIMIT:
                    self._counts.clear()
                self._counts[reference] = counts
        return gap_weights(counts, signature)

    def _read(self, reference: str) -> dict[int, int]:
        from simulacra_client.errors import SimulacraRpcError

        try:
            statistics = self._open().statistics(reference)
        except SimulacraRpcError as error:
            if error.code.name == "NOT_FOUND":
                raise errors.NotFound(
                    "BALANCE_DATASET_NOT_FOUND", f"the annotation-store has no {reference}: {error.message}", {"balance_against": reference}
                ) from None
            raise errors.Unavailable(
                "ANNOTATION_STORE_UNAVAILABLE",
                f"the annotation-store could not give the class histogram of {reference}: {error.message}",
                {"balance_against": reference},
            ) from None
        return {int(c.category_id): int(c.object_count) for c in statistics.categories}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
