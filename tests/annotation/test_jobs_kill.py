"""An import is all or nothing even when its process is killed (kill -9) while it runs.

The annotation-store runs as a real process (``simulacra serve annotation``, a one-second job
lease) over local files + SQLite and over S3 (SeaweedFS) + PostgreSQL. The test starts an MNIST import, kills the process with SIGKILL at several
points (while the input is being checked, right after the first chunk was written, halfway through
the writing), starts the service again on the same data and checks that the new process took the
job over once the dead one's lease ran out, removed every item and category the job had written,
and ended it FAILED with INTERRUPTED; and that the same import then runs through on that dataset.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest
import sqlalchemy as sa
from simulacra_client.annotation import AnnotationClient, idx_bytes
from simulacra_client.api.annotation.v1 import annotation_pb2 as pb
from simulacra_client.api.common.v1 import common_pb2

from simulacra_services.core import db
from simulacra_services.core.config import Settings
from tests.harness import BACKENDS, backend_settings
from tests.harness import service_process as harness_process

pytestmark = pytest.mark.timeout(300)

DIGITS = 3000  # 12 chunks of 256: a write phase long enough to be caught in the middle
TERMINAL = (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED, common_pb2.JOB_STATE_CANCELLED)


@contextmanager
def service_process(settings: Settings) -> Iterator[tuple[subprocess.Popen[bytes], AnnotationClient]]:
    """``simulacra serve annotation`` with ``settings``; stopped (SIGKILL) on exit if still running."""
    with harness_process("annotation", settings) as (process, address):
        client = AnnotationClient(address, timeout=60)
        try:
            yield process, client
        finally:
            client.close()


def _wait(what: str, condition: Callable[[], bool], limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


def _start_import(client: AnnotationClient, dataset: str) -> str:
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(DIGITS, 28, 28), dtype=np.uint8)
    labels = (np.arange(DIGITS) % 10).astype(np.uint8)
    image_digest, label_digest = client.upload_blobs([idx_bytes(images), idx_bytes(labels)])
    source = pb.MnistImportSource(
        images=pb.ManifestFile(path="images.idx", sha256=image_digest), labels=pb.ManifestFile(path="labels.idx", sha256=label_digest)
    )
    return client.create_import_job(dataset, pb.ImportJob(mnist=source)).name


def _written(settings: Settings, dataset: str) -> int:
    """Items in the working state, read straight from the database of a dead process."""
    engine = db.create_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            count = conn.execute(
                sa.text("SELECT item_count FROM annotation_datasets WHERE dataset_id = :dataset"), {"dataset": dataset}
            ).scalar_one()
    finally:
        engine.dispose()
    return int(count)


def _items(client: AnnotationClient, dataset: str) -> int:
    return int(client.get_dataset(dataset).item_count)


KILL_POINTS: dict[str, Callable[[AnnotationClient, str, str], bool]] = {
    "while checking": lambda client, dataset, job: client.get_import_job(job).state == common_pb2.JOB_STATE_RUNNING,
    "after the first chunk": lambda client, dataset, job: _items(client, dataset) > 0,
    "halfway through writing": lambda client, dataset, job: _items(client, dataset) >= DIGITS // 2,
}


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_import_killed_at_any_point_leaves_nothing_and_can_run_again(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    settings = backend_settings(request, tmp_path, backend)
    caught_writing = 0
    for index, (point, reached) in enumerate(KILL_POINTS.items()):
        dataset = f"killed-{index}"  # one database and one store for all points: each point its own dataset
        with service_process(settings) as (process, client):
            client.create_dataset(dataset)
            job = _start_import(client, dataset)
            _wait(f"the import to be {point}", lambda: reached(client, dataset, job))
            os.kill(process.pid, signal.SIGKILL)
            process.wait(30)
        left = _written(settings, dataset)  # what the dead process had written (read from its database)
        if 0 < left < DIGITS:
            caught_writing += 1
        with service_process(settings) as (_, client):
            _wait("the job to end", lambda: client.get_import_job(job).state in TERMINAL)
            ended = client.get_import_job(job)
            if ended.state == common_pb2.JOB_STATE_SUCCEEDED:  # it finished before the kill landed
                assert _items(client, dataset) == DIGITS, point
                continue
            assert (ended.state, ended.error.reason, ended.error.code) == (
                common_pb2.JOB_STATE_FAILED, "INTERRUPTED", grpc.StatusCode.ABORTED.value[0]
            ), point
            after = client.get_dataset(dataset)
            assert (after.item_count, after.category_count) == (0, 0), point
            assert list(client.list_items(dataset)) == [] and client.list_categories(dataset) == [], point
            if index == len(KILL_POINTS) - 1:
                # The dataset is as it was: the same import runs through.
                again = client.wait_import_job(_start_import(client, dataset))
                assert (again.state, again.result.items_created, again.result.categories_created) == (
                    common_pb2.JOB_STATE_SUCCEEDED, DIGITS, 10
                )
                assert _items(client, dataset) == DIGITS
    assert caught_writing >= 1, "every kill landed outside the write phase: the test did not test a partial import"
