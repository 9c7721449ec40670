"""Settings of the sampling service: limits, dynamic batching, ONNX Runtime threads, registry polling.

Read from ``SIMULACRA_SAMPLING_*`` environment variables (``SamplingConfig.from_env``); tests build
one directly. The shared settings (ports, storage, TLS) stay in ``core.config.Settings``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from simulacra_services.sampling.runtime.batcher import BatchingPolicy
from simulacra_services.sampling.runtime.session import SessionOptions

ENV_PREFIX = "SIMULACRA_SAMPLING_"


@dataclass(frozen=True)
class SamplingConfig:
    max_sample_count: int = 1024
    """Largest Sample count, and largest StreamSamples batch_size."""
    default_stream_batch_size: int = 64
    default_max_in_flight: int = 2
    max_in_flight: int = 16
    """Largest max_in_flight a stream may ask for."""
    max_concurrent_streams: int = 64
    max_loaded_generators: int = 16
    poll_seconds: float = 0.0
    """Registry polling for moved aliases (Triton's POLL mode); 0: EXPLICIT mode, LoadGenerator only."""
    default_alias: str = "latest"
    """What an empty KServe model_version means: an alias, or "latest"."""
    offload_samples: int = 8
    """Calls with at least this many samples draw noise and encode on a worker thread."""
    batching: BatchingPolicy = field(default_factory=BatchingPolicy)
    session: SessionOptions = field(default_factory=SessionOptions)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SamplingConfig:
        """Defaults overridden by e.g. SIMULACRA_SAMPLING_MAX_SAMPLE_COUNT, SIMULACRA_SAMPLING_MAX_BATCH_SIZE,
        SIMULACRA_SAMPLING_MAX_QUEUE_DELAY_US, SIMULACRA_SAMPLING_PREFERRED_BATCH_SIZES=16,32,
        SIMULACRA_SAMPLING_DYNAMIC_BATCHING=false, SIMULACRA_SAMPLING_PROVIDER=cpu, SIMULACRA_SAMPLING_INTRA_OP_THREADS."""
        env = os.environ if environ is None else environ

        def get(name: str, default: object) -> object:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None or raw == "":
                return default
            if isinstance(default, bool):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            if isinstance(default, tuple):
                return tuple(int(x) for x in raw.split(",") if x.strip())
            return type(default)(raw)  # type: ignore[call-arg]

        base = cls()
        top = {f.name: get(f.name, getattr(base, f.name)) for f in dataclasses.fields(cls) if f.name not in ("batching", "session")}
        b = base.batching
        batching = BatchingPolicy(
            enabled=bool(get("dynamic_batching", b.enabled)),
            max_batch_size=int(get("max_batch_size", b.max_batch_size)),  # type: ignore[arg-type]
            max_queue_delay_us=int(get("max_queue_delay_us", b.max_queue_delay_us)),  # type: ignore[arg-type]
            preferred_batch_sizes=tuple(get("preferred_batch_sizes", b.preferred_batch_sizes)),  # type: ignore[arg-type]
            instances=int(get("instances", b.instances)),  # type: ignore[arg-type]
        )
        s = base.session
        session = SessionOptions(
            provider=str(get("provider", s.provider)),
            intra_op_threads=int(get("intra_op_threads", s.intra_op_threads)),  # type: ignore[arg-type]
            inter_op_threads=int(get("inter_op_threads", s.inter_op_threads)),  # type: ignore[arg-type]
            warmup_batch_size=int(get("warmup_batch_size", s.warmup_batch_size)),  # type: ignore[arg-type]
            spinning=bool(get("spinning", s.spinning)),
        )
        return cls(**top, batching=batching, session=session)  # type: ignore[arg-type]
