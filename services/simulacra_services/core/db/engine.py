"""Engines for the metadata database: SQLite embedded, PostgreSQL at scale.

Services use a synchronous SQLAlchemy engine and call it through
``asyncio.to_thread``; this module makes both databases behave alike enough
that one set of table definitions and one test suite serve both.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another writer before "database is locked"."""

# Connection execution option read by the SQLite BEGIN hook below.
_SQLITE_BEGIN_OPTION = "simulacra_sqlite_begin"

_PSYCOPG_DRIVER = "postgresql+psycopg"
_POSTGRES_ALIASES = {"postgres", "postgresql", "postgresql+psycopg"}


def normalize_url(url: str | URL) -> URL:
    """Parse a database URL and pin PostgreSQL to the psycopg (v3) driver.

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://``;
    any other driver or database is refused, because only SQLite and
    PostgreSQL through psycopg are tested.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            "SIMULACRA_DATABASE_URL is not a database URL; expected sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
        ) from None
    if parsed.drivername in _POSTGRES_ALIASES:
        return parsed.set(drivername=_PSYCOPG_DRIVER)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed
    raise ValueError(
        f"database {parsed.drivername!r} is not supported; use sqlite:///PATH or "
        "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB"
    )


def create_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create the engine for ``url`` (see :func:`normalize_url`).

    SQLite gets WAL (readers never block the writer), enforced foreign keys,
    a busy timeout instead of an immediate "database is locked", and its
    parent directory. PostgreSQL goes through psycopg 3 with pre-ping, so a
    connection dropped by a server restart is replaced instead of failing a
    request. ``kwargs`` go to :func:`sqlalchemy.create_engine`.
    """
    parsed = normalize_url(url)
    if is_sqlite(parsed):
        _create_parent_directory(parsed)
        engine = sqlalchemy.create_engine(parsed, **kwargs)
        _install_sqlite_hooks(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sqlalchemy.create_engine(parsed, **kwargs)


def is_sqlite(target: Engine | Connection | URL) -> bool:
    """Whether ``target`` is (or points at) a SQLite database."""
    if isinstance(target, URL):
        return target.get_backend_name() == "sqlite"
    return target.dialect.name == "sqlite"


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection inside a write transaction: committed on success, rolled back on error.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE``, taking the
    write lock up front: a deferred transaction that reads and then writes
    fails at once with "database is locked" when another writer got in
    between, because SQLite cannot wait out that conflict. Read-only work can
    use ``engine.connect()``, which begins a deferred transaction.
    """
    with engine.connect() as conn, write_transaction(conn):
        yield conn


@contextmanager
def write_transaction(conn: Connection) -> Iterator[Connection]:
    """Begin a write transaction on ``conn`` (``BEGIN IMMEDIATE`` on SQLite, see :func:`transaction`)."""
    if is_sqlite(conn):
        conn.execution_options(**{_SQLITE_BEGIN_OPTION: "IMMEDIATE"})
    with conn.begin():
        yield conn


def _create_parent_directory(url: URL) -> None:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    if in_memory or database.startswith("file:"):
        return
    Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module: in its legacy mode it
        # never begins before DDL or SELECT, so DDL (migrations) would not be
        # transactional and reads would not be repeatable. The "begin" hook
        # below emits BEGIN itself.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            _switch_to_wal(cursor)
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN_OPTION, "DEFERRED")
        if mode not in ("DEFERRED", "IMMEDIATE", "EXCLUSIVE"):
            raise ValueError(f"unknown SQLite transaction mode {mode!r}")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _switch_to_wal(cursor: Any) -> None:
    # Switching a new database to WAL needs an exclusive lock, and SQLite
    # answers "database is locked" at once, without the busy handler, while
    # another process is switching it: retry for as long as a busy timeout.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.001
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
