"""One way to run a real service in a test: ``running_service(definition, backend)``.

Every service test runs its service as production does (``ServiceServer`` on
127.0.0.1, port 0, health, reflection, interceptors), over each storage and
database pair it supports:

- ``"local"``: local files + SQLite, both under the test's ``tmp_path``;
- ``"s3"``: a real S3 server (SeaweedFS, a fresh bucket) + a real PostgreSQL
  (a fresh database), from ``tests/fixtures/s3.py`` and ``postgres.py``.

Usage, as a parametrized fixture of a service's tests (``conftest.py``)::

    from tests.harness import BACKENDS, backend_settings, running_service

    @pytest.fixture(params=BACKENDS)
    async def models(request, tmp_path):
        settings = backend_settings(request, tmp_path, request.param)
        async with running_service(DEFINITION, settings) as service:
            yield ModelsStub(service.channel)

or, in one test, ``async with running_service(DEFINITION, settings, clock=fake) as service``:
keyword arguments after the settings are the service's *dependencies*,
passed to its ``register`` hook as keyword arguments (see
``ServiceDefinition.with_dependencies``), so a test hands a service what it
would otherwise build itself (a runner with small chunks, an observer of the
runners it builds) without patching any of its classes.

``running_service`` also accepts a backend name instead of settings when the
test has no fixtures to lend (``"local"`` only; S3 needs the fixtures):
``running_service(DEFINITION, "local", data_dir=tmp_path)``.

A service as its own process, for tests that kill it (SIGKILL) and start it again:
``with service_process("annotation", settings) as (process, address): ...`` runs
``simulacra serve NAME`` on a free loopback port and yields once it reports SERVING.

Image factories: ``png``/``jpeg`` (seeded pseudo-random pixels, distinct
seeds give distinct bytes) and ``solid_png`` (one colour, tiny at any size).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from simulacra_client.channel import HealthStatus, check_health, open_aio_channel, open_channel
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceDefinition, ServiceServer

LOCAL = "local"
S3 = "s3"
BACKENDS = [pytest.param(LOCAL, id="local-sqlite"), pytest.param(S3, id="s3-postgresql", marks=pytest.mark.postgres)]
"""Parameters of a backend-parametrized fixture: ``@pytest.fixture(params=BACKENDS)``."""


@dataclass
class RunningService:
    """A started service: its server, an open ``grpc.aio`` channel to it and the settings it runs with."""

    server: ServiceServer
    channel: grpc.aio.Channel
    settings: Settings
    backend: str

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, for clients that open their own channel (the SDK)."""
        return self.server.address


def base_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings of a test service: loopback, quiet logs, a short shutdown grace, data under ``data_dir``."""
    settings = Settings(data_dir=str(data_dir), host="127.0.0.1", log_level="WARNING", shutdown_grace_seconds=1.0)
    return settings.replace(**overrides) if overrides else settings


def local_settings(data_dir: Path, database: str = "service.db", **overrides: Any) -> Settings:
    """Local files + SQLite, both under ``data_dir``."""
    return base_settings(data_dir, storage_backend="local", database_url=f"sqlite:///{data_dir / database}", **overrides)


def backend_settings(request: pytest.FixtureRequest, tmp_path: Path, backend: str, **overrides: Any) -> Settings:
    """Settings for ``backend`` (``"local"`` or ``"s3"``); S3 and PostgreSQL come from the session fixtures."""
    data_dir = tmp_path / "data"
    if backend == LOCAL:
        return local_settings(data_dir, **overrides)
    if backend != S3:
        raise ValueError(f"unknown backend {backend!r}; use {LOCAL!r} or {S3!r}")
    s3 = request.getfixturevalue("s3_server")
    return base_settings(
        data_dir,
        storage_backend="s3",
        s3_endpoint=s3.endpoint,
        s3_bucket=request.getfixturevalue("s3_bucket"),
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        database_url=request.getfixturevalue("pg_database"),
        **overrides,
    )


def backend_of(settings: Settings) -> str:
    return S3 if settings.storage_backend == "s3" else LOCAL


@asynccontextmanager
async def running_service(
    definition: ServiceDefinition,
    backend: Settings | str,
    *,
    data_dir: Path | None = None,
    **dependencies: Any,
) -> AsyncIterator[RunningService]:
    """Start ``definition`` on 127.0.0.1:0 over ``backend``; stop it (1 s grace) on exit.

    ``backend``: settings (from ``backend_settings``) or ``"local"`` with ``data_dir``.
    ``dependencies``: keyword arguments for the service's ``register`` hook.
    """
    if isinstance(backend, Settings):
        settings = backend
    elif backend == LOCAL and data_dir is not None:
        settings = local_settings(data_dir)
    else:
        raise ValueError("running_service needs settings (backend_settings) or 'local' with data_dir")
    if dependencies:
        definition = definition.with_dependencies(**dependencies)
    server = ServiceServer(definition, settings, port=0, metrics_port=METRICS_OFF)
    await server.start()
    channel = open_aio_channel(server.address)
    try:
        yield RunningService(server, channel, settings, backend_of(settings))
    finally:
        await channel.close()
        await server.stop(1.0)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def service_process(
    name: str,
    settings: Settings,
    *,
    start_timeout: float = 60.0,
    port: int | None = None,
    lease_seconds: float | None = 1.0,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``simulacra serve NAME`` with ``settings`` (``port``, else a free one; no metrics; job leases of
    ``lease_seconds``, 1 s by default so that a restarted process takes a dead one's jobs over at once,
    None: the settings' own); yields (process, address) once it reports SERVING, and SIGKILLs it on
    exit if it still runs. ``env``: more variables (a service's own, e.g. SIMULACRA_SAMPLING_*);
    ``log``: a file that receives the process's output (else stderr is kept for a failed start)."""
    port = port or free_port()
    changes: dict[str, Any] = {f"{name}_port": port, f"{name}_metrics_port": 0}
    if lease_seconds is not None:
        changes["job_lease_seconds"] = lease_seconds
    environment = {**os.environ, **settings.replace(**changes).to_env(), **(env or {})}
    command = [sys.executable, "-m", "simulacra_services.cli.main", "serve", name]
    if log is not None:
        with log.open("ab") as output:
            process = subprocess.Popen(command, env=environment, stdout=output, stderr=subprocess.STDOUT)
    else:
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    address = f"127.0.0.1:{port}"
    channel = open_channel(address)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                said = log.read_bytes() if log is not None else process.stderr.read()  # type: ignore[union-attr]
                raise AssertionError(f"the service exited: {said.decode(errors='replace')[-3000:]}")
            try:
                if check_health(channel, timeout=1) == HealthStatus.SERVING:
                    break
            except grpc.RpcError:  # not up yet
                pass
            assert time.monotonic() < deadline, f"the service did not start within {start_timeout:.0f} s"
            time.sleep(0.1)
        yield process, address
    finally:
        channel.close()
        if process.poll() is None:
            process.kill()
        process.wait(30)
        if process.stderr is not None:
            process.stderr.close()


def _encode(pixels: np.ndarray, mode: str, image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format=image_format)
    return buffer.getvalue()


def pixels(width: int, height: int, *, mode: str = "RGB", seed: int = 0) -> np.ndarray:
    """Seeded pseudo-random uint8 pixels, (height, width, 3) for RGB, (height, width) for L."""
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def png(width: int = 16, height: int = 12, *, mode: str = "RGB", seed: int = 0, plain: bool = False) -> bytes:
    """A small PNG with deterministic pseudo-random pixels (distinct seeds, distinct bytes);
    ``plain``: one colour (``seed % 256``), so that larger images stay a few hundred bytes."""
    if plain:
        shape = (height, width, 3) if mode == "RGB" else (height, width)
        return _encode(np.full(shape, seed % 256, dtype=np.uint8), mode, "PNG")
    return _encode(pixels(width, height, mode=mode, seed=seed), mode, "PNG")


def solid_png(width: int, height: int, colour: tuple[int, int, int] | int = (0, 0, 0)) -> bytes:
    """A PNG of one colour (an RGB triple, or an int for a grey-scale image)."""
    if isinstance(colour, int):
        return _encode(np.full((height, width), colour, dtype=np.uint8), "L", "PNG")
    return _encode(np.broadcast_to(np.array(colour, dtype=np.uint8), (height, width, 3)).copy(), "RGB", "PNG")


def jpeg(width: int = 16, height: int = 12, *, seed: int = 0) -> bytes:
    """A small JPEG with deterministic pseudo-random pixels."""
    return _encode(pixels(width, height, seed=seed), "RGB", "JPEG")


# ---------------------------------------------------------------------------
# Benchmarks in their quick mode


ROOT = Path(__file__).resolve().parents[1]


def run_quick_benchmark(script: str, tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``bench/<script> --quick <args> --json FILE`` from the repository root: the figures it
    wrote and what it printed. Fails the test, with the output's tail, if the benchmark fails."""
    out = tmp_path / f"{Path(script).stem}.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--quick", *args, "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout
