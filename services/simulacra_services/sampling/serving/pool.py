"""The generators this server has in memory, and which version each alias is served by.

- A version is loaded from the registry (sha256 verified by ``ModelRegistry.read_onnx``) by an
  explicit LoadGenerator or by the first call that needs it.
- A *binding* maps (model, alias or "latest") to the version that serves it here. It moves only
  after the new version has loaded: a failed load leaves the old version serving. The swap is one
  dict assignment on the event loop (atomic for every caller); calls that already hold a lease on
  the old version finish on it, and its session is freed after the last one (``LoadedGenerator``).
- Bindings are refreshed by LoadGenerator (EXPLICIT) and, with ``poll_seconds`` > 0, by polling the
  registry (Triton's POLL mode).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from simulacra_services.core import errors
from simulacra_services.core.aio import stop_task
from simulacra_services.core.registry import LATEST, ModelRegistry, ModelVersionRecord, parse_model_version_name
from simulacra_services.sampling.config import SamplingConfig
from simulacra_services.sampling.runtime.session import GeneratorSession, SessionOptions, choose_providers
from simulacra_services.sampling.serving.generator import LoadedGenerator
from simulacra_services.sampling.serving.metrics import SamplingMetrics

_log = logging.getLogger("simulacra.sampling.pool")

Key = tuple[str, int]


@dataclass(frozen=True)
class LoadRequest:
    provider: str = ""
    warmup_batch_size: int | None = None
    pin: bool = False


@dataclass(frozen=True)
class GeneratorView:
    """What Get/List report about one version."""

    record: ModelVersionRecord
    aliases: tuple[str, ...]
    loaded: LoadedGenerator | None
    failure: errors.SimulacraError | None


class GeneratorPool:
    def __init__(self, registry: ModelRegistry, config: SamplingConfig, metrics: SamplingMetrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self._loaded: dict[Key, LoadedGenerator] = {}
        self._bindings: dict[tuple[str, str], int] = {}
        self._failures: dict[Key, errors.SimulacraError] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._poller: asyncio.Task[None] | None = None

    # ---- life cycle ---------------------------------------------------------------
    async def start(self) -> None:
        if self.config.poll_seconds > 0:
            self._poller = asyncio.ensure_future(self._poll_forever())

    async def close(self) -> None:
        if self._poller is not None:
            await stop_task(self._poller)
        generators = list(self._loaded.values())
        self._loaded.clear()
        for generator in generators:
            generator.retire()
        await asyncio.gather(*(g.closed() for g in generators), return_exceptions=True)

    # ---- lookups ------------------------------------------------------------------
    async def resolve(self, model: str, ref: str) -> ModelVersionRecord:
        return await asyncio.to_thread(self.registry.resolve, model, ref)

    def served_version(self, model: str, ref: str) -> int | None:
        """The version that serves ``ref`` here now, without asking the registry (None: unknown)."""
        if ref.isdigit():
            return int(ref)
        return self._bindings.get((model, ref))

    @asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[LoadedGenerator]:
        """The generator that serves ``name`` now, loaded if needed, held until the block ends."""
        generator = await self.acquire(name)
        async with generator.leased():
            yield generator

    async def acquire(self, name: str) -> LoadedGenerator:
        """Like ``lease`` but the caller must call ``release_lease`` itself."""
        model, ref = parse_model_version_name(name)
        for _ in range(3):  # a version retired between lookup and lease is simply looked up again
            version = self.served_version(model, ref)
            generator = self._loaded.get((model, version)) if version is not None else None
            if generator is None:
                record = await self.resolve(model, ref if version is None else str(version))
                generator = await self._load(record, LoadRequest())
                if not ref.isdigit():
                    self._bindings.setdefault((model, ref), record.version)
            if not generator.retired:
                generator.take_lease()
                return generator
        raise errors.Unavailable("GENERATOR_RELOADING", f"{name} is being reloaded; retry", {"generator": name})

    # ---- load / unload ------------------------------------------------------------
    async def load(self, name: str, request: LoadRequest) -> LoadedGenerator:
        """Resolve ``name`` afresh, load that version and bind the alias to it (hot reload).

        Options apply when the version is loaded; a version already in memory keeps its session
        (unload it first to change its provider), but a bad provider is refused either way.
        """
        model, ref = parse_model_version_name(name)
        if request.provider:
            choose_providers(request.provider)
        record = await self.resolve(model, ref)
        generator = await self._load(record, request)
        if request.pin and not generator.pinned:
            generator.pinned = True
        if not ref.isdigit():
            self._bind(model, ref, record.version)
        return generator

    async def unload(self, name: str) -> ModelVersionRecord:
        """Unbind and retire the version that serves ``name``; its session goes once its calls end."""
        model, ref = parse_model_version_name(name)
        version = self.served_version(model, ref)
        record = await self.resolve(model, ref if version is None else str(version))
        for key in [k for k, v in self._bindings.items() if k[0] == model and v == record.version]:
            del self._bindings[key]
        generator = self._loaded.pop((model, record.version), None)
        if generator is not None:
            generator.retire()
        self._failures.pop((model, record.version), None)
        return record

    def _bind(self, model: str, ref: str, version: int) -> None:
        old = self._bindings.get((model, ref))
        self._bindings[(model, ref)] = version
        if old is not None and old != version:
            _log.info("models/%s/versions/%s now served by version %d (was %d)", model, ref, version, old)
            self._retire_if_unused(model, old)

    def _retire_if_unused(self, model: str, version: int) -> None:
        generator = self._loaded.get((model, version))
        if generator is None or generator.pinned:
            return
        if any(v == version for (m, _), v in self._bindings.items() if m == model):
            return
        del self._loaded[(model, version)]
        generator.retire()

    async def _load(self, record: ModelVersionRecord, request: LoadRequest) -> LoadedGenerator:
        key = (record.model, record.version)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            existing = self._loaded.get(key)
            if existing is not None and not existing.retired:
                return existing
            if len(self._loaded) >= self.config.max_loaded_generators:
                raise errors.ResourceExhausted(
                    "TOO_MANY_GENERATORS",
                    f"this server holds {len(self._loaded)} generators, its limit: unload one first",
                    {"limit": self.config.max_loaded_generators},
                )
            options = self.config.session
            if request.provider:
                options = replace(options, provider=request.provider)
            if request.warmup_batch_size is not None:
                options = replace(options, warmup_batch_size=max(0, min(request.warmup_batch_size, self.config.batching.max_batch_size)))
            try:
                onnx = await asyncio.to_thread(self.registry.read_onnx, record)
                session = await asyncio.to_thread(_open_session, onnx, record, options)
            except errors.SimulacraError as error:
                if not isinstance(error, errors.InvalidArgument):
                    self._failures[key] = error
                raise
            generator = LoadedGenerator(record, session, self.config.batching, self.metrics, pinned=request.pin)
            self._loaded[key] = generator
            self._failures.pop(key, None)
            return generator

    # ---- polling (Triton's POLL mode) -----------------------------------------------
    async def poll_once(self) -> None:
        """Re-resolve every bound alias and "latest"; load and swap those that moved."""
        for (model, ref), version in list(self._bindings.items()):
            try:
                record = await self.resolve(model, ref)
                if record.version != version:
                    await self._load(record, LoadRequest())
                    self._bind(model, ref, record.version)
            except errors.SimulacraError as error:
                _log.warning("polling models/%s/versions/%s: %s", model, ref, error.message)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_seconds)
            await self.poll_once()

    # ---- views ----------------------------------------------------------------------
    def view(self, record: ModelVersionRecord, aliases: tuple[str, ...]) -> GeneratorView:
        key = (record.model, record.version)
        return GeneratorView(record, aliases, self._loaded.get(key), self._failures.get(key))

    def loaded(self) -> list[LoadedGenerator]:
        return sorted(self._loaded.values(), key=lambda g: (g.record.model, -g.record.version))

    def aliases_served(self, model: str, version: int) -> tuple[str, ...]:
        return tuple(sorted(ref for (m, ref), v in self._bindings.items() if m == model and v == version and ref != LATEST))


def _open_session(onnx: bytes, record: ModelVersionRecord, options: SessionOptions) -> GeneratorSession:
    return GeneratorSession(onnx, record.signature, options)
