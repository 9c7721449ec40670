"""A real annotation-store for each test: loopback gRPC, over two storage/database pairs.

``annotation`` starts the service with ``ServiceServer`` on 127.0.0.1, port 0,
once with local files + SQLite and once with a real S3 server (SeaweedFS,
a fresh bucket) + a real PostgreSQL (a fresh database), and hands the test
an asyncio stub plus helpers. Images are tiny PNGs made with Pillow.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_client.channel import open_aio_channel
from simulacra_client.errors import SimulacraRpcError, from_rpc_error
from simulacra_services.annotation.service import DEFINITION
from simulacra_services.core.config import Settings
from simulacra_services.core.server import METRICS_OFF, ServiceServer


def png(width: int = 16, height: int = 12, *, mode: str = "RGB", seed: int = 0, plain: bool = False) -> bytes:
    """A small PNG with deterministic pseudo-random pixels (distinct seeds, distinct bytes);
    ``plain``: one colour, so that larger images stay a few hundred bytes."""
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    pixels = np.full(shape, seed % 256, dtype=np.uint8) if plain else rng.integers(0, 256, size=shape, dtype=np.uint8)
    image = Image.fromarray(pixels, mode=mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(width: int = 16, height: int = 12, *, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


def rpc_error(error: BaseException) -> SimulacraRpcError:
    assert isinstance(error, grpc.RpcError), error
    return from_rpc_error(error)


@dataclass
class Annotations:
    """The running service and a stub to it."""

    stub: api_grpc.AnnotationServiceStub
    channel: grpc.aio.Channel
    server: ServiceServer
    backend: str

    async def create_dataset(self, dataset_id: str = "", categories: Sequence[pb.Category] = (), **fields: object) -> pb.Dataset:
        dataset_id = dataset_id or f"ds-{uuid.uuid4().hex[:8]}"
        response = await self.stub.CreateDataset(
            api.CreateDatasetRequest(dataset_id=dataset_id, dataset=pb.Dataset(**fields), categories=list(categories))
        )
        return response.dataset

    async def upload(
        self,
        parent: str,
        batches: Iterable[Sequence[api.UploadItemsRequest.ItemUpload]],
        *,
        request_ids: Sequence[str] | None = None,
        policy: int = 0,
    ) -> list[api.UploadItemsResponse]:
        """Upload batches over one stream; the acknowledgements."""
        requests = [
            api.UploadItemsRequest(
                parent=parent,
                request_id=request_ids[i] if request_ids else str(uuid.uuid4()),
                items=list(batch),
                box_bounds_policy=policy,
            )
            for i, batch in enumerate(batches)
        ]
        call = self.stub.UploadItems(iter(requests))
        return [response async for response in call]

    async def upload_one(self, parent: str, upload: api.UploadItemsRequest.ItemUpload, **kwargs: object) -> str:
        (ack,) = await self.upload(parent, [[upload]], **kwargs)  # type: ignore[arg-type]
        return ack.item_names[0]

    async def list_all(self, parent: str, *, filter: str = "", order_by: str = "", page_size: int = 0) -> list[pb.Item]:
        """Every item of a listing, walking all pages."""
        items: list[pb.Item] = []
        token = ""
        while True:
            response = await self.stub.ListItems(
                api.ListItemsRequest(parent=parent, filter=filter, order_by=order_by, page_size=page_size, page_token=token)
            )
            items.extend(response.items)
            token = response.next_page_token
            if not token:
                return items


def item_upload(
    item_id: str = "",
    *,
    image: bytes | None = None,
    annotations: Sequence[pb.Annotation] = (),
    split: str = "",
    attributes: dict[str, str] | None = None,
    file_name: str = "",
    sha256: str = "",
    **fields: object,
) -> api.UploadItemsRequest.ItemUpload:
    data = png() if image is None and not sha256 else (image or b"")
    return api.UploadItemsRequest.ItemUpload(
        item_id=item_id,
        item=pb.Item(
            image=pb.Image(data=data, sha256=sha256),
            split=split,
            attributes=attributes or {},
            annotations=list(annotations),
            file_name=file_name,
            **fields,
        ),
    )


BACKENDS = ["local-sqlite", pytest.param("s3-postgresql", marks=pytest.mark.postgres)]


def _settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    base = Settings(data_dir=str(tmp_path / "data"), host="127.0.0.1", log_level="WARNING", shutdown_grace_seconds=1.0)
    if request.param == "local-sqlite":
        return base.replace(storage_backend="local", database_url=f"sqlite:///{tmp_path / 'data' / 'annotation.db'}")
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return base.replace(
        storage_backend="s3",
        s3_endpoint=s3.endpoint,
        s3_bucket=bucket,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        database_url=request.getfixturevalue("pg_database"),
    )


@pytest.fixture(params=BACKENDS)
async def annotation(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Annotations]:
    settings = _settings(request, tmp_path)
    server = ServiceServer(DEFINITION, settings, port=0, metrics_port=METRICS_OFF)
    await server.start()
    channel = open_aio_channel(server.address)
    try:
        yield Annotations(api_grpc.AnnotationServiceStub(channel), channel, server, request.param)
    finally:
        await channel.close()
        await server.stop(1.0)
