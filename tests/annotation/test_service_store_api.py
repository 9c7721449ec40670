"""The store API the import/export jobs build on, on SQLite and PostgreSQL (no gRPC in between)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from simulacra_services.annotation.domain import identifiers
from simulacra_services.annotation.domain.model import Annotation, Category, ClassLabel
from simulacra_services.annotation.domain.records import ImageInput, NewItem
from simulacra_services.annotation.formats import importers
from simulacra_services.annotation.persistence.store import AnnotationStore
from simulacra_services.annotation.persistence.tables import jobs as jobs_table
from simulacra_services.core import db, errors
from simulacra_services.core.jobs import JobStore
from simulacra_services.core.storage import LocalObjectStore

from .conftest import png


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[AnnotationStore]:
    engine = db.create_engine(database_url)
    db.migrate(engine)
    store = AnnotationStore(engine, LocalObjectStore(tmp_path / "objects"))
    try:
        yield store
    finally:
        store.close()
        engine.dispose()


def _item(item_id: str, category_id: int = 0, seed: int = 0, file_name: str = "") -> NewItem:
    annotations = (Annotation(ClassLabel(), category_id=category_id),) if category_id else ()
    return NewItem(image=ImageInput(data=png(8, 8, seed=seed)), item_id=item_id, annotations=annotations, file_name=file_name)


def test_prepare_against_categories_created_just_before_commit(store: AnnotationStore) -> None:
    store.create_dataset("imp")
    new = Category(5, "five")
    prepared = store.prepare_items("imp", [_item("a", 5)], extra_categories=[new])
    with pytest.raises(errors.InvalidArgument) as caught:  # not created yet: the commit looks again
        store.commit_items("imp", prepared)
    assert caught.value.reason == "UNKNOWN_CATEGORY"
    assert store.ensure_categories("imp", [new]) == 1
    assert store.ensure_categories("imp", [new]) == 0
    with pytest.raises(errors.FailedPrecondition) as caught:
        store.ensure_categories("imp", [Category(5, "renamed")])
    assert caught.value.reason == "CATEGORY_CONFLICT"
    assert store.commit_items("imp", prepared).item_ids == ["a"]
    assert store.get_item("imp", "a").annotations[0].category_id == 5


def test_delete_items_undoes_committed_chunks_in_one_transaction(store: AnnotationStore) -> None:
    store.create_dataset("undo", categories=[Category(1, "one")])
    store.write_batch("undo", [_item("keep", 1, seed=1, file_name="k.png")])
    store.commit_version("undo")
    store.write_batch("undo", [_item(f"x{i}", 1, seed=i + 10) for i in range(5)])
    assert store.delete_items("undo", ["x0", "x1", "x2", "x3", "x4", "never-there"]) == 5
    dataset = store.get_dataset("undo")
    assert (dataset.item_count, dataset.annotation_count) == (1, 1)
    assert [r.item_id for r in store.iter_items("undo")] == ["keep"]
    assert store.live_files("undo") == {("k.png", store.get_item("undo", "keep").image.sha256)}
    assert store.delete_items("undo", ["x0"]) == 0


def test_iter_items_reads_a_version_in_order_and_by_shard(store: AnnotationStore) -> None:
    store.create_dataset("it")
    store.write_batch("it", [_item(f"i{n:02d}", seed=n) for n in range(30)])
    store.commit_version("it")
    store.delete_items("it", ["i03"])
    everything = [r.item_id for r in store.iter_items("it", "latest", page_size=7)]
    assert everything == [f"i{n:02d}" for n in range(30)]
    shards = [[r.item_id for r in store.iter_items("it", 1, shard_index=k, shard_count=4)] for k in range(4)]
    assert sorted(sum(shards, [])) == everything
    assert store.count_items("it", 1, 'file_name = ""') == 30 and store.count_items("it") == 29


def _jobs(store: AnnotationStore) -> JobStore:
    return JobStore(store.engine, jobs_table)


def _set_state(store: AnnotationStore, job_id: str, state: str) -> None:
    with db.transaction(store.engine) as conn:
        conn.execute(jobs_table.update().where(jobs_table.c.job_id == job_id).values(state=state))


def test_jobs_are_idempotent_by_request_id_and_cancellable(store: AnnotationStore) -> None:
    store.create_dataset("jobs")
    jobs = _jobs(store)
    spec = {"format": "coco", "job": {}}
    job, created = store.create_job(jobs, "jobs", "import", spec, label="coco", request_id="r1", job_id="j1")
    again, created_again = store.create_job(jobs, "jobs", "import", spec, label="coco", request_id="r1", job_id="j2")
    assert created and not created_again and again.job_id == job.job_id == "j1"
    assert (job.parent, job.label, job.state) == ("datasets/jobs", "coco", "JOB_STATE_QUEUED")
    with pytest.raises(errors.AlreadyExists) as caught:
        store.create_job(jobs, "jobs", "import", {"format": "coco", "job": {"x": 1}}, label="coco", request_id="r1", job_id="j3")
    assert caught.value.reason == "REQUEST_ID_REUSED"
    with pytest.raises(errors.NotFound) as caught:
        store.create_job(jobs, "nobody", "import", spec, label="coco", request_id="", job_id="j4")
    assert caught.value.reason == "DATASET_NOT_FOUND"
    assert jobs.request_cancel("import", job.job_id).state == "JOB_STATE_CANCELLED"  # queued: at once
    with pytest.raises(errors.NotFound) as caught:
        jobs.get("export", job.job_id)
    assert caught.value.reason == "JOB_NOT_FOUND"
    store.delete_dataset("jobs", force=True)
    assert jobs.list("import") == []


def test_commit_is_refused_while_an_import_job_is_unfinished(store: AnnotationStore) -> None:
    store.create_dataset("busy", categories=[Category(1, "one")])
    store.write_batch("busy", [_item("a", 1)])
    jobs = _jobs(store)
    job, _ = store.create_job(jobs, "busy", "import", {"format": "mnist", "job": {}}, label="mnist", request_id="", job_id="imp")
    store.create_job(jobs, "busy", "export", {"format": "COCO", "job": {}}, label="COCO", request_id="", job_id="exp")  # exports: no obstacle
    for state in ("JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"):
        _set_state(store, job.job_id, state)
        with pytest.raises(errors.FailedPrecondition) as caught:
            store.commit_version("busy")
        assert caught.value.reason == "IMPORT_IN_PROGRESS", state
        assert caught.value.metadata == {"dataset": "datasets/busy", "job": f"datasets/busy/importJobs/{job.job_id}"}
    assert store.get_dataset("busy").latest_version == 0
    for state in ("JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_SUCCEEDED"):
        _set_state(store, job.job_id, state)
        assert store.commit_version("busy", f"after {state}")[0].version == 1


def test_an_imports_writes_are_known_exactly_and_discarded(store: AnnotationStore) -> None:
    store.create_dataset("undo", categories=[Category(1, "one")])
    store.write_batch("undo", [_item("kept", 1)])
    new = [Category(1, "one"), Category(2, "two"), Category(3, "three")]
    chunk0 = store.prepare_items("undo", [_item("a", 2, seed=1), _item("b", 3, seed=2)], extra_categories=new)
    chunk1 = store.prepare_items("undo", [_item("c", 1, seed=3)])
    store.commit_items("undo", chunk0, request_id="job7-0", payload_digest="d0", scope="import", categories=new)
    store.commit_items("undo", chunk1, request_id="job7-1", payload_digest="d1", scope="import")
    store.commit_items("undo", [], request_id="job77-0", payload_digest="other", scope="import")  # another job's prefix
    items, categories = store.import_writes("undo", "job7")
    assert sorted(items) == ["a", "b", "c"] and sorted(categories) == [2, 3]  # category 1 existed before
    assert store.get_dataset("undo").item_count == 4
    assert store.discard_import("undo", "job7") == (3, 2)
    assert store.discard_import("undo", "job7") == (0, 0)  # idempotent: a second runner finds nothing left
    assert [r.item_id for r in store.iter_items("undo")] == ["kept"]
    assert [c.category_id for c in store.list_categories("undo")] == [1]
    assert store.import_writes("nobody", "job7") == ([], [])


def test_a_commit_of_the_latest_versions_content_creates_no_version(store: AnnotationStore) -> None:
    store.create_dataset("same", categories=[Category(1, "one")])
    store.write_batch("same", [_item("a", 1)])
    first, created = store.commit_version("same")
    assert created and first.version == 1
    # What an import that fails while writing does and undoes: a category and items, removed again.
    assert store.ensure_categories("same", [Category(2, "two")]) == 1
    store.write_batch("same", [_item("b", 2, seed=1), _item("c", 1, seed=2)])
    store.delete_items("same", ["b", "c"])
    store.delete_category("same", 2)
    again, created = store.commit_version("same", "no change")
    assert not created and again == first
    store.write_batch("same", [_item("d", 1, seed=3)])
    second, created = store.commit_version("same")
    assert created and second.version == 2 and second.content_sha256 != first.content_sha256


def test_a_flip_pair_difference_is_a_category_conflict_for_the_planner_and_the_store(store: AnnotationStore) -> None:
    schema = {"keypoint_names": ("left_eye", "right_eye", "nose"), "skeleton": ((0, 2), (1, 2))}
    held = Category(1, "face", "head", flip_pairs=((0, 1),), **schema)
    unflipped = Category(1, "face", "head", **schema)
    store.create_dataset("flip", categories=[held])
    existing = store.list_categories("flip")
    with pytest.raises(errors.FailedPrecondition) as caught:
        importers.check_categories([unflipped], existing)
    assert (caught.value.reason, caught.value.metadata["field"]) == ("CATEGORY_CONFLICT", "categories[0]")
    with pytest.raises(errors.FailedPrecondition) as caught:
        store.ensure_categories("flip", [unflipped])
    assert caught.value.reason == "CATEGORY_CONFLICT"
    # Equal schemas agree, whether read back from the database (lists in JSON) or built here.
    assert importers.check_categories([held], existing) == []
    assert store.ensure_categories("flip", [held]) == 0
    assert identifiers.categories_agree(existing[0], held) and not identifiers.categories_agree(held, unflipped)
