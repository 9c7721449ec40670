"""Schema migrations, run from code: every service calls :func:`migrate` at start-up.

Several processes may start at once against one database, so the upgrade
runs under a lock: a transaction-scoped advisory lock on PostgreSQL, the
write lock of ``BEGIN IMMEDIATE`` on SQLite. The upgrade runs inside that
one transaction, and both databases have transactional DDL, so a failed
migration leaves the schema as it was. Within one process a plain lock
serializes callers too: Alembic keeps the running migration in module-global
proxies (``alembic.op``, ``alembic.context``), so two threads must never run
it at once, whatever database they target.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from .engine import is_sqlite, transaction, write_transaction

SCRIPT_LOCATION = "simulacra_services.core.db:migrations"
"""The migration scripts, shipped inside the package (``package:folder``)."""

# Any fixed 64-bit number; every Simulacra process agrees on it.
_PG_MIGRATION_LOCK_KEY = 0x53494D554C4143  # "SIMULAC"

_ALEMBIC_IN_PROCESS_LOCK = threading.Lock()


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer release than this one."""


def alembic_config(script_location: str = SCRIPT_LOCATION) -> Config:
    """An Alembic configuration without an ini file; pass a connection in ``attributes["connection"]``."""
    config = Config()
    config.set_main_option("script_location", script_location)
    config.set_main_option("path_separator", "os")
    # "0002_add_datasets.py": files sort in the order they apply.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    return config


def head_revision(script_location: str = SCRIPT_LOCATION) -> str:
    """The newest revision the shipped scripts know."""
    head = ScriptDirectory.from_config(alembic_config(script_location)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration scripts found in {script_location}")
    return head


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at, ``None`` for a database never migrated."""
    return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, *, script_location: str = SCRIPT_LOCATION) -> str:
    """Upgrade the database to the newest revision and return that revision.

    Idempotent: a database already there is left alone. Safe when several
    processes call it at once: one migrates, the others wait and find
    nothing to do. Raises :class:`SchemaTooNewError` when the database is at
    a revision these scripts do not know, instead of touching it.
    """
    config = alembic_config(script_location)
    scripts = ScriptDirectory.from_config(config)
    with _ALEMBIC_IN_PROCESS_LOCK, _locked_connection(engine) as conn:
        current = current_revision(conn)
        if current is not None and _unknown_revision(scripts, current):
            raise SchemaTooNewError(
                f"the database schema is at revision {current!r}, which this release does not know: "
                "it was migrated by a newer Simulacra; run that release or a newer one"
            )
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        migrated = current_revision(conn)
    assert migrated is not None
    return migrated


def _unknown_revision(scripts: ScriptDirectory, revision: str) -> bool:
    try:
        return scripts.get_revision(revision) is None
    except Exception:  # alembic raises several kinds for an unknown id
        return True


@contextmanager
def _locked_connection(engine: Engine) -> Iterator[Connection]:
    if is_sqlite(engine):
        with _sqlite_migration_connection(engine) as conn:
            yield conn
        return
    with transaction(engine) as conn:
        # Released when the transaction ends, even if this process dies.
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK_KEY})
        yield conn


@contextmanager
def _sqlite_migration_connection(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        driver_connection = conn.connection.driver_connection
        assert driver_connection is not None
        # Batch migrations rebuild a table (create copy, drop, rename); with
        # foreign keys on, the drop would cascade into child rows. SQLite's
        # own procedure for schema changes: keys off outside the transaction
        # (the pragma is a no-op inside one), check them before committing.
        driver_connection.execute("PRAGMA foreign_keys=OFF")
        try:
            with write_transaction(conn):
                yield conn
                violations = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if violations:
                    raise RuntimeError(f"migration left rows that break foreign keys: {violations[:10]}")
        finally:
            driver_connection.execute("PRAGMA foreign_keys=ON")

