"""simulacra.sampling.v1.SamplingService: each RPC validates, calls the serving layer, converts.

Domain errors (``core.errors``) raised here or below become precise gRPC statuses in the server's
error interceptor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator

import grpc

from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api
from simulacra_client.api.sampling.v1 import sampling_service_pb2_grpc as api_grpc
from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.registry import ModelVersionRecord, parse_model_name, parse_model_version_name
from simulacra_services.sampling.api import convert
from simulacra_services.sampling.api.balance import ClassBalancer
from simulacra_services.sampling.config import SamplingConfig
from simulacra_services.sampling.runtime.encode import Format
from simulacra_services.sampling.serving.pool import GeneratorPool
from simulacra_services.sampling.serving.sampler import produce
from simulacra_services.sampling.serving.spec import SampleSpec, check_count, check_labels, check_shard, check_spec, shard_indices
from simulacra_services.sampling.serving.stream import StreamPlan, stream_batches


class SamplingServicer(api_grpc.SamplingServiceServicer):
    def __init__(self, pool: GeneratorPool, config: SamplingConfig, max_message_bytes: int, balancer: ClassBalancer) -> None:
        self.pool = pool
        self.balancer = balancer
        self.config = config
        self.metrics = pool.metrics
        self._max_message_bytes = max_message_bytes
        self._open_streams = 0

    # ---- generators ---------------------------------------------------------------
    async def ListGenerators(self, request: api.ListGeneratorsRequest, context: grpc.aio.ServicerContext) -> api.ListGeneratorsResponse:
        model = parse_model_name(request.model) if request.model else ""
        fingerprint = pagination.fingerprint(rpc="ListGenerators", model=model, loaded_only=request.loaded_only)
        page = pagination.PageRequest.parse(
            request.page_size, request.page_token, fingerprint,
            validate=lambda c: isinstance(c, list) and len(c) == 2 and pagination.is_str(c[0]) and pagination.is_int(c[1]),
        )
        cursor = tuple(page.cursor) if page.cursor else None
        if request.loaded_only:
            rows = [(g.record, self._aliases_of_loaded(g.record)) for g in self.pool.loaded() if not model or g.record.model == model]
            rows = [r for r in rows if cursor is None or (r[0].model, -r[0].version) > (cursor[0], -cursor[1])][: page.size + 1]
        else:
            rows = await asyncio.to_thread(self._registry_rows, model, cursor, page.size + 1)
        rows, token = page.finish(rows, lambda row: [row[0].model, row[0].version])
        views = [self.pool.view(record, aliases) for record, aliases in rows]
        return api.ListGeneratorsResponse(
            generators=[convert.generator(v, self.config.max_sample_count) for v in views], next_page_token=token
        )

    def _aliases_of_loaded(self, record: ModelVersionRecord) -> tuple[str, ...]:
        return self.pool.aliases_served(record.model, record.version)

    def _registry_rows(self, model: str, cursor: tuple | None, limit: int) -> list[tuple[ModelVersionRecord, tuple[str, ...]]]:
        registry = self.pool.registry
        rows: list[tuple[ModelVersionRecord, tuple[str, ...]]] = []

        def add_versions(name: str, after_version: int | None) -> None:
            record = registry.get_model(name)
            for version in registry.list_versions(name, after_version=after_version, limit=limit - len(rows)):
                aliases = tuple(sorted(a for a, v in record.aliases.items() if v == version.version))
                rows.append((version, aliases))

        after_model = ""
        if cursor is not None:
            add_versions(cursor[0], cursor[1])
            after_model = cursor[0]
        elif model:
            add_versions(model, None)
        while not model and len(rows) < limit:
            batch = registry.list_models(after=after_model, limit=20)
            if not batch:
                break
            for record in batch:
                if len(rows) >= limit:
                    break
                add_versions(record.model, None)
            after_model = batch[-1].model
        return rows[:limit]

    async def GetGenerator(self, request: api.GetGeneratorRequest, context: grpc.aio.ServicerContext) -> api.GetGeneratorResponse:
        view = await self._view(request.name)
        return api.GetGeneratorResponse(generator=convert.generator(view, self.config.max_sample_count))

    async def _view(self, name: str):  # noqa: ANN202 - GeneratorView
        model, ref = parse_model_version_name(name)
        served = self.pool.served_version(model, ref)
        record = await self.pool.resolve(model, str(served) if served is not None else ref)
        model_record = await asyncio.to_thread(self.pool.registry.get_model, model)
        aliases = tuple(sorted(a for a, v in model_record.aliases.items() if v == record.version))
        return self.pool.view(record, aliases)

    async def LoadGenerator(self, request: api.LoadGeneratorRequest, context: grpc.aio.ServicerContext) -> api.LoadGeneratorResponse:
        generator = await self.pool.load(request.name, convert.load_request(request.options))
        view = await self._view(generator.name)
        return api.LoadGeneratorResponse(generator=convert.generator(view, self.config.max_sample_count))

    async def UnloadGenerator(self, request: api.UnloadGeneratorRequest, context: grpc.aio.ServicerContext) -> api.UnloadGeneratorResponse:
        record = await self.pool.unload(request.name)
        view = await self._view(record.name)
        return api.UnloadGeneratorResponse(generator=convert.generator(view, self.config.max_sample_count))

    # ---- samples ------------------------------------------------------------------
    async def _balanced(self, request, spec: SampleSpec, signature) -> SampleSpec:  # noqa: ANN001
        """``class_mix.balance_against``: the weights that fill the gaps of that dataset version."""
        reference = request.class_mix.balance_against
        if not reference:
            return spec
        weights = await self.balancer.weights(reference, signature)
        return dataclasses.replace(spec, class_mix=weights)

    def _check_size(self, count: int, signature, fmt: Format) -> None:  # noqa: ANN001
        per_sample = math.prod(signature.sample_shape) * (4 if fmt is Format.FLOAT32 else 1)
        if count * per_sample > self._max_message_bytes - 64 * 1024:
            raise errors.OutOfRange(
                "RESPONSE_TOO_LARGE",
                f"{count} samples of {per_sample} bytes exceed the message limit of {self._max_message_bytes} bytes: ask for fewer",
                {"count": count, "limit_bytes": self._max_message_bytes},
            )

    async def Sample(self, request: api.SampleRequest, context: grpc.aio.ServicerContext) -> api.SampleResponse:
        started = time.perf_counter()
        spec = convert.spec_of(request)
        count = check_count(request.count, self.config.max_sample_count)
        indices = shard_indices(request.start_index, 0, 1, count)
        async with self.pool.lease(request.generator) as generator:
            try:
                spec = await self._balanced(request, spec, generator.signature)
                checked = check_spec(spec, generator.signature)
                labels = check_labels(request.labels, count, generator.signature) if request.labels else None
                self._check_size(count, generator.signature, spec.format)
                batch = await produce(generator, checked, indices, labels, offload=count >= self.config.offload_samples)
            except errors.SimulacraError as error:
                self.metrics.observe_error(generator.name, error.reason, time.perf_counter() - started)
                raise
            response = convert.sample_response(batch, spec)
            self.metrics.observe_request(generator.name, count, time.perf_counter() - started)
            return response

    async def StreamSamples(self, request: api.StreamSamplesRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[api.StreamSamplesResponse]:
        spec = convert.spec_of(request)
        batch_size = check_count(request.batch_size or self.config.default_stream_batch_size, self.config.max_sample_count, "batch_size")
        max_in_flight = request.max_in_flight or self.config.default_max_in_flight
        if not 1 <= max_in_flight <= self.config.max_in_flight:
            raise errors.OutOfRange(
                "MAX_IN_FLIGHT_OUT_OF_RANGE",
                f"max_in_flight must be within 1..{self.config.max_in_flight}, got {max_in_flight}",
                {"max_in_flight": max_in_flight, "limit": self.config.max_in_flight},
            )
        check_shard(request.shard_index, request.shard_count)
        if self._open_streams >= self.config.max_concurrent_streams:
            raise errors.ResourceExhausted(
                "TOO_MANY_STREAMS",
                f"this server already serves {self._open_streams} streams, its limit; retry later",
                {"limit": self.config.max_concurrent_streams},
            )
        plan = StreamPlan(
            start_index=request.start_index,
            count=request.count,
            batch_size=batch_size,
            shard_index=request.shard_index,
            shard_count=max(1, request.shard_count),
            max_in_flight=max_in_flight,
        )
        self._open_streams += 1
        self.metrics.streams.inc()
        try:
            async with self.pool.lease(request.generator) as generator:
                spec = await self._balanced(request, spec, generator.signature)
                checked = check_spec(spec, generator.signature)
                self._check_size(batch_size, generator.signature, spec.format)
                offload = batch_size >= self.config.offload_samples
                last = time.perf_counter()
                async for batch in stream_batches(generator, checked, plan, offload=offload):
                    response = convert.stream_response(batch, spec)
                    now = time.perf_counter()
                    self.metrics.observe_request(generator.name, len(batch.indices), now - last)
                    last = now
                    yield response
        finally:
            self._open_streams -= 1
            self.metrics.streams.dec()
