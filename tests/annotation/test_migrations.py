"""The annotation-store's migration chain on SQLite and PostgreSQL: jobs written before 0004
(the old annotation_jobs shape) are carried over into core/jobs' shape."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine

from simulacra_services.annotation.persistence.store import AnnotationStore
from simulacra_services.annotation.persistence.tables import jobs as jobs_table
from simulacra_services.core import db
from simulacra_services.core.db.migrate import alembic_config
from simulacra_services.core.jobs import JobError, JobStore, Progress
from simulacra_services.core.storage import LocalObjectStore

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.create_engine(database_url)
    yield engine
    engine.dispose()


def _upgrade_to(engine: Engine, revision: str) -> None:
    with db.transaction(engine) as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def test_jobs_of_the_old_table_are_carried_over(engine: Engine) -> None:
    _upgrade_to(engine, "0003")
    request = {"mnist": {"images": {"path": "i.idx", "sha256": "a" * 64, "size_bytes": "10"}}}
    result = {"items_created": 3, "categories_created": 1}
    error = {"code": 10, "reason": "INTERRUPTED", "message": "stopped", "metadata": {"k": "v"}}
    old = [
        ("done", "import", "mnist", "JOB_STATE_SUCCEEDED", json.dumps(request), json.dumps(result), "", False, T0, T0),
        ("failed", "export", "COCO", "JOB_STATE_FAILED", json.dumps({"version": "datasets/old/versions/1"}), "", json.dumps(error), False, T0, T0),
        ("stopping", "import", "coco", "JOB_STATE_CANCELLING", "{}", "", "", True, T0, None),
    ]
    with db.transaction(engine) as conn:
        conn.execute(
            text(
                "INSERT INTO annotation_datasets (dataset_id, display_name, description, labels, create_time, update_time,"
                " seq, item_count, annotation_count, latest_version) VALUES ('old', '', '', '{}', :t, :t, 0, 0, 0, 0)"
            ),
            {"t": T0.replace(tzinfo=None)},
        )
        pk = conn.execute(text("SELECT id FROM annotation_datasets WHERE dataset_id = 'old'")).scalar_one()
        for job_id, kind, format, state, req, res, err, cancel, start, end in old:
            conn.execute(
                text(
                    "INSERT INTO annotation_jobs (job_id, dataset, kind, format, state, progress_done, progress_total,"
                    " progress_message, request, result, error, cancel_requested, create_time, update_time, start_time, end_time)"
                    " VALUES (:job_id, :dataset, :kind, :format, :state, 3, 4, 'm', :request, :result, :error, :cancel,"
                    " :t, :t, :start, :end)"
                ),
                {
                    "job_id": job_id, "dataset": pk, "kind": kind, "format": format, "state": state, "request": req,
                    "result": res, "error": err, "cancel": cancel, "t": T0.replace(tzinfo=None),
                    "start": start.replace(tzinfo=None), "end": None if end is None else end.replace(tzinfo=None),
                },
            )
    db.migrate(engine)
    jobs = JobStore(engine, jobs_table)
    done = jobs.get("import", "done", "datasets/old")
    assert (done.state, done.label, done.attempt, done.revision) == ("JOB_STATE_SUCCEEDED", "mnist", 1, 1)
    assert done.spec == {"format": "mnist", "job": request} and done.result == result and done.error is None
    assert done.progress == Progress(3, 4, "m") and done.create_time == T0 and done.end_time == T0
    failed = jobs.get("export", "failed", "datasets/old")
    assert failed.error == JobError(10, "INTERRUPTED", "stopped", {"k": "v"}) and failed.result == {}
    assert failed.spec == {"format": "COCO", "job": {"version": "datasets/old/versions/1"}}
    stopping = jobs.get("import", "stopping", "datasets/old")
    assert (stopping.state, stopping.requested, stopping.owner, stopping.end_time) == ("JOB_STATE_CANCELLING", "cancel", "", None)
    # A carried-over job is claimable like any other: the next runner finishes its cancellation.
    assert jobs.claimable(["import"], "runner", limit=10) == ["stopping"]


def _dataset(conn, dataset_id: str) -> int:  # noqa: ANN001
    conn.execute(
        text(
            "INSERT INTO annotation_datasets (dataset_id, display_name, description, labels, create_time, update_time,"
            " seq, item_count, annotation_count, latest_version) VALUES (:d, '', '', '{}', :t, :t, 0, 0, 0, 0)"
        ),
        {"d": dataset_id, "t": T0.replace(tzinfo=None)},
    )
    return conn.execute(text("SELECT id FROM annotation_datasets WHERE dataset_id = :d"), {"d": dataset_id}).scalar_one()


_OLD_REQUESTS = [
    ("cats", "upload", "batch-1", "a" * 64, {"item_ids": ["x", "y"]}),
    ("cats", "import", "job1-0", "b" * 64, {"item_ids": ["z"], "category_ids": [3]}),
    ("cat", "upload", "batch-1", "c" * 64, {"item_ids": []}),
]


def _old_requests_at_0004(engine: Engine) -> None:
    """A database at 0004 whose annotation_requests holds ``_OLD_REQUESTS``."""
    _upgrade_to(engine, "0004")
    with db.transaction(engine) as conn:
        pks = {name: _dataset(conn, name) for name in ("cats", "cat")}
        for dataset_id, scope, request_id, digest, response in _OLD_REQUESTS:
            conn.execute(
                text(
                    "INSERT INTO annotation_requests (dataset, scope, request_id, payload_sha256, response, create_time)"
                    " VALUES (:d, :s, :r, :p, :response, :t)"
                ),
                {"d": pks[dataset_id], "s": scope, "r": request_id, "p": digest, "response": json.dumps(response),
                 "t": T0.replace(tzinfo=None)},
            )


def test_request_records_of_annotation_requests_are_carried_into_idempotency_keys(engine: Engine, tmp_path: Path) -> None:
    _old_requests_at_0004(engine)
    db.migrate(engine)
    with engine.connect() as conn:
        for dataset_id, scope, request_id, digest, response in _OLD_REQUESTS:
            key = f"annotation:datasets/{dataset_id}:{scope}"
            assert db.recorded_response(conn, key, request_id, digest) == response
        created = conn.execute(text("SELECT created_at FROM idempotency_keys")).scalars().all()
    assert len(created) == 3 and "annotation_requests" not in inspect(engine).get_table_names()
    store = AnnotationStore(engine, LocalObjectStore(tmp_path / "objects"))
    # The store reads the carried records: a retried batch replays, an import's writes are found.
    assert store.replayed_batch("cats", "batch-1", "a" * 64).item_ids == ["x", "y"]
    assert store.import_writes("cats", "job1") == (["z"], [3])


def test_downgrade_puts_request_records_back(engine: Engine) -> None:
    _old_requests_at_0004(engine)
    _upgrade_to(engine, "0006")
    with db.transaction(engine) as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0004")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT d.dataset_id, r.scope, r.request_id, r.payload_sha256 FROM annotation_requests AS r"
                 " JOIN annotation_datasets AS d ON d.id = r.dataset ORDER BY d.dataset_id, r.scope")
        ).all()
    assert sorted(tuple(row) for row in rows) == sorted(r[:4] for r in _OLD_REQUESTS)
