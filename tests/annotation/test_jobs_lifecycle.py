"""Job resources: progress, watching, cancelling, idempotent creation, listing, restarts.

Jobs are stopped at known points with ``JobService.chunk_hook`` (a gate the
worker thread passes at each chunk boundary), never by timing.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from simulacra_client.annotation import JobCancelledError, idx_bytes
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.annotation.v1 import annotation_service_pb2 as api
from simulacra_client.api.common.v1 import common_pb2
from simulacra_client.errors import SimulacraRpcError

from simulacra_services.annotation.api import jobs as jobs_module
from simulacra_services.annotation.persistence.store import AnnotationStore
from simulacra_services.annotation.persistence.tables import jobs as jobs_table
from simulacra_services.annotation.service import DEFINITION
from simulacra_services.core import db
from simulacra_services.core.config import Settings
from simulacra_services.core.jobs import JobStore
from simulacra_services.core.server import METRICS_OFF, ServiceServer
from simulacra_services.core.storage import open_object_store

from .conftest import Annotations, item_upload, png, rpc_error
from .jobs_support import annotation, annotation_dependencies, job_service, recorded_job_services, sdk  # noqa: F401

pytestmark = pytest.mark.timeout(180)

STATE_ORDER = [common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING, common_pb2.JOB_STATE_SUCCEEDED]


class Gate:
    """Holds the first job that reaches (phase, chunk) until ``release`` is set."""

    def __init__(self, phase: str, chunk: int) -> None:
        self.phase, self.chunk = phase, chunk
        self.reached = threading.Event()
        self.release = threading.Event()
        self.job_id = ""

    def __call__(self, job_id: str, phase: str, chunk: int) -> None:
        if (phase, chunk) == (self.phase, self.chunk) and not self.reached.is_set():
            self.job_id = job_id
            self.reached.set()
            assert self.release.wait(60), "the test never released the gate"

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, 60), f"no job reached {self.phase} {self.chunk}"


@pytest.fixture
def gates() -> Iterator[list[Gate]]:
    """Gates of the test, opened at teardown so that a failed test leaves no job waiting."""
    made: list[Gate] = []
    yield made
    for gate in made:
        gate.release.set()


def gate_at(gates: list[Gate], service: jobs_module.JobService, phase: str, chunk: int) -> Gate:
    gate = Gate(phase, chunk)
    gates.append(gate)
    service.chunk_hook = gate
    return gate


def digits(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8), np.arange(count) % 10


async def create_mnist_job(annotation: Annotations, dataset: str, count: int, *, seed: int = 0, request_id: str = "") -> pb.ImportJob:
    """Upload ``count`` random digits and create (not wait for) their import job."""
    images, labels = digits(count, seed)
    with sdk(annotation) as client:
        image_digest, label_digest = await asyncio.to_thread(client.upload_blobs, [idx_bytes(images), idx_bytes(labels.astype(np.uint8))])
    source = pb.MnistImportSource(
        images=pb.ManifestFile(path="images.idx", sha256=image_digest), labels=pb.ManifestFile(path="labels.idx", sha256=label_digest)
    )
    response = await annotation.stub.CreateImportJob(
        api.CreateImportJobRequest(parent=f"datasets/{dataset}", import_job=pb.ImportJob(mnist=source), request_id=request_id or str(uuid.uuid4()))
    )
    return response.import_job


async def watch(annotation: Annotations, name: str) -> list[pb.ImportJob]:
    return [r.import_job async for r in annotation.stub.WatchImportJob(api.WatchImportJobRequest(name=name))]


async def dataset_of(annotation: Annotations, name: str) -> pb.Dataset:
    return (await annotation.stub.GetDataset(api.GetDatasetRequest(name=f"datasets/{name}"))).dataset


# ---- progress and watching ----------------------------------------------------------------


async def test_watch_streams_monotonic_progress_and_ends_with_succeeded(annotation: Annotations, job_service: jobs_module.JobService) -> None:
    job_service.chunk_size = 40
    await annotation.create_dataset("watched")
    created = await create_mnist_job(annotation, "watched", 300)
    assert created.state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING)
    snapshots = await watch(annotation, created.name)
    states = [s.state for s in snapshots]
    assert states == sorted(states, key=STATE_ORDER.index) and states[-1] == common_pb2.JOB_STATE_SUCCEEDED
    assert common_pb2.JOB_STATE_SUCCEEDED not in states[:-1]
    done = [s.progress.done for s in snapshots]
    assert done == sorted(done) and done[-1] == 300 and snapshots[-1].progress.total == 300
    assert len(snapshots) >= 3  # the state at once, progress on the way, the end
    final = snapshots[-1]
    assert final.result.items_created == 300 and final.result.categories_created == 10
    assert final.start_time.seconds and final.end_time.ToDatetime() >= final.start_time.ToDatetime()


async def test_watching_a_finished_job_sends_its_final_state_once(annotation: Annotations) -> None:
    await annotation.create_dataset("finished")
    created = await create_mnist_job(annotation, "finished", 20)
    await watch(annotation, created.name)
    again = await watch(annotation, created.name)
    assert len(again) == 1 and again[0].state == common_pb2.JOB_STATE_SUCCEEDED
    assert again[0].result.items_created == 20
    got = (await annotation.stub.GetImportJob(api.GetImportJobRequest(name=created.name))).import_job
    assert got.state == common_pb2.JOB_STATE_SUCCEEDED and got.mnist.images.path == "images.idx"


# ---- cancelling ----------------------------------------------------------------------------


async def test_cancel_while_checking_stops_the_job_and_writes_nothing(annotation: Annotations, job_service: jobs_module.JobService, gates: list[Gate]) -> None:
    job_service.chunk_size = 50
    gate = gate_at(gates, job_service, "check", 1)
    await annotation.create_dataset("cancel-check")
    created = await create_mnist_job(annotation, "cancel-check", 400)
    await gate.wait_reached()
    cancelling = (await annotation.stub.CancelImportJob(api.CancelImportJobRequest(name=created.name))).import_job
    assert cancelling.state == common_pb2.JOB_STATE_CANCELLING
    gate.release.set()
    final = (await watch(annotation, created.name))[-1]
    assert final.state == common_pb2.JOB_STATE_CANCELLED
    assert final.progress.done < 400 and not final.HasField("error")
    dataset = await dataset_of(annotation, "cancel-check")
    assert (dataset.item_count, dataset.category_count) == (0, 0)


async def test_cancel_while_writing_removes_the_chunks_already_written(annotation: Annotations, job_service: jobs_module.JobService, gates: list[Gate]) -> None:
    job_service.chunk_size = 50
    gate = gate_at(gates, job_service, "write", 1)
    await annotation.create_dataset("cancel-write")
    created = await create_mnist_job(annotation, "cancel-write", 200)
    await gate.wait_reached()
    during = await dataset_of(annotation, "cancel-write")
    assert (during.item_count, during.category_count) == (50, 10)  # one whole chunk, no less
    await annotation.stub.CancelImportJob(api.CancelImportJobRequest(name=created.name))
    gate.release.set()
    with sdk(annotation) as client:
        with pytest.raises(JobCancelledError) as caught:
            await asyncio.to_thread(client.wait_import_job, created.name)
    assert caught.value.job.state == common_pb2.JOB_STATE_CANCELLED
    after = await dataset_of(annotation, "cancel-write")
    assert (after.item_count, after.category_count) == (0, 0)


async def test_progress_tracks_the_writing_phase(annotation: Annotations, job_service: jobs_module.JobService, gates: list[Gate]) -> None:
    job_service.chunk_size = 50
    gate = gate_at(gates, job_service, "write", 1)
    await annotation.create_dataset("progress-write")
    created = await create_mnist_job(annotation, "progress-write", 200)
    await gate.wait_reached()  # every item checked, one chunk of four written
    during = (await annotation.stub.GetImportJob(api.GetImportJobRequest(name=created.name))).import_job
    assert during.state == common_pb2.JOB_STATE_RUNNING
    # Each item counts half when checked and half when written: 200 checked + 50 written of 2 x 200.
    assert (during.progress.done, during.progress.total) == (125, 200)
    assert "50 of 200" in during.progress.message
    gate.release.set()
    final = (await watch(annotation, created.name))[-1]
    assert (final.state, final.progress.done, final.progress.total) == (common_pb2.JOB_STATE_SUCCEEDED, 200, 200)


# ---- committing while an import is unfinished ------------------------------------------------


async def test_commit_is_refused_while_an_import_writes_and_works_once_it_has_ended(
    annotation: Annotations, job_service: jobs_module.JobService, gates: list[Gate]
) -> None:
    job_service.chunk_size = 50
    gate = gate_at(gates, job_service, "write", 1)
    await annotation.create_dataset("commit-during")
    created = await create_mnist_job(annotation, "commit-during", 200)
    await gate.wait_reached()
    assert (await dataset_of(annotation, "commit-during")).item_count == 50  # one chunk of four written
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.CommitVersion(api.CommitVersionRequest(parent="datasets/commit-during"))
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "IMPORT_IN_PROGRESS")
    assert (error.metadata["dataset"], error.metadata["job"]) == ("datasets/commit-during", created.name)
    assert (await dataset_of(annotation, "commit-during")).latest_version == 0
    gate.release.set()
    assert (await watch(annotation, created.name))[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    committed = await annotation.stub.CommitVersion(api.CommitVersionRequest(parent="datasets/commit-during"))
    assert committed.created and (committed.version.version, committed.version.item_count) == (1, 200)


async def test_a_commit_after_a_cancelled_import_makes_no_new_version(
    annotation: Annotations, job_service: jobs_module.JobService, gates: list[Gate]
) -> None:
    job_service.chunk_size = 50
    dataset = await annotation.create_dataset("undone")
    await annotation.upload(dataset.name, [[item_upload("kept", image=png(seed=3))]])
    first = await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    assert first.created and first.version.version == 1
    gate = gate_at(gates, job_service, "write", 1)
    created = await create_mnist_job(annotation, "undone", 200)
    await gate.wait_reached()  # 10 categories and 50 items written, each write a new sequence number
    await annotation.stub.CancelImportJob(api.CancelImportJobRequest(name=created.name))
    gate.release.set()
    assert (await watch(annotation, created.name))[-1].state == common_pb2.JOB_STATE_CANCELLED
    again = await annotation.stub.CommitVersion(api.CommitVersionRequest(parent=dataset.name))
    assert not again.created and again.version == first.version
    after = await dataset_of(annotation, "undone")
    assert (after.latest_version, after.item_count, after.category_count) == (1, 1, 0)


async def test_a_queued_job_is_cancelled_at_once(annotation: Annotations, job_service: jobs_module.JobService, gates: list[Gate]) -> None:
    job_service.runner.max_running = 1  # one job at a time, so that the second one waits
    gate = gate_at(gates, job_service, "start", 0)
    await annotation.create_dataset("queue")
    first = await create_mnist_job(annotation, "queue", 10, seed=1)
    await gate.wait_reached()
    second = await create_mnist_job(annotation, "queue", 10, seed=2)
    assert second.state == common_pb2.JOB_STATE_QUEUED
    cancelled = (await annotation.stub.CancelImportJob(api.CancelImportJobRequest(name=second.name))).import_job
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED
    gate.release.set()
    assert (await watch(annotation, first.name))[-1].state == common_pb2.JOB_STATE_SUCCEEDED
    assert (await watch(annotation, second.name))[-1].state == common_pb2.JOB_STATE_CANCELLED
    assert (await dataset_of(annotation, "queue")).item_count == 10


async def test_cancelling_a_finished_job_returns_it_unchanged(annotation: Annotations) -> None:
    await annotation.create_dataset("done")
    created = await create_mnist_job(annotation, "done", 5)
    await watch(annotation, created.name)
    response = (await annotation.stub.CancelImportJob(api.CancelImportJobRequest(name=created.name))).import_job
    assert response.state == common_pb2.JOB_STATE_SUCCEEDED and response.result.items_created == 5


# ---- creation, listing, names ----------------------------------------------------------------


async def test_create_with_the_same_request_id_returns_the_same_job(annotation: Annotations) -> None:
    await annotation.create_dataset("retry")
    request_id = str(uuid.uuid4())
    first = await create_mnist_job(annotation, "retry", 8, request_id=request_id)
    again = await create_mnist_job(annotation, "retry", 8, request_id=request_id)
    assert again.name == first.name
    with pytest.raises(grpc.RpcError) as caught:
        await create_mnist_job(annotation, "retry", 9, request_id=request_id)
    error = rpc_error(caught.value)
    assert (error.code, error.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    await watch(annotation, first.name)
    listed = (await annotation.stub.ListImportJobs(api.ListImportJobsRequest(parent="datasets/retry"))).import_jobs
    assert [job.name for job in listed] == [first.name]
    assert (await dataset_of(annotation, "retry")).item_count == 8


async def test_list_filters_pages_and_spans_datasets(annotation: Annotations) -> None:
    await annotation.create_dataset("list-a")
    await annotation.create_dataset("list-b")
    names = []
    for index, dataset in enumerate(["list-a", "list-a", "list-b"]):
        job = await create_mnist_job(annotation, dataset, 3, seed=index)
        await watch(annotation, job.name)
        names.append(job.name)
    bad = await create_mnist_job(annotation, "list-a", 3, seed=0)  # the same files again: every item skipped
    await watch(annotation, bad.name)

    async def every(parent: str, filter: str = "", page_size: int = 1) -> list[pb.ImportJob]:
        jobs, token = [], ""
        while True:
            page = await annotation.stub.ListImportJobs(api.ListImportJobsRequest(parent=parent, filter=filter, page_size=page_size, page_token=token))
            jobs.extend(page.import_jobs)
            token = page.next_page_token
            if not token:
                return jobs

    in_a = await every("datasets/list-a")
    assert [j.name for j in in_a] == [bad.name, names[1], names[0]]  # newest first, one per page
    everywhere = {j.name for j in await every("datasets/-", page_size=0)}
    assert set(names) | {bad.name} <= everywhere
    succeeded = await every("datasets/list-a", 'state = "SUCCEEDED" AND create_time > "2000-01-01T00:00:00Z"')
    assert len(succeeded) == 3
    assert await every("datasets/list-a", "state = RUNNING OR state = QUEUED") == []
    assert [j.name for j in await every("datasets/-", 'format = "mnist" AND NOT state = "FAILED"', page_size=2) if j.name.startswith("datasets/list-b")] == [names[2]]
    for bad_filter in ('state = "SLEEPING"', "colour = 1", "state ="):
        with pytest.raises(grpc.RpcError) as caught:
            await every("datasets/list-a", bad_filter)
        assert rpc_error(caught.value).reason == "INVALID_FILTER"
    with pytest.raises(grpc.RpcError) as caught:
        await annotation.stub.ListImportJobs(api.ListImportJobsRequest(parent="datasets/list-b", page_token="garbage.token"))
    assert rpc_error(caught.value).reason == "INVALID_PAGE_TOKEN"


async def test_unknown_and_malformed_job_names(annotation: Annotations) -> None:
    await annotation.create_dataset("names")
    cases = [
        (annotation.stub.GetImportJob(api.GetImportJobRequest(name="datasets/names/importJobs/abc")), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND"),
        (annotation.stub.GetExportJob(api.GetExportJobRequest(name="datasets/names/exportJobs/abc")), grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND"),
        (annotation.stub.GetImportJob(api.GetImportJobRequest(name="datasets/names/exportJobs/abc")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"),
        (annotation.stub.CancelImportJob(api.CancelImportJobRequest(name="datasets/Bad/importJobs/x")), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"),
        (annotation.stub.GetImportJob(api.GetImportJobRequest(name="datasets/nobody/importJobs/abc")), grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND"),
    ]
    for call, code, reason in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await call
        assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (code, reason)
    with pytest.raises(grpc.RpcError) as caught:
        _ = [r async for r in annotation.stub.WatchImportJob(api.WatchImportJobRequest(name="datasets/names/importJobs/abc"))]
    assert rpc_error(caught.value).reason == "JOB_NOT_FOUND"


async def test_export_jobs_check_format_and_version(annotation: Annotations) -> None:
    await annotation.create_dataset("exports")
    await create_mnist_job(annotation, "exports", 4)
    cases = [
        (pb.ExportJob(version="datasets/exports/versions/1"), "INVALID_EXPORT_FORMAT", grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ExportJob(version="datasets/other/versions/1", format=pb.EXPORT_FORMAT_COCO), "VERSION_OF_OTHER_DATASET", grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ExportJob(version="datasets/exports/versions/latest", format=pb.EXPORT_FORMAT_COCO), "VERSION_NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        (pb.ExportJob(version="datasets/exports", format=pb.EXPORT_FORMAT_COCO), "INVALID_NAME", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for job, reason, code in cases:
        with pytest.raises(grpc.RpcError) as caught:
            await annotation.stub.CreateExportJob(api.CreateExportJobRequest(parent="datasets/exports", export_job=job))
        assert (rpc_error(caught.value).code, rpc_error(caught.value).reason) == (code, reason)


# ---- restarts ---------------------------------------------------------------------------------


def _local_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=str(tmp_path / "data"), log_level="WARNING", shutdown_grace_seconds=0.5)


def _store(settings: Settings) -> AnnotationStore:
    engine = db.create_engine(settings.resolved_database_url)
    db.migrate(engine)
    return AnnotationStore(engine, open_object_store(settings))


@pytest.fixture
async def local_server(tmp_path: Path, recorded_job_services: list) -> AsyncIterator[ServiceServer]:
    definition = DEFINITION.with_dependencies(job_service=recorded_job_services)
    server = ServiceServer(definition, _local_settings(tmp_path), port=0, metrics_port=METRICS_OFF)
    await server.start()
    yield server
    await server.stop(0.5)  # a no-op when the test stopped it


async def _ended(get: Any, name: str) -> Any:
    """The job once the restarted service's runner has dealt with it."""
    while True:
        job = await asyncio.to_thread(get, name)
        if job.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED):
            return job
        await asyncio.sleep(0.02)


async def test_jobs_left_unfinished_by_a_previous_process_are_marked_interrupted(tmp_path: Path) -> None:
    settings = _local_settings(tmp_path)
    store = await asyncio.to_thread(_store, settings)
    await asyncio.to_thread(store.create_dataset, "restart")
    jobs = JobStore(store.engine, jobs_table)
    spec = {"format": "mnist", "job": {}}
    # Rows as a previous process left them: one running (its runner gone), one queued, one being cancelled.
    running, _ = await asyncio.to_thread(jobs.create, "import", spec, parent="datasets/restart")
    await asyncio.to_thread(jobs.claim, running.job_id, "previous-process", 0.01)
    queued, _ = await asyncio.to_thread(jobs.create, "export", {"format": "COCO", "job": {}}, parent="datasets/restart")
    cancelling, _ = await asyncio.to_thread(jobs.create, "import", spec, parent="datasets/restart")
    await asyncio.to_thread(jobs.claim, cancelling.job_id, "previous-process", 0.01)
    await asyncio.to_thread(jobs.request_cancel, "import", cancelling.job_id)
    store.engine.dispose()
    server = ServiceServer(DEFINITION, settings, port=0, metrics_port=METRICS_OFF)
    await server.start()
    try:
        annotation = Annotations(None, None, server, "local-sqlite")  # type: ignore[arg-type]
        with sdk(annotation) as client:
            imported = await _ended(client.get_import_job, f"datasets/restart/importJobs/{running.job_id}")
            exported = await _ended(client.get_export_job, f"datasets/restart/exportJobs/{queued.job_id}")
            cancelled = await _ended(client.get_import_job, f"datasets/restart/importJobs/{cancelling.job_id}")
    finally:
        await server.stop(0.5)
    assert imported.state == common_pb2.JOB_STATE_FAILED
    assert (imported.error.reason, imported.error.code) == ("INTERRUPTED", grpc.StatusCode.ABORTED.value[0])
    assert "again" in imported.error.message
    # A job the previous process had not started is simply run (here its empty request fails it).
    assert (exported.state, exported.error.reason) == (common_pb2.JOB_STATE_FAILED, "INVALID_NAME")
    assert cancelled.state == common_pb2.JOB_STATE_CANCELLED and not cancelled.HasField("error")


async def test_stopping_the_service_interrupts_an_import_and_undoes_its_writes(
    tmp_path: Path, local_server: ServiceServer, recorded_job_services: list, gates: list[Gate]
) -> None:
    (service,) = recorded_job_services
    service.chunk_size = 20
    gate = gate_at(gates, service, "write", 2)
    annotation = Annotations(None, None, local_server, "local-sqlite")  # type: ignore[arg-type]
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "stopping")
        images, labels = digits(100)
        image_digest, label_digest = await asyncio.to_thread(client.upload_blobs, [idx_bytes(images), idx_bytes(labels.astype(np.uint8))])
        source = pb.MnistImportSource(images=pb.ManifestFile(path="i", sha256=image_digest), labels=pb.ManifestFile(path="l", sha256=label_digest))
        created = await asyncio.to_thread(client.create_import_job, "stopping", pb.ImportJob(mnist=source))
        await gate.wait_reached()
        written = await asyncio.to_thread(client.get_dataset, "stopping")
    assert written.item_count == 40
    stopping = asyncio.create_task(local_server.stop(0.5))
    while not service.runner.closing:  # wait for the close hook to begin (an event, not a duration)
        await asyncio.sleep(0.01)
    gate.release.set()
    await stopping
    store = await asyncio.to_thread(_store, _local_settings(tmp_path))
    try:
        dataset = await asyncio.to_thread(store.get_dataset, "stopping")
        job = await asyncio.to_thread(JobStore(store.engine, jobs_table).get, "import", created.name.rsplit("/", 1)[1])
    finally:
        store.engine.dispose()
    assert (dataset.item_count, dataset.category_count) == (0, 0)
    assert job.state == "JOB_STATE_FAILED" and job.error is not None and job.error.reason == "INTERRUPTED"


async def test_the_sdk_raises_a_typed_error_for_a_job_it_cannot_find(local_server: ServiceServer) -> None:
    annotation = Annotations(None, None, local_server, "local-sqlite")  # type: ignore[arg-type]
    with sdk(annotation) as client:
        await asyncio.to_thread(client.create_dataset, "typed")
        with pytest.raises(SimulacraRpcError) as caught:
            await asyncio.to_thread(client.wait_import_job, "datasets/typed/importJobs/missing")
    assert (caught.value.code, caught.value.reason) == (grpc.StatusCode.NOT_FOUND, "JOB_NOT_FOUND")
