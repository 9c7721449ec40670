"""tests/harness.py: a real service over each backend, dependencies without patching, image factories."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from simulacra_services.core import db
from simulacra_services.core.config import Settings
from simulacra_services.core.server import ServiceDefinition
from simulacra_services.core.storage import open_object_store
from simulacra_services.core.storage.local import LocalObjectStore
from simulacra_services.core.storage.s3 import S3ObjectStore
from tests.harness import BACKENDS, backend_settings, jpeg, png, running_service, solid_png


def _probe_definition() -> ServiceDefinition:
    """A service that opens the object store and database of its settings, and reports what it got."""

    async def register(server: grpc.aio.Server, settings: Settings, *, report: list[dict[str, Any]] | None = None):  # noqa: ANN202
        objects = open_object_store(settings)
        engine = db.create_engine(settings.resolved_database_url)
        objects.put("probe/hello", b"hello")
        with engine.connect() as conn:
            dialect = conn.dialect.name
            conn.execute(sa.text("SELECT 1"))
        if report is not None:
            report.append({"store": type(objects), "dialect": dialect, "object": objects.get("probe/hello")})

        async def close() -> None:
            objects.close()
            engine.dispose()

        return close

    return ServiceDefinition(
        name="annotation", title="probe", error_domain="probe.simulacra.dev", service_names=("simulacra.test.v1.Probe",), register=register
    )


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return backend_settings(request, tmp_path, request.param)


async def test_the_service_runs_over_the_backend_and_gets_its_dependencies(settings: Settings) -> None:
    report: list[dict[str, Any]] = []
    async with running_service(_probe_definition(), settings, report=report) as service:
        health = health_pb2_grpc.HealthStub(service.channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service="simulacra.test.v1.Probe"))
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        assert service.address.startswith("127.0.0.1:") and int(service.address.rsplit(":", 1)[1]) > 0
    (seen,) = report
    assert seen["object"] == b"hello"
    if service.backend == "s3":
        assert (seen["store"], seen["dialect"]) == (S3ObjectStore, "postgresql")
    else:
        assert (seen["store"], seen["dialect"]) == (LocalObjectStore, "sqlite")


async def test_the_server_is_stopped_on_exit(tmp_path: Path) -> None:
    async with running_service(_probe_definition(), "local", data_dir=tmp_path) as service:
        address = service.address
    channel = grpc.aio.insecure_channel(address)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await channel.close()


async def test_an_unknown_dependency_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        async with running_service(_probe_definition(), "local", data_dir=tmp_path, no_such_thing=1):
            pass


def test_settings_need_a_known_backend(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with pytest.raises(ValueError):
        backend_settings(request, tmp_path, "ftp")


def _decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_image_factories() -> None:
    image = _decoded(png(20, 10, seed=3))
    assert (image.format, image.size, image.mode) == ("PNG", (20, 10), "RGB")
    assert png(20, 10, seed=3) == png(20, 10, seed=3)
    assert png(20, 10, seed=3) != png(20, 10, seed=4)
    assert _decoded(png(8, 8, mode="L")).mode == "L"
    assert len(png(1000, 1000, plain=True)) < 10_000
    assert _decoded(jpeg(32, 24)).format == "JPEG" and _decoded(jpeg(32, 24)).size == (32, 24)
    solid = _decoded(solid_png(5, 4, (10, 20, 30)))
    assert solid.size == (5, 4) and {tuple(p) for p in np.asarray(solid).reshape(-1, 3)} == {(10, 20, 30)}
    grey = _decoded(solid_png(3, 3, 77))
    assert grey.mode == "L" and set(np.asarray(grey).ravel()) == {77}
