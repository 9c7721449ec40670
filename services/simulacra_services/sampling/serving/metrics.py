"""Prometheus metrics per generator, and the counters KServe's ModelStatistics reports from.

Names carry the ``simulacra_sampling_`` prefix and a ``generator`` label (``models/m/versions/v``).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class GeneratorStatistics:
    """Totals for ModelStatistics (nanoseconds, as KServe reports them)."""

    success_count: int = 0
    success_ns: int = 0
    fail_count: int = 0
    fail_ns: int = 0
    queue_count: int = 0
    queue_ns: int = 0
    compute_count: int = 0
    compute_ns: int = 0
    inference_count: int = 0
    """Samples inferred."""
    execution_count: int = 0
    """Inferences run (batches)."""
    last_inference_ms: int = 0
    batch_sizes: dict[int, list[int]] | None = None
    """Batch size -> [count, compute ns]."""


class SamplingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ["generator"]
        self.requests = Counter("simulacra_sampling_requests", "Sample requests and stream messages served.", labels, registry=self.registry)
        self.samples = Counter("simulacra_sampling_samples", "Samples produced.", labels, registry=self.registry)
        self.errors = Counter("simulacra_sampling_errors", "Failed requests by reason.", ["generator", "reason"], registry=self.registry)
        self.latency = Histogram(
            "simulacra_sampling_request_seconds", "Time to produce one answer (noise, queue, inference, encoding).", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.queue = Histogram(
            "simulacra_sampling_queue_seconds", "Time a request waited in the dynamic batcher.", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.compute = Histogram(
            "simulacra_sampling_inference_seconds", "Time of one ONNX Runtime inference.", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "simulacra_sampling_batch_size", "Samples per inference after dynamic batching.", labels,
            buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        self.loaded = Gauge("simulacra_sampling_loaded_versions", "Generator versions in memory (1 when loaded).", labels, registry=self.registry)
        self.streams = Gauge("simulacra_sampling_open_streams", "StreamSamples calls open.", registry=self.registry)
        self._stats: dict[str, GeneratorStatistics] = defaultdict(lambda: GeneratorStatistics(batch_sizes={}))
        self._lock = threading.Lock()
        self._children: dict[str, tuple] = {}

    def _of(self, generator: str) -> tuple:
        """The labelled children of one generator, looked up once (``labels()`` costs on every call)."""
        children = self._children.get(generator)
        if children is None:
            children = self._children[generator] = tuple(
                m.labels(generator) for m in (self.requests, self.samples, self.latency, self.queue, self.compute, self.batch_size)
            )
        return children

    def statistics(self, generator: str) -> GeneratorStatistics:
        with self._lock:
            stats = self._stats[generator]
            return GeneratorStatistics(**{**stats.__dict__, "batch_sizes": {k: list(v) for k, v in (stats.batch_sizes or {}).items()}})

    def observe_batch(self, generator: str, size: int, queue_seconds: list[float], compute_seconds: float, now_ms: int) -> None:
        """One inference (called from the event loop by the batcher)."""
        _, _, _, queue, compute, batch_size = self._of(generator)
        batch_size.observe(size)
        compute.observe(compute_seconds)
        for q in queue_seconds:
            queue.observe(q)
        with self._lock:
            s = self._stats[generator]
            s.queue_count += len(queue_seconds)
            s.queue_ns += int(sum(queue_seconds) * 1e9)
            s.compute_count += 1
            s.compute_ns += int(compute_seconds * 1e9)
            s.inference_count += size
            s.execution_count += 1
            s.last_inference_ms = now_ms
            entry = s.batch_sizes.setdefault(size, [0, 0])  # type: ignore[union-attr]
            entry[0] += 1
            entry[1] += int(compute_seconds * 1e9)

    def observe_request(self, generator: str, samples: int, seconds: float) -> None:
        requests, samples_total, latency, _, _, _ = self._of(generator)
        requests.inc()
        samples_total.inc(samples)
        latency.observe(seconds)
        with self._lock:
            s = self._stats[generator]
            s.success_count += 1
            s.success_ns += int(seconds * 1e9)

    def observe_error(self, generator: str, reason: str, seconds: float) -> None:
        self.errors.labels(generator, reason).inc()
        with self._lock:
            s = self._stats[generator]
            s.fail_count += 1
            s.fail_ns += int(seconds * 1e9)
