"""The SDK's raw layer against a scripted server on loopback: gRPC retries UNAVAILABLE on
idempotent methods only, a retried create keeps its request id, deadlines apply per call,
and the one backoff helper stays within its policy."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as rpc
from simulacra_client.api.annotation.v1 import annotation_service_pb2_grpc as rpc_grpc
from simulacra_client.errors import DeadlineExceededError, UnavailableError
from simulacra_client.raw import AsyncRawClient, RawClient, with_request_id
from simulacra_client.retry import NO_RETRY, Backoff, RetryPolicy, idempotent_methods, retry_call

pytestmark = pytest.mark.timeout(60)
FAST = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


class Flaky(rpc_grpc.AnnotationServiceServicer):
    """Fails the first ``failures`` calls of each method with UNAVAILABLE and records every request."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, list[object]] = {}
        self.release = threading.Event()

    def _attempt(self, method: str, request: object, context: grpc.ServicerContext) -> None:
        seen = self.calls.setdefault(method, [])
        seen.append(request)
        if len(seen) <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def GetDataset(self, request: rpc.GetDatasetRequest, context: grpc.ServicerContext) -> rpc.GetDatasetResponse:
        self._attempt("GetDataset", request, context)
        return rpc.GetDatasetResponse(dataset=pb.Dataset(name=request.name))

    def CreateImportJob(self, request: rpc.CreateImportJobRequest, context: grpc.ServicerContext) -> rpc.CreateImportJobResponse:
        self._attempt("CreateImportJob", request, context)
        return rpc.CreateImportJobResponse(import_job=pb.ImportJob(name=f"{request.parent}/importJobs/{request.request_id}"))

    def CommitVersion(self, request: rpc.CommitVersionRequest, context: grpc.ServicerContext) -> rpc.CommitVersionResponse:
        self._attempt("CommitVersion", request, context)  # no request id: not safe to send twice
        return rpc.CommitVersionResponse()

    def DeleteDataset(self, request: rpc.DeleteDatasetRequest, context: grpc.ServicerContext) -> rpc.DeleteDatasetResponse:
        self.release.wait(10)  # holds the call until the test releases it
        return rpc.DeleteDatasetResponse()


@pytest.fixture
def flaky() -> Iterator[tuple[str, Flaky]]:
    servicer = Flaky(failures=2)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc_grpc.add_AnnotationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        servicer.release.set()
        server.stop(0)


def test_reads_and_request_id_methods_are_idempotent_and_others_are_not() -> None:
    methods = dict.fromkeys(m for _, m in idempotent_methods([rpc.DESCRIPTOR.services_by_name["AnnotationService"]]))
    assert {"GetDataset", "ListItems", "StreamItems", "WatchImportJob", "CreateImportJob", "UploadItems"} <= methods.keys()
    assert not {"CommitVersion", "DeleteDataset", "UpdateItem", "CreateDataset"} & methods.keys()


def test_service_config_names_each_method_with_the_policy() -> None:
    config = json.loads(FAST.service_config([("simulacra.x.v1.XService", "GetX")]))
    (entry,) = config["methodConfig"]
    assert entry["name"] == [{"service": "simulacra.x.v1.XService", "method": "GetX"}]
    assert entry["retryPolicy"]["maxAttempts"] == 4 and entry["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_unavailable_is_retried_by_grpc_for_an_idempotent_read(flaky: tuple[str, Flaky]) -> None:
    address, servicer = flaky
    with RawClient.connect(address, rpc_grpc.AnnotationServiceStub, rpc, retry=FAST, timeout=10) as raw:
        response = raw.call("GetDataset", rpc.GetDatasetRequest(name="datasets/a"))
    assert response.dataset.name == "datasets/a"
    assert len(servicer.calls["GetDataset"]) == 3  # two refusals, then the answer


def test_a_retried_create_keeps_one_request_id(flaky: tuple[str, Flaky]) -> None:
    address, servicer = flaky
    with RawClient.connect(address, rpc_grpc.AnnotationServiceStub, rpc, retry=FAST, timeout=10) as raw:
        job = raw.call("CreateImportJob", rpc.CreateImportJobRequest(parent="datasets/a")).import_job
    ids = {request.request_id for request in servicer.calls["CreateImportJob"]}  # type: ignore[attr-defined]
    assert len(servicer.calls["CreateImportJob"]) == 3 and len(ids) == 1
    (request_id,) = ids
    assert request_id and job.name == f"datasets/a/importJobs/{request_id}"


def test_a_method_that_is_not_idempotent_is_not_retried(flaky: tuple[str, Flaky]) -> None:
    address, servicer = flaky
    with RawClient.connect(address, rpc_grpc.AnnotationServiceStub, rpc, retry=FAST, timeout=10) as raw:
        with pytest.raises(UnavailableError):
            raw.call("CommitVersion", rpc.CommitVersionRequest(parent="datasets/a"))
    assert len(servicer.calls["CommitVersion"]) == 1


def test_without_retry_the_first_unavailable_reaches_the_caller(flaky: tuple[str, Flaky]) -> None:
    address, servicer = flaky
    with RawClient.connect(address, rpc_grpc.AnnotationServiceStub, rpc, retry=NO_RETRY, timeout=10) as raw:
        with pytest.raises(UnavailableError):
            raw.call("GetDataset", rpc.GetDatasetRequest(name="datasets/a"))
    assert len(servicer.calls["GetDataset"]) == 1


def test_the_deadline_applies_per_call(flaky: tuple[str, Flaky]) -> None:
    address, _ = flaky
    with RawClient.connect(address, rpc_grpc.AnnotationServiceStub, rpc, retry=FAST, timeout=30) as raw:
        with pytest.raises(DeadlineExceededError):
            raw.call("DeleteDataset", rpc.DeleteDatasetRequest(name="datasets/a"), timeout=0.2)


def test_the_caller_retry_helper_reuses_the_request_and_its_id(flaky: tuple[str, Flaky]) -> None:
    address, servicer = flaky
    servicer.failures = 6  # more than gRPC's own attempts: the helper retries the whole call
    with RawClient.connect(address, rpc_grpc.AnnotationServiceStub, rpc, retry=RetryPolicy(max_attempts=2, initial_backoff=0.01), timeout=10) as raw:
        request = with_request_id(rpc.CreateImportJobRequest(parent="datasets/a"))
        retry_call(lambda: raw.call("CreateImportJob", request), RetryPolicy(max_attempts=5, initial_backoff=0.01, max_backoff=0.02))
    assert len({r.request_id for r in servicer.calls["CreateImportJob"]}) == 1  # type: ignore[attr-defined]
    assert len(servicer.calls["CreateImportJob"]) == 7


def test_the_async_raw_client_retries_and_keeps_the_request_id(flaky: tuple[str, Flaky]) -> None:
    address, servicer = flaky

    async def run() -> str:
        async with AsyncRawClient.connect(address, rpc_grpc.AnnotationServiceStub, rpc, retry=FAST, timeout=10) as raw:
            response = await raw.call("CreateImportJob", rpc.CreateImportJobRequest(parent="datasets/b"))
            return response.import_job.name

    name = asyncio.run(run())
    (request_id,) = {r.request_id for r in servicer.calls["CreateImportJob"]}  # type: ignore[attr-defined]
    assert name == f"datasets/b/importJobs/{request_id}" and len(servicer.calls["CreateImportJob"]) == 3


def test_backoff_delays_grow_within_their_caps_and_run_out() -> None:
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, max_backoff=0.3, multiplier=2)
    backoff = Backoff(policy, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(5)]
    assert delays[4] is None  # four retries after the first try, then no more
    assert all(0 <= d <= cap for d, cap in zip(delays[:4], [0.1, 0.2, 0.3, 0.3]))  # type: ignore[operator]
    backoff.reset()
    assert backoff.next_delay() is not None
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


async def test_a_create_sent_twice_with_its_request_id_makes_one_job_on_a_real_server(tmp_path) -> None:  # noqa: ANN001
    import numpy as np
    from simulacra_client.annotation import AnnotationClient, mnist_files, mnist_import_job
    from simulacra_services.annotation.service import DEFINITION
    from simulacra_services.core.config import Settings
    from simulacra_services.core.server import METRICS_OFF, ServiceServer

    server = ServiceServer(DEFINITION, Settings(data_dir=str(tmp_path / "data"), log_level="WARNING"), port=0, metrics_port=METRICS_OFF)
    await server.start()
    try:
        def run() -> tuple[str, str, list[str]]:
            with AnnotationClient(server.address) as client:
                client.create_dataset("digits")
                digests = client.upload_blobs(list(mnist_files(np.zeros((4, 28, 28), np.uint8), [0, 1, 2, 3])))
                request = with_request_id(rpc.CreateImportJobRequest(parent="datasets/digits", import_job=mnist_import_job(*digests)))
                raw = RawClient(client._channel, rpc_grpc.AnnotationServiceStub, timeout=30)  # noqa: SLF001 - the same channel
                first = raw.call("CreateImportJob", request).import_job.name
                again = raw.call("CreateImportJob", request).import_job.name  # what a retry sends
                client.wait_import_job(first)
                return first, again, [job.name for job in client.list_import_jobs("digits")]

        first, again, jobs = await asyncio.to_thread(run)
    finally:
        await server.stop(0.5)
    assert first == again and jobs == [first]
