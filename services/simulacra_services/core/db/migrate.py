"""Schema migrations, run from code: every service calls :func:`migrate` at start-up.

Several processes may start at once against one database, so the upgrade
runs under a lock: a transaction-scoped advisory lock on PostgreSQL, the
write lock of ``BEGIN IMMEDIATE`` on SQLite. The upgrade runs inside that
one transaction, and both databases have transactional DDL, so a failed
migration leaves the schema as it was. Within one process a plain lock
serializes callers too: Alembic keeps the running migration in module-global
proxies (``alembic.op``, ``alembic.context``), so two threads must never run
it at once, whatever database they target.

Migration chains: each service owns one, in ``simulacra_services/<service>/migrations/``
(a package of revision files); core's own is ``core/db/migrations/versions``. All chains
form one Alembic revision graph (a service's first revision follows core's ``0001``;
ids are numbered across chains, see ``revision.py``), so a database holds one
``alembic_version`` table with one row per head and :func:`migrate` upgrades every
chain. Moving a revision file between chains keeps its id: existing databases see
no change. ``head_revision``/``current_revision`` name several heads joined by commas.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from .engine import is_sqlite, transaction, write_transaction

SCRIPT_LOCATION = "simulacra_services.core.db:migrations"
"""The migration environment and core's chain, shipped inside the package (``package:folder``)."""
SERVICES_PACKAGE = "simulacra_services"
CHAIN_FOLDER = "migrations"
"""A service's chain: ``simulacra_services/<service>/migrations/`` (a package of revision files)."""

# Any fixed 64-bit number; every Simulacra process agrees on it.
_PG_MIGRATION_LOCK_KEY = 0x53494D554C4143  # "SIMULAC"

_ALEMBIC_IN_PROCESS_LOCK = threading.Lock()


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer release than this one."""


def service_chains() -> dict[str, Path]:
    """``{service: folder}`` of every service package that has a migration chain."""
    root = importlib.import_module(SERVICES_PACKAGE)
    chains = {}
    for info in pkgutil.iter_modules(root.__path__):
        folder = Path(root.__path__[0]) / info.name / CHAIN_FOLDER
        if info.ispkg and (folder / "__init__.py").is_file():
            chains[info.name] = folder
    return dict(sorted(chains.items()))


def _core_versions(script_location: str) -> Path:
    if ":" in script_location and not Path(script_location).exists():
        package, folder = script_location.split(":", 1)
        return Path(importlib.import_module(package).__path__[0]) / folder / "versions"
    return Path(script_location) / "versions"


def chain_folders(script_location: str = SCRIPT_LOCATION) -> dict[str, Path]:
    """``{chain: folder}``: ``"core"`` (the script location's versions) and every service's chain."""
    return {"core": _core_versions(script_location), **service_chains()}


def alembic_config(script_location: str = SCRIPT_LOCATION) -> Config:
    """An Alembic configuration without an ini file; pass a connection in ``attributes["connection"]``."""
    config = Config()
    config.set_main_option("script_location", script_location)
    config.set_main_option("path_separator", "os")
    locations = os.pathsep.join(str(folder) for folder in chain_folders(script_location).values())
    config.set_main_option("version_locations", locations.replace("%", "%%"))
    # "0002_add_datasets.py": files sort in the order they apply.
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    return config


def _joined(revisions: tuple[str, ...] | list[str]) -> str:
    return ",".join(sorted(revisions))


def head_revisions(script_location: str = SCRIPT_LOCATION) -> tuple[str, ...]:
    """The newest revision of every chain end the shipped scripts know, sorted."""
    heads = ScriptDirectory.from_config(alembic_config(script_location)).get_heads()
    if not heads:
        raise RuntimeError(f"no migration scripts found in {script_location}")
    return tuple(sorted(heads))


def head_revision(script_location: str = SCRIPT_LOCATION) -> str:
    """The head the shipped scripts know (several heads: joined by commas, sorted)."""
    return _joined(head_revisions(script_location))


def current_revision(conn: Connection) -> str | None:
    """The revision the database is at (several heads joined by commas), ``None`` for one never migrated."""
    heads = MigrationContext.configure(conn).get_current_heads()
    return _joined(list(heads)) if heads else None


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
        current = MigrationContext.configure(conn).get_current_heads()
        unknown = [revision for revision in current if _unknown_revision(scripts, revision)]
        if unknown:
            raise SchemaTooNewError(
                f"the database schema is at revision {_joined(unknown)!r}, which this release does not know: "
                "it was migrated by a newer Simulacra; run that release or a newer one"
            )
        config.attributes["connection"] = conn
        command.upgrade(config, "heads")
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

