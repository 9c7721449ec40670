"""A real annotation-store for each test: loopback gRPC, over two storage/database pairs.

``annotation`` starts the service with ``tests.harness.running_service``
(127.0.0.1, port 0), once with local files + SQLite and once with a real S3
server (SeaweedFS, a fresh bucket) + a real PostgreSQL (a fresh database),
and hands the test an asyncio stub plus helpers. ``annotation_dependencies``
(empty unless a test module overrides it) goes to the service's ``register``.
Images are tiny PNGs made with Pillow (the harness's factories).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as api_grpc
from simulacra_client.errors import SimulacraRpcError, from_rpc_error
from simulacra_services.annotation.service import DEFINITION
from simulacra_services.core.server import ServiceServer
from tests.harness import BACKENDS, backend_settings, jpeg, png, running_service

__all__ = ["BACKENDS", "Annotations", "item_upload", "jpeg", "png", "rpc_error"]


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


_BACKEND_IDS = {"local": "local-sqlite", "s3": "s3-postgresql"}


@pytest.fixture
def annotation_dependencies() -> dict[str, Any]:
    """Keyword arguments for the service's ``register`` (a test module may override this fixture)."""
    return {}


@pytest.fixture(params=BACKENDS)
async def annotation(
    request: pytest.FixtureRequest, tmp_path: Path, annotation_dependencies: dict[str, Any]
) -> AsyncIterator[Annotations]:
    settings = backend_settings(request, tmp_path, request.param)
    async with running_service(DEFINITION, settings, **annotation_dependencies) as service:
        yield Annotations(
            api_grpc.AnnotationServiceStub(service.channel), service.channel, service.server, _BACKEND_IDS[service.backend]
        )
