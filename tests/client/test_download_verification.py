"""download_blob checks what arrives against the sha256 it asked for: a server (or a path)
that hands back other bytes gets DATA_LOSS CHECKSUM_MISMATCH, and nothing lands at the
destination, not even a partial file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from simulacra_client.annotation import AnnotationClient
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as rpc_grpc
from simulacra_client.errors import SimulacraRpcError

pytestmark = pytest.mark.timeout(60)
GOOD = b"the blob the client asked for" * 1000
DIGEST = hashlib.sha256(GOOD).hexdigest()


class Corrupting(rpc_grpc.AnnotationServiceServicer):
    """Serves GOOD for DIGEST, with one byte flipped when ``corrupt``."""

    def __init__(self) -> None:
        self.corrupt = True

    def ReadBlob(self, request: rpc.ReadBlobRequest, context: grpc.ServicerContext) -> Iterator[rpc.ReadBlobResponse]:
        data = bytearray(GOOD)
        if self.corrupt:
            data[len(data) // 2] ^= 0x01
        for offset in range(0, len(data), 4096):
            yield rpc.ReadBlobResponse(offset=offset, data=bytes(data[offset : offset + 4096]), size_bytes=len(data))


@pytest.fixture
def serving() -> Iterator[tuple[str, Corrupting]]:
    servicer = Corrupting()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    rpc_grpc.add_AnnotationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        server.stop(0)


def test_a_corrupted_download_is_refused_and_leaves_nothing(serving: tuple[str, Corrupting], tmp_path: Path) -> None:
    address, servicer = serving
    target = tmp_path / "out" / "blob.bin"
    with AnnotationClient(address) as client:
        with pytest.raises(SimulacraRpcError) as raised:
            client.download_blob(DIGEST, target)
        error = raised.value
        assert (error.code, error.reason, error.metadata["sha256"]) == (grpc.StatusCode.DATA_LOSS, "CHECKSUM_MISMATCH", DIGEST)
        assert error.metadata["actual"] != DIGEST
        assert list(target.parent.iterdir()) == []  # no blob.bin, no .part

        # A stale file with other content at the destination is not taken for the blob either.
        target.write_bytes(b"stale")
        with pytest.raises(SimulacraRpcError):
            client.download_blob(DIGEST, target)
        assert target.read_bytes() == b"stale"

        servicer.corrupt = False
        assert client.download_blob(DIGEST, target) == len(GOOD)
    assert target.read_bytes() == GOOD and sorted(p.name for p in target.parent.iterdir()) == ["blob.bin"]
