"""core.jobs.store on SQLite and PostgreSQL: creation and request ids, claims and leases, fencing,
cancel/pause/resume transitions, listing. (The runner is tested in test_jobs_runner.py.)"""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.operations import Operations

from simulacra_services.core import db, errors
from simulacra_services.core.jobs import (
    CANCELLED,
    CANCELLING,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    JobError,
    JobStore,
    Progress,
    create_job_table_v1,
    job_table,
)

from .jobs_support import jobs_engine, store  # noqa: F401 - fixtures

OWNER_A, OWNER_B = "runner-a", "runner-b"


def test_create_get_and_json_payloads(store: JobStore) -> None:
    spec = {"steps": 3, "nested": {"names": ["a", "b"]}, "ratio": 0.5, "flag": True, "none": None}
    record, created = store.create("train", spec, parent="models/m", label="cvae")
    assert created and record.label == "cvae"
    assert (record.state, record.kind, record.parent, record.attempt) == (QUEUED, "train", "models/m", 0)
    assert record.spec == spec and record.result == {} and record.error is None and record.checkpoint is None
    assert record.progress == Progress() and record.owner == "" and record.revision == 1
    assert record.create_time.tzinfo is not None and record.start_time is None and record.end_time is None
    assert store.get("train", record.job_id) == record
    assert store.get("train", record.job_id, "models/m") == record


def test_get_refuses_another_kind_or_parent(store: JobStore) -> None:
    record, _ = store.create("train", {}, parent="models/m")
    for kind, parent in (("export", None), ("train", "models/other")):
        with pytest.raises(errors.NotFound) as caught:
            store.get(kind, record.job_id, parent)
        assert caught.value.reason == "JOB_NOT_FOUND"
        assert caught.value.metadata["job"].endswith(f"/{kind}Jobs/{record.job_id}")
    with pytest.raises(errors.NotFound):
        store.get("train", "nope")


def test_request_id_returns_the_same_job_and_refuses_another_spec(store: JobStore) -> None:
    first, created = store.create("train", {"a": 1}, parent="models/m", request_id="r-1")
    again, created_again = store.create("train", {"a": 1}, parent="models/m", request_id="r-1")
    assert created and not created_again and again.job_id == first.job_id
    with pytest.raises(errors.AlreadyExists) as caught:
        store.create("train", {"a": 2}, parent="models/m", request_id="r-1")
    assert caught.value.reason == "REQUEST_ID_REUSED"
    # The same request id under another parent or kind is another request.
    other, created_other = store.create("train", {"a": 2}, parent="models/n", request_id="r-1")
    assert created_other and other.job_id != first.job_id
    # No request id: always a new job.
    assert store.create("train", {"a": 1})[0].job_id != store.create("train", {"a": 1})[0].job_id


def test_concurrent_creates_with_one_request_id_make_one_job(store: JobStore) -> None:
    barrier = threading.Barrier(6)
    results: list[tuple[str, bool]] = []
    failures: list[BaseException] = []

    def create() -> None:
        try:
            barrier.wait()
            record, created = store.create("train", {"x": 1}, request_id="same")
            results.append((record.job_id, created))
        except BaseException as error:  # noqa: BLE001
            failures.append(error)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_oversized_spec_and_request_id_are_invalid_argument(store: JobStore) -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        store.create("train", {"blob": "x" * (4 * 1024 * 1024 + 1)})
    assert caught.value.reason == "JOB_SPEC_TOO_LARGE"
    with pytest.raises(errors.InvalidArgument) as caught:
        store.create("train", {}, request_id="r" * 129)
    assert caught.value.reason == "INVALID_REQUEST_ID"
    with pytest.raises(errors.InvalidArgument) as caught:
        store.create("train", {}, request_id="two words")  # the one rule of core.db.idempotency
    assert caught.value.reason == "INVALID_REQUEST_ID"


def test_claim_takes_a_queued_job_once(store: JobStore) -> None:
    record, _ = store.create("train", {})
    assert store.claimable(["train"], OWNER_A, limit=10) == [record.job_id]
    pair = store.claim(record.job_id, OWNER_A, 30)
    assert pair is not None
    before, after = pair
    assert before.state == QUEUED and after.state == RUNNING
    assert (after.owner, after.attempt) == (OWNER_A, 1)
    assert after.start_time is not None and after.lease_expire_time > after.start_time
    assert store.claim(record.job_id, OWNER_B, 30) is None
    assert store.claimable(["train"], OWNER_B, limit=10) == []
    assert store.claimable(["other"], OWNER_A, limit=10) == []


def test_of_many_simultaneous_claims_exactly_one_wins(store: JobStore) -> None:
    record, _ = store.create("train", {})
    barrier = threading.Barrier(8)
    wins: list[str] = []

    def claim(owner: str) -> None:
        barrier.wait()
        if store.claim(record.job_id, owner, 30) is not None:
            wins.append(owner)

    threads = [threading.Thread(target=claim, args=(f"runner-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert store.get("train", record.job_id).owner == wins[0]


def test_an_expired_lease_is_taken_over_with_the_next_attempt(store: JobStore) -> None:
    record, _ = store.create("train", {})
    store.claim(record.job_id, OWNER_A, 0.2)
    assert store.save_checkpoint(record.job_id, OWNER_A, {"step": 7}) is not None
    assert store.claim(record.job_id, OWNER_B, 30) is None  # A's lease still runs
    time.sleep(0.3)  # let A's lease expire (not an assertion on timing)
    assert store.claimable(["train"], OWNER_B, limit=10) == [record.job_id]
    before, after = store.claim(record.job_id, OWNER_B, 30)  # type: ignore[misc]
    assert (before.state, before.owner) == (RUNNING, OWNER_A)
    assert (after.state, after.owner, after.attempt, after.checkpoint) == (RUNNING, OWNER_B, 2, {"step": 7})
    assert after.start_time == before.start_time  # the first start is kept


def test_the_same_owner_reclaims_its_own_job_at_once_after_a_restart(store: JobStore) -> None:
    record, _ = store.create("train", {})
    store.claim(record.job_id, OWNER_A, 30)
    assert store.claimable(["train"], OWNER_A, limit=10) == [record.job_id]
    assert store.claim(record.job_id, OWNER_A, 30)[1].attempt == 2  # type: ignore[index]


def test_writes_of_a_runner_that_lost_its_lease_change_nothing(store: JobStore) -> None:
    record, _ = store.create("train", {})
    store.claim(record.job_id, OWNER_A, 0.1)
    time.sleep(0.2)
    store.claim(record.job_id, OWNER_B, 30)
    assert store.set_progress(record.job_id, OWNER_A, Progress(5, 10, "stale")) is None
    assert store.save_checkpoint(record.job_id, OWNER_A, {"step": 99}) is None
    assert store.finish(record.job_id, OWNER_A, SUCCEEDED, result={"stale": True}) is None
    assert store.release(record.job_id, OWNER_A, QUEUED) is None
    assert store.renew(OWNER_A, [record.job_id], 30) == {}
    now = store.get("train", record.job_id)
    assert (now.state, now.owner, now.progress, now.checkpoint, now.result) == (RUNNING, OWNER_B, Progress(), None, {})
    assert store.renew(OWNER_B, [record.job_id], 30) == {record.job_id: ""}


def test_progress_checkpoint_and_finish(store: JobStore) -> None:
    record, _ = store.create("train", {})
    store.claim(record.job_id, OWNER_A, 30)
    progressed = store.set_progress(record.job_id, OWNER_A, Progress(3, 10, "m" * 2000, {"loss": 0.25}))
    assert progressed is not None and progressed.progress == Progress(3, 10, "m" * 1024, {"loss": 0.25})
    assert progressed.revision > record.revision
    with pytest.raises(ValueError):
        store.save_checkpoint(record.job_id, OWNER_A, {"state": "x" * 70_000})
    done = store.finish(record.job_id, OWNER_A, SUCCEEDED, result={"model": "m/1"}, progress=Progress(10, 10, "done"))
    assert done is not None
    assert (done.state, done.result, done.owner, done.lease_expire_time) == (SUCCEEDED, {"model": "m/1"}, "", None)
    assert done.end_time is not None and done.terminal
    assert store.claimable(["train"], OWNER_A, limit=10) == []
    with pytest.raises(ValueError):
        store.finish(record.job_id, OWNER_A, RUNNING)


def test_failed_jobs_keep_their_error(store: JobStore) -> None:
    record, _ = store.create("train", {})
    store.claim(record.job_id, OWNER_A, 30)
    error = JobError(3, "BAD_SPEC", "the spec is bad", {"field": "steps"})
    assert store.finish(record.job_id, OWNER_A, FAILED, error=error).error == error  # type: ignore[union-attr]


def test_cancel_transitions(store: JobStore) -> None:
    queued, _ = store.create("train", {})
    assert store.request_cancel("train", queued.job_id).state == CANCELLED
    running, _ = store.create("train", {})
    store.claim(running.job_id, OWNER_A, 30)
    asked = store.request_cancel("train", running.job_id)
    assert (asked.state, asked.requested, asked.owner) == (CANCELLING, "cancel", OWNER_A)
    assert store.renew(OWNER_A, [running.job_id], 30) == {running.job_id: "cancel"}
    assert store.request_cancel("train", running.job_id).revision == asked.revision  # unchanged
    ended = store.finish(running.job_id, OWNER_A, CANCELLED)
    assert ended is not None and ended.requested == ""
    assert store.request_cancel("train", running.job_id).revision == ended.revision  # an ended job: unchanged
    with pytest.raises(errors.NotFound):
        store.request_cancel("train", "nope")


def test_pause_and_resume_transitions(store: JobStore) -> None:
    queued, _ = store.create("train", {})
    paused = store.request_pause("train", queued.job_id)
    assert paused.state == PAUSED
    assert store.claimable(["train"], OWNER_A, limit=10) == []  # a paused job is nobody's work
    assert store.request_pause("train", queued.job_id).revision == paused.revision
    assert store.resume("train", queued.job_id).state == QUEUED

    store.claim(queued.job_id, OWNER_A, 30)
    asked = store.request_pause("train", queued.job_id)
    assert (asked.state, asked.requested) == (RUNNING, "pause")
    withdrawn = store.resume("train", queued.job_id)  # resumed before the runner stopped: keeps running
    assert (withdrawn.state, withdrawn.requested) == (RUNNING, "")
    store.request_pause("train", queued.job_id)
    released = store.release(queued.job_id, OWNER_A, PAUSED, progress=Progress(4, 8))
    assert released is not None and (released.state, released.owner, released.requested) == (PAUSED, "", "")
    assert released.progress == Progress(4, 8)

    # It ran before: its cancellation goes through a runner, which discards what it left.
    cancelling = store.request_cancel("train", queued.job_id)
    assert (cancelling.state, cancelling.requested) == (CANCELLING, "cancel")
    assert store.claimable(["train"], OWNER_B, limit=10) == [queued.job_id]
    with pytest.raises(errors.FailedPrecondition) as caught:
        store.request_pause("train", queued.job_id)
    assert caught.value.reason == "JOB_NOT_PAUSABLE"
    with pytest.raises(errors.FailedPrecondition) as caught:
        store.resume("train", queued.job_id)
    assert caught.value.reason == "JOB_NOT_RESUMABLE"
    store.claim(queued.job_id, OWNER_B, 30)
    store.finish(queued.job_id, OWNER_B, CANCELLED)
    with pytest.raises(errors.FailedPrecondition) as caught:
        store.resume("train", queued.job_id)
    assert caught.value.reason == "JOB_NOT_RESUMABLE"
    again = store.resume("train", queued.job_id, ended=True)
    assert (again.state, again.end_time, again.error) == (QUEUED, None, None)


def test_list_newest_first_with_filters_and_cursor(store: JobStore) -> None:
    made = [store.create("train", {"i": i}, parent="models/m" if i % 2 else "models/n")[0] for i in range(5)]
    store.create("export", {})
    listed = store.list("train")
    assert [r.job_id for r in listed] == [r.job_id for r in sorted(made, key=lambda r: (r.create_time, r.job_id), reverse=True)]
    assert {r.spec["i"] for r in store.list("train", "models/m")} == {1, 3}
    first_two = store.list("train", limit=2)
    rest = store.list("train", after=(first_two[-1].create_time, first_two[-1].job_id))
    assert [r.job_id for r in first_two + rest] == [r.job_id for r in listed]
    store.request_cancel("train", made[0].job_id)
    assert [r.job_id for r in store.list("train", states=[CANCELLED])] == [made[0].job_id]
    table = store.table
    assert [r.spec["i"] for r in store.list("train", condition=table.c.parent == "models/n")] == [4, 2, 0]


def test_delete_only_ended_jobs(store: JobStore) -> None:
    record, _ = store.create("train", {})
    with pytest.raises(errors.FailedPrecondition) as caught:
        store.delete("train", record.job_id)
    assert caught.value.reason == "JOB_NOT_FINISHED"
    store.request_cancel("train", record.job_id)
    store.delete("train", record.job_id)
    with pytest.raises(errors.NotFound):
        store.get("train", record.job_id)


def test_the_migration_helper_creates_exactly_the_declared_table(database_url: str) -> None:
    engine = db.create_engine(database_url)
    try:
        with db.transaction(engine) as conn:
            with Operations.context(MigrationContext.configure(conn)):
                create_job_table_v1("helper_jobs")
        metadata = sa.MetaData()
        job_table("helper_jobs", metadata)
        with engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        assert differences == []
    finally:
        engine.dispose()


def test_lease_times_are_aware(store: JobStore) -> None:
    record, _ = store.create("train", {})
    claimed = store.claim(record.job_id, OWNER_A, 30)[1]  # type: ignore[index]
    assert claimed.lease_expire_time is not None and claimed.lease_expire_time.tzinfo is not None
    assert claimed.lease_expire_time - claimed.update_time == dt.timedelta(seconds=30)
