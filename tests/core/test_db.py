"""The metadata database layer, on SQLite and on a real PostgreSQL (``database_url`` runs both)."""

from __future__ import annotations

import datetime as dt
import importlib.resources
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import setuptools
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, Table, event, func, inspect, select, text
from sqlalchemy.engine import Connection, Engine

from simulacra_services.core import db
from simulacra_services.core.errors import AlreadyExists, InvalidArgument


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def migrated(engine: Engine) -> Engine:
    db.migrate(engine)
    return engine


def run_concurrently(count: int, work: Callable[[int], object]) -> list[object]:
    """Run ``work(i)`` in ``count`` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as error:  # noqa: BLE001 - handed to the test thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


# ---- migrations --------------------------------------------------------------


def test_migrate_creates_tables_at_head(engine: Engine) -> None:
    assert db.migrate(engine) == db.head_revision()
    names = set(inspect(engine).get_table_names())
    assert {"idempotency_keys", "alembic_version"} <= names
    with engine.connect() as conn:
        assert db.current_revision(conn) == db.head_revision()


def test_migrate_twice_changes_nothing(migrated: Engine) -> None:
    with db.transaction(migrated) as conn:
        assert db.record_response(conn, "test.Op", "r-1", "d-1", {"n": 1})
    statements: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        statements.append(statement.strip().split()[0].upper())

    event.listen(migrated, "before_cursor_execute", record)
    try:
        assert db.migrate(migrated) == db.head_revision()
    finally:
        event.remove(migrated, "before_cursor_execute", record)
    assert not {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE", "DELETE"} & set(statements), statements
    with migrated.connect() as conn:
        assert _digest(conn, "test.Op", "r-1") == "d-1"


_MIGRATING_CHILD = """
import pathlib, sys, time
from simulacra_services.core import db

engine = db.create_engine(sys.argv[1])
go = pathlib.Path(sys.argv[2])
print("ready", flush=True)
deadline = time.monotonic() + 60
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
print(db.migrate(engine), flush=True)
"""


def test_concurrent_migrations_in_processes_all_succeed(database_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATING_CHILD, database_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for child in children:  # all imported and connected: the start is as close as it gets
            assert child.stdout is not None and child.stdout.readline() == "ready\n", child.stderr
        go.touch()
        outcomes = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (out, err) in zip(children, outcomes):
        assert child.returncode == 0, err
        assert out.strip() == db.head_revision()
    engine = db.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert db.current_revision(conn) == db.head_revision()
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == len(db.head_revisions())
    finally:
        engine.dispose()


def test_concurrent_migrations_in_threads_all_succeed(database_url: str) -> None:
    engines = [db.create_engine(database_url) for _ in range(4)]
    try:
        revisions = run_concurrently(len(engines), lambda i: db.migrate(engines[i]))
        assert revisions == [db.head_revision()] * len(engines)
        with engines[0].connect() as conn:
            # One row per chain head: nobody stamped a version twice.
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == len(db.head_revisions())
    finally:
        for engine in engines:
            engine.dispose()


def test_migrations_produce_exactly_the_metadata(migrated: Engine) -> None:
    db.import_all_tables()
    with migrated.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    assert differences == [], (
        "the tables in metadata differ from what the migrations create; "
        "add a revision with: python -m simulacra_services.core.db.revision 'message'"
    )


def test_migrate_refuses_a_schema_from_a_newer_release(migrated: Engine) -> None:
    with db.transaction(migrated) as conn:
        head = db.head_revisions()[0]
        conn.execute(text(f"UPDATE alembic_version SET version_num = 'ffff_from_the_future' WHERE version_num = '{head}'"))
    with pytest.raises(db.SchemaTooNewError, match="ffff_from_the_future"):
        db.migrate(migrated)
    with migrated.connect() as conn:
        assert "ffff_from_the_future" in db.current_revision(conn).split(",")


def test_failed_migration_leaves_the_schema_as_it_was(database_url: str, tmp_path: Path) -> None:
    scripts = _copy_migrations(tmp_path)
    (scripts / "versions" / "0900_broken.py").write_text(
        '"""creates a table, then fails"""\n'
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = '0900'\ndown_revision = {db.head_revisions()!r}\nbranch_labels = None\ndepends_on = None\n\n"
        "def upgrade():\n"
        "    op.create_table('half_done', sa.Column('id', sa.Integer, primary_key=True))\n"
        "    op.execute('SELECT * FROM no_such_table')\n\n"
        "def downgrade():\n    pass\n"
    )
    engine = db.create_engine(database_url)
    try:
        db.migrate(engine)
        with pytest.raises(Exception, match="no_such_table"):
            db.migrate(engine, script_location=str(scripts))
        assert "half_done" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert db.current_revision(conn) == db.head_revision()
    finally:
        engine.dispose()


def test_migration_scripts_ship_inside_the_package() -> None:
    migrations = importlib.resources.files("simulacra_services.core.db") / "migrations"
    assert (migrations / "env.py").is_file()
    assert (migrations / "script.py.mako").is_file()
    from simulacra_services.core.db.migrate import service_chains

    chains = {"core": "simulacra_services.core.db.migrations.versions"}
    chains.update({service: f"simulacra_services.{service}.migrations" for service in service_chains()})
    assert "annotation" in chains
    names = set()
    for package in chains.values():
        names |= {entry.name for entry in importlib.resources.files(package).iterdir()}
    for head in db.head_revisions():
        assert any(name.startswith(f"{head}_") and name.endswith(".py") for name in names), head
    assert "0001_idempotency_keys.py" in names and "0002_annotation_store_tables.py" in names
    # Setuptools ships .py files only in packages it finds (those with __init__.py).
    packages = setuptools.find_packages(str(Path(__file__).parents[2] / "services"), include=["simulacra_services*"])
    assert set(chains.values()) <= set(packages)


def test_each_service_chain_is_found() -> None:
    from simulacra_services.core.db.migrate import chain_folders

    folders = chain_folders()
    assert folders["core"].name == "versions" and folders["annotation"].name == "migrations"
    assert (folders["annotation"] / "0002_annotation_store_tables.py").is_file()


def test_a_database_migrated_before_the_chains_were_split_upgrades_in_place(engine: Engine) -> None:
    # Revision ids did not change when annotation's revisions moved to its own chain: a
    # database at the old single chain's last head (0003) upgrades in place, keeping its rows.
    from alembic import command

    from simulacra_services.core.db.migrate import alembic_config

    with db.transaction(engine) as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.upgrade(config, "0003")
        conn.execute(
            text(
                "INSERT INTO annotation_datasets (dataset_id, display_name, description, labels, create_time, update_time,"
                " seq, item_count, annotation_count, latest_version) VALUES ('old', '', '', '{}', :t, :t, 0, 0, 0, 0)"
            ),
            {"t": dt.datetime(2026, 1, 1)},
        )
    with engine.connect() as conn:
        assert db.current_revision(conn) == "0003"
    db.migrate(engine)
    with engine.connect() as conn:
        assert db.current_revision(conn) == db.head_revision()
        assert conn.execute(text("SELECT dataset_id FROM annotation_datasets")).scalar_one() == "old"


def test_revision_autogenerates_a_migration_for_a_new_table(tmp_path: Path) -> None:
    from simulacra_services.core.db.revision import make_revision

    scripts = _copy_migrations(tmp_path)
    # Tables a service added without a revision yet (the drift test flags
    # those) would otherwise land in the probe's revision.
    make_revision("catch up", script_location=str(scripts))
    assert make_revision("nothing new", script_location=str(scripts)) is None
    from simulacra_services.core.db.revision import next_revision_id

    expected_id = next_revision_id(str(scripts))
    probe = Table("revision_probe", db.metadata, Column("id", Integer, primary_key=True))
    try:
        path = make_revision("add revision probe", script_location=str(scripts))
        assert path is not None and path.name == f"{expected_id}_add_revision_probe.py"
        assert "create_table('revision_probe'" in path.read_text()
        engine = db.create_engine(f"sqlite:///{tmp_path / 'probe.db'}")
        try:
            db.migrate(engine, script_location=str(scripts))
            assert "revision_probe" in inspect(engine).get_table_names()
        finally:
            engine.dispose()
    finally:
        db.metadata.remove(probe)


def _copy_migrations(tmp_path: Path) -> Path:
    source = Path(str(importlib.resources.files("simulacra_services.core.db") / "migrations"))
    target = tmp_path / "migrations"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def test_import_all_tables_finds_the_core_tables() -> None:
    modules = db.import_all_tables()
    assert all(name.startswith("simulacra_services.") and name.endswith(".tables") for name in modules)
    assert "idempotency_keys" in db.metadata.tables
    # every service's tables, wherever its layers keep them (the annotation-store: persistence/)
    assert {
        "simulacra_services.annotation.persistence.tables",
        "simulacra_services.augmentation.tables",
        "simulacra_services.training.tables",
    } <= set(modules)


# ---- idempotency keys -----------------------------------------------------------


def _digest(conn: Connection, scope: str, request_id: str) -> str | None:
    """The payload digest recorded for a request id, or None."""
    statement = select(db.idempotency_keys.c.payload_sha256).where(
        db.idempotency_keys.c.scope == scope, db.idempotency_keys.c.request_id == request_id
    )
    return conn.execute(statement).scalar_one_or_none()


def test_recorded_response_replays_the_first_answer_and_refuses_another_payload(migrated: Engine) -> None:
    with db.transaction(migrated) as conn:
        assert db.recorded_response(conn, "annotation:datasets/a:upload", "req-1", "p" * 64) is None
        assert db.record_response(conn, "annotation:datasets/a:upload", "req-1", "p" * 64, {"item_ids": ["x", "y"]})
    with migrated.connect() as conn:
        assert db.recorded_response(conn, "annotation:datasets/a:upload", "req-1", "p" * 64) == {"item_ids": ["x", "y"]}
        with pytest.raises(AlreadyExists) as caught:
            db.recorded_response(conn, "annotation:datasets/a:upload", "req-1", "q" * 64)
        assert caught.value.reason == "REQUEST_ID_REUSED" and caught.value.metadata["request_id"] == "req-1"
        # Same id under another parent is another request.
        assert db.recorded_response(conn, "annotation:datasets/b:upload", "req-1", "q" * 64) is None


def test_recorded_responses_by_prefix_and_forget_scopes(migrated: Engine) -> None:
    with db.transaction(migrated) as conn:
        for scope, request_id in [("s:a_b:import", "job_1-0"), ("s:a_b:import", "job_1-1"), ("s:a_b:import", "jobx1-0"),
                                  ("s:a_b:upload", "job_1-0"), ("s:aXb:import", "job_1-0")]:
            db.record_response(conn, scope, request_id, "d", {"r": request_id, "s": scope})
        # "_" is no wildcard in either prefix.
        assert sorted(db.recorded_responses(conn, "s:a_b:import", "job_1-")) == ["job_1-0", "job_1-1"]
        assert db.recorded_responses(conn, "s:a_b:upload") == {"job_1-0": {"r": "job_1-0", "s": "s:a_b:upload"}}
        assert db.forget_scopes(conn, "s:a_b:") == 4
        remaining = conn.execute(select(db.idempotency_keys.c.scope)).scalars().all()
    assert remaining == ["s:aXb:import"]


def test_record_response_is_true_once(migrated: Engine) -> None:
    with db.transaction(migrated) as conn:
        assert db.record_response(conn, "annotation.CreateDataset", "req-1", "digest-a", {"n": 1}) is True
    with db.transaction(migrated) as conn:
        assert db.record_response(conn, "annotation.CreateDataset", "req-1", "digest-b", {"n": 1}) is False
        # Same id in another scope is another request.
        assert db.record_response(conn, "training.CreateJob", "req-1", "digest-c", {"n": 1}) is True
    with migrated.connect() as conn:
        assert _digest(conn, "annotation.CreateDataset", "req-1") == "digest-a"
        assert _digest(conn, "annotation.CreateDataset", "req-2") is None


def test_rolled_back_transaction_remembers_nothing(migrated: Engine) -> None:
    with pytest.raises(RuntimeError, match="work failed"):
        with db.transaction(migrated) as conn:
            assert db.record_response(conn, "test.Op", "req-1", "digest-a", {"n": 1})
            raise RuntimeError("work failed")
    with migrated.connect() as conn:
        assert _digest(conn, "test.Op", "req-1") is None
    with db.transaction(migrated) as conn:
        assert db.record_response(conn, "test.Op", "req-1", "digest-a", {"n": 1}) is True


def test_concurrent_duplicates_exactly_one_wins(migrated: Engine) -> None:
    def attempt(i: int) -> bool:
        with db.transaction(migrated) as conn:
            return db.record_response(conn, "test.Op", "same-request", f"digest-{i}", {"n": 1})

    results = run_concurrently(4, attempt)
    assert sorted(results) == [False, False, False, True]


def test_recorded_time_is_aware_utc(migrated: Engine) -> None:
    before = db.utcnow()
    with db.transaction(migrated) as conn:
        db.record_response(conn, "test.Op", "req-1", "d", {"n": 1})
    with migrated.connect() as conn:
        created = conn.execute(select(db.idempotency_keys.c.created_at)).scalar_one()
    assert created.tzinfo is not None and created.utcoffset() == dt.timedelta(0)
    assert before <= created <= db.utcnow()


def test_forget_requests_before_deletes_only_older_records(migrated: Engine) -> None:
    with db.transaction(migrated) as conn:
        db.record_response(conn, "test.Op", "old", "d", {"n": 1})
    cutoff = db.utcnow() + dt.timedelta(microseconds=1)
    with db.transaction(migrated) as conn:
        conn.execute(
            db.idempotency_keys.update()
            .where(db.idempotency_keys.c.request_id == "old")
            .values(created_at=cutoff - dt.timedelta(days=2))
        )
        db.record_response(conn, "test.Op", "new", "d", {"n": 1})
        conn.execute(
            db.idempotency_keys.update()
            .where(db.idempotency_keys.c.request_id == "new")
            .values(created_at=cutoff + dt.timedelta(seconds=1))
        )
        assert db.forget_requests_before(conn, cutoff) == 1
        remaining = conn.execute(select(db.idempotency_keys.c.request_id)).scalars().all()
    assert remaining == ["new"]


@pytest.mark.parametrize(
    ("scope", "request_id", "reason"),
    [
        ("test.Op", "", "INVALID_REQUEST_ID"),
        ("test.Op", "x" * (db.idempotency.MAX_KEY_LENGTH + 1), "INVALID_REQUEST_ID"),
        ("test.Op", "line\nbreak", "INVALID_REQUEST_ID"),
        ("", "req-1", "INVALID_SCOPE"),
    ],
)
def test_record_response_rejects_bad_keys(migrated: Engine, scope: str, request_id: str, reason: str) -> None:
    with db.transaction(migrated) as conn:
        with pytest.raises(InvalidArgument) as caught:
            db.record_response(conn, scope, request_id, "digest", {"n": 1})
        assert caught.value.reason == reason
        assert caught.value.metadata["max_length"] == str(db.idempotency.MAX_KEY_LENGTH)
        assert conn.execute(select(func.count()).select_from(db.idempotency_keys)).scalar_one() == 0


def test_naive_datetimes_are_refused(migrated: Engine) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        with db.transaction(migrated) as conn:
            db.forget_requests_before(conn, dt.datetime(2020, 1, 1))


# ---- transactions -------------------------------------------------------------------


def test_concurrent_read_then_write_transactions_all_commit(migrated: Engine) -> None:
    # A deferred SQLite transaction that reads and then writes fails with
    # "database is locked" when another writer commits in between; the
    # transaction helper must serialize such writers instead.
    def read_then_write(i: int) -> None:
        for round_ in range(5):
            with db.transaction(migrated) as conn:
                count = conn.execute(select(func.count()).select_from(db.idempotency_keys)).scalar_one()
                db.record_response(conn, "test.Counter", f"{i}-{round_}", str(count), {"n": 1})

    run_concurrently(4, read_then_write)
    with migrated.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.idempotency_keys)).scalar_one() == 20


# ---- engines ------------------------------------------------------------------------


def test_sqlite_engine_turns_on_wal_foreign_keys_and_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "not" / "yet" / "there.db"
    engine = db.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == db.engine.SQLITE_BUSY_TIMEOUT_MS
        assert path.is_file()
    finally:
        engine.dispose()


def test_sqlite_enforces_foreign_keys_and_keeps_them_after_migrating(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'fk.db'}")
    try:
        db.migrate(engine)  # migrate turns the keys off while it runs
        with db.transaction(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            conn.exec_driver_sql("CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))")
        with pytest.raises(Exception, match="FOREIGN KEY constraint failed"):
            with db.transaction(engine) as conn:
                conn.exec_driver_sql("INSERT INTO child (id, parent_id) VALUES (1, 42)")
    finally:
        engine.dispose()


def test_sqlite_transactional_ddl_rolls_back(tmp_path: Path) -> None:
    engine = db.create_engine(f"sqlite:///{tmp_path / 'ddl.db'}")
    try:
        with pytest.raises(RuntimeError):
            with db.transaction(engine) as conn:
                conn.exec_driver_sql("CREATE TABLE rolled_back (id INTEGER)")
                raise RuntimeError("abort")
        assert "rolled_back" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgresql_urls_use_psycopg(scheme: str) -> None:
    url = db.normalize_url(f"{scheme}://user:secret@db.example:5432/simulacra")
    assert url.drivername == "postgresql+psycopg"
    assert (url.host, url.port, url.database, url.password) == ("db.example", 5432, "simulacra", "secret")
    engine = db.create_engine(f"{scheme}://user:secret@db.example:5432/simulacra")
    assert engine.dialect.driver == "psycopg"
    assert engine.pool._pre_ping  # type: ignore[attr-defined]


@pytest.mark.postgres
def test_plain_postgresql_url_connects_through_psycopg(pg_database: str) -> None:
    plain = pg_database.replace("postgresql+psycopg://", "postgresql://", 1)
    engine = db.create_engine(plain)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
            assert type(conn.connection.driver_connection).__module__.startswith("psycopg")
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "url", ["mysql://user@host/db", "postgresql+psycopg2://user@host/db", "not a url", "oracle://x"]
)
def test_unsupported_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///PATH"):
        db.create_engine(url)


def test_utcnow_is_aware_utc() -> None:
    now = db.utcnow()
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize("request_id", ["x" * 129, "has space", "tab\there", "line\nbreak"])
def test_check_request_id_refuses_what_is_no_uuid_like_id(request_id: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        db.idempotency.check_request_id(request_id, "items.request_id")
    assert caught.value.reason == "INVALID_REQUEST_ID" and caught.value.metadata["field"] == "items.request_id"


def test_check_request_id_passes_uuids_and_the_empty_id() -> None:
    assert db.idempotency.check_request_id("") == ""
    assert db.idempotency.check_request_id("3f2b9c1e-0d4a-4c57-9b8e-5f7a6d1c2e3b") == "3f2b9c1e-0d4a-4c57-9b8e-5f7a6d1c2e3b"
