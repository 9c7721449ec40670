"""The friendly client of the sampling service: samples as numpy arrays, resumable streams.

    from simulacra_client import SamplingClient

    with SamplingClient("127.0.0.1:50054") as client:
        batch = client.sample("digits@production", 64, seed=7, format="uint8")
        batch.samples.shape          # (64, 1, 28, 28), uint8
        for part in client.stream("digits@3", count=10_000, batch_size=256, seed=7):
            ...                      # resumes by itself after UNAVAILABLE (server restart, network)

Sample i of (generator version, seed) is a pure function on the server (docs/contracts.md,
"Deterministic sampling"), so a stream broken by UNAVAILABLE is reopened at the next index, on
the resolved version, and the caller sees exactly the samples of an unbroken stream.
``AsyncSamplingClient`` is the asyncio twin. Only grpcio, protobuf and numpy are needed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.api.sampling.v1 import generator_pb2 as gen_pb
from simulacra_client.api.sampling.v1 import sampling_service_pb2 as rpc
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as rpc_grpc
from simulacra_client.errors import UnavailableError
from simulacra_client.raw import AsyncRawClient, ServiceClient
from simulacra_client.retry import Backoff

__all__ = ["AsyncSamplingClient", "SampleBatch", "SamplingClient", "generator_name"]

STREAM_RESUMES = 8
"""Reopenings in a row of a broken stream before its error reaches the caller."""
_FORMATS = {"float32": gen_pb.SAMPLE_FORMAT_FLOAT32, "uint8": gen_pb.SAMPLE_FORMAT_UINT8, "png": gen_pb.SAMPLE_FORMAT_PNG}
_LAYOUTS = {"NCHW": gen_pb.SAMPLE_LAYOUT_NCHW, "NHWC": gen_pb.SAMPLE_LAYOUT_NHWC}
_DTYPES = {common_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"), common_pb2.DATA_TYPE_UINT8: np.dtype("u1"), common_pb2.DATA_TYPE_INT64: np.dtype("<i8")}


def generator_name(reference: str) -> str:
    """``models/M/versions/V`` from ``M`` (latest), ``M@V`` (V a number or an alias) or a full name."""
    if reference.startswith("models/"):
        return reference if "/versions/" in reference else f"{reference}/versions/latest"
    model, _, version = reference.partition("@")
    return f"models/{model}/versions/{version or 'latest'}"


def tensor_array(tensor: common_pb2.Tensor) -> np.ndarray:
    """A Tensor message as a (read-only) numpy array."""
    return np.frombuffer(tensor.data, dtype=_DTYPES[tensor.dtype]).reshape(tuple(tensor.shape))


@dataclass(frozen=True)
class SampleBatch:
    """Samples with their lineage: with (generator, seed, index, label, attributes, truncation)
    each one can be produced again bit for bit."""

    generator: str
    """The resolved version, ``models/M/versions/N``."""
    indices: np.ndarray
    labels: np.ndarray
    samples: np.ndarray | None
    """[n, C, H, W] (or NHWC) float32 or uint8; None for PNG."""
    images: list[bytes]
    """PNG files, for format="png"."""
    attributes: np.ndarray | None
    """int64 [n, A] value indices, None for a generator without attributes."""
    seed: int
    truncation: float | None

    def __len__(self) -> int:
        return len(self.indices)

    def lineage(self, i: int) -> common_pb2.Lineage:
        """Where sample ``i`` came from, as the annotation-store records it (``Lineage.synthetic``).

        The lineage carries the label, the truncation (when used) and the attribute value indices
        (for a generator with attributes): with those, the sample can be produced again bit for bit.
        The label is also the item's class annotation."""
        _, model, _, version = self.generator.split("/")
        source = common_pb2.SyntheticSource(
            generator=f"models/{model}", generator_version=int(version), seed=self.seed, sample_index=int(self.indices[i]),
            label=int(self.labels[i]), truncation=self.truncation,
        )
        if self.attributes is not None:
            source.attributes.extend(int(v) for v in self.attributes[i])
        return common_pb2.Lineage(synthetic=source)


def _batch(response: Any, indices: Sequence[int]) -> SampleBatch:
    return SampleBatch(
        generator=response.generator,
        indices=np.asarray(indices, dtype=np.uint64),
        labels=np.asarray(response.labels, dtype=np.int64),
        samples=tensor_array(response.samples) if response.HasField("samples") else None,
        images=list(response.images),
        attributes=tensor_array(response.attributes) if response.HasField("attributes") else None,
        seed=response.seed,
        truncation=response.truncation if response.HasField("truncation") else None,
    )


def _common(
    class_mix: Mapping[int, float] | str | None,
    attribute_mix: Mapping[str, Mapping[str, float]] | None,
    truncation: float | None,
    format: str,
    layout: str,
) -> dict[str, Any]:
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {', '.join(_FORMATS)}, not {format!r}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be NCHW or NHWC, not {layout!r}")
    fields: dict[str, Any] = {"format": _FORMATS[format], "layout": _LAYOUTS[layout]}
    if isinstance(class_mix, str):  # "balance against" a dataset version: NAME@N or datasets/NAME/versions/N
        name = class_mix if class_mix.startswith("datasets/") else "datasets/{}/versions/{}".format(*class_mix.split("@", 1))
        fields["class_mix"] = gen_pb.ClassMix(balance_against=name)
    elif class_mix:
        fields["class_mix"] = gen_pb.ClassMix(weights=dict(class_mix))
    if attribute_mix:
        fields["attribute_mix"] = [gen_pb.AttributeMix(name=k, weights=dict(v)) for k, v in attribute_mix.items()]
    if truncation is not None:
        fields["truncation"] = truncation
    return fields


def sample_request(
    generator: str, count: int, *, seed: int = 0, start_index: int = 0, labels: Sequence[int] | None = None,
    class_mix: Mapping[int, float] | str | None = None, attribute_mix: Mapping[str, Mapping[str, float]] | None = None,
    truncation: float | None = None, format: str = "float32", layout: str = "NCHW",
) -> rpc.SampleRequest:
    return rpc.SampleRequest(
        generator=generator_name(generator), count=count, seed=seed, start_index=start_index,
        labels=list(labels or []), **_common(class_mix, attribute_mix, truncation, format, layout),
    )


@dataclass
class _StreamState:
    """Where a stream is, so that a broken one reopens exactly after the last sample received,
    and how often it may still be reopened (``backoff``, reset by every batch received)."""

    request: rpc.StreamSamplesRequest
    backoff: Backoff
    counted: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.counted = self.request.count > 0

    @property
    def complete(self) -> bool:
        """A stream of ``count`` samples that broke after its last one: nothing to reopen."""
        return self.counted and self.request.count == 0

    def advance(self, response: rpc.StreamSamplesResponse) -> SampleBatch:
        self.backoff.reset()
        indices = list(response.indices) or list(range(response.start_index, response.start_index + len(response.labels)))
        request = self.request
        request.generator = response.generator  # resume on the resolved version, never a moved alias
        request.start_index = indices[-1] + 1
        if request.count:
            request.count -= len(indices)
        return _batch(response, indices)


def stream_request(
    generator: str, *, seed: int = 0, start_index: int = 0, count: int = 0, batch_size: int = 0,
    shard_index: int = 0, shard_count: int = 0, max_in_flight: int = 0,
    class_mix: Mapping[int, float] | str | None = None, attribute_mix: Mapping[str, Mapping[str, float]] | None = None,
    truncation: float | None = None, format: str = "float32", layout: str = "NCHW",
) -> rpc.StreamSamplesRequest:
    return rpc.StreamSamplesRequest(
        generator=generator_name(generator), seed=seed, start_index=start_index, count=count, batch_size=batch_size,
        shard_index=shard_index, shard_count=shard_count, max_in_flight=max_in_flight,
        **_common(class_mix, attribute_mix, truncation, format, layout),
    )


class SamplingClient(ServiceClient):
    """Blocking client of ``simulacra.sampling.v1.SamplingService``."""

    STUB = rpc_grpc.SamplingServiceStub
    SERVICES = rpc

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> SamplingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- generators -----------------------------------------------------------------
    def list_generators(self, model: str = "", *, loaded_only: bool = False, page_size: int = 0) -> Iterator[gen_pb.Generator]:
        token = ""
        model_name = "" if not model else (model if model.startswith("models/") else f"models/{model}")
        while True:
            response = self._raw.call(
                "ListGenerators", rpc.ListGeneratorsRequest(model=model_name, loaded_only=loaded_only, page_size=page_size, page_token=token)
            )
            yield from response.generators
            token = response.next_page_token
            if not token:
                return

    def get_generator(self, generator: str) -> gen_pb.Generator:
        return self._raw.call("GetGenerator", rpc.GetGeneratorRequest(name=generator_name(generator))).generator

    def load(self, generator: str, *, provider: str = "", warmup_batch_size: int | None = None, pin: bool = False) -> gen_pb.Generator:
        """Load (or, for an alias, reload: the hot-reload trigger) a generator."""
        options = gen_pb.LoadOptions(provider=provider, pin=pin)
        if warmup_batch_size is not None:
            options.warmup_batch_size = warmup_batch_size
        return self._raw.call("LoadGenerator", rpc.LoadGeneratorRequest(name=generator_name(generator), options=options), timeout=None).generator

    def unload(self, generator: str) -> gen_pb.Generator:
        return self._raw.call("UnloadGenerator", rpc.UnloadGeneratorRequest(name=generator_name(generator))).generator

    # ---- samples ----------------------------------------------------------------------
    def sample(self, generator: str, count: int, **options: Any) -> SampleBatch:
        """Samples start_index .. start_index + count - 1 of (generator, seed) in one call.

        Options: seed, start_index, labels, class_mix ({label: weight}, or "DATASET@VERSION" to fill
        the gaps of that version's class histogram), attribute_mix
        {attribute: {value: weight}}, truncation, format ("float32", "uint8", "png"), layout.
        """
        response = self._raw.call("Sample", sample_request(generator, count, **options))
        return _batch(response, list(response.indices))

    def stream(self, generator: str, *, resumes: int = STREAM_RESUMES, **options: Any) -> Iterator[SampleBatch]:
        """Batches of a StreamSamples call; reopened after UNAVAILABLE at the next index.

        Options: those of ``sample`` plus count (0: endless), batch_size, shard_index,
        shard_count, max_in_flight. Stopping the iteration cancels the call.
        """
        state = _StreamState(stream_request(generator, **options), Backoff(self.resume_policy(resumes)))
        while True:
            try:
                for response in self._raw.stream("StreamSamples", state.request):
                    yield state.advance(response)
                return
            except UnavailableError:
                if state.complete:
                    return
                if not state.backoff.sleep():
                    raise


class AsyncSamplingClient(ServiceClient):
    """The asyncio twin of ``SamplingClient`` (use inside an event loop)."""

    RAW = AsyncRawClient
    STUB = rpc_grpc.SamplingServiceStub
    SERVICES = rpc

    async def close(self) -> None:
        await self._raw.close()

    async def __aenter__(self) -> AsyncSamplingClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def list_generators(self, model: str = "", *, loaded_only: bool = False, page_size: int = 0) -> AsyncIterator[gen_pb.Generator]:
        token = ""
        model_name = "" if not model else (model if model.startswith("models/") else f"models/{model}")
        while True:
            response = await self._raw.call(
                "ListGenerators", rpc.ListGeneratorsRequest(model=model_name, loaded_only=loaded_only, page_size=page_size, page_token=token)
            )
            for generator in response.generators:
                yield generator
            token = response.next_page_token
            if not token:
                return

    async def get_generator(self, generator: str) -> gen_pb.Generator:
        return (await self._raw.call("GetGenerator", rpc.GetGeneratorRequest(name=generator_name(generator)))).generator

    async def load(self, generator: str, *, provider: str = "", pin: bool = False) -> gen_pb.Generator:
        request = rpc.LoadGeneratorRequest(name=generator_name(generator), options=gen_pb.LoadOptions(provider=provider, pin=pin))
        return (await self._raw.call("LoadGenerator", request, timeout=None)).generator

    async def unload(self, generator: str) -> gen_pb.Generator:
        return (await self._raw.call("UnloadGenerator", rpc.UnloadGeneratorRequest(name=generator_name(generator)))).generator

    async def sample(self, generator: str, count: int, **options: Any) -> SampleBatch:
        response = await self._raw.call("Sample", sample_request(generator, count, **options))
        return _batch(response, list(response.indices))

    async def stream(self, generator: str, *, resumes: int = STREAM_RESUMES, **options: Any) -> AsyncIterator[SampleBatch]:
        state = _StreamState(stream_request(generator, **options), Backoff(self.resume_policy(resumes)))
        while True:
            try:
                async for response in self._raw.stream("StreamSamples", state.request):
                    yield state.advance(response)
                return
            except UnavailableError:
                if state.complete:
                    return
                if not await state.backoff.sleep_async():
                    raise
