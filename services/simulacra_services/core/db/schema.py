"""The one ``MetaData`` every service defines its tables on, and portable column types.

Each service keeps its tables in ``simulacra_services.<service>.tables``,
built on :data:`metadata`; :func:`import_all_tables` loads them all so that
Alembic's autogenerate and the schema drift test see the whole schema.
"""

from __future__ import annotations

import datetime as dt
import importlib
import importlib.util
import pkgutil
from typing import Any

from sqlalchemy import DateTime, MetaData
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names: Alembic can only drop or alter a constraint
# it can name, and SQLite needs names to rebuild tables in batch migrations.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)
"""Tables of every service. Add a table here only through a migration (see ``revision``)."""

_SERVICES_PACKAGE = "simulacra_services"
_TABLES_MODULES = ("tables", "persistence.tables")
"""Where a service package keeps its tables: at its root, or in its persistence layer."""


def utcnow() -> dt.datetime:
    """The current time as an aware UTC datetime, the only kind :class:`UtcDateTime` stores."""
    return dt.datetime.now(dt.timezone.utc)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An aware UTC timestamp that reads back aware on SQLite and PostgreSQL alike.

    PostgreSQL keeps ``timestamp with time zone``; SQLite has no time zones
    and would hand back naive values, so the value is stored as naive UTC
    there and marked UTC on the way out. Naive input is refused: its zone is
    a guess.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given; use an aware UTC datetime (utcnow())")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value.astimezone(dt.timezone.utc)


def _module_exists(name: str) -> bool:
    """Whether ``name`` can be imported (False when one of its parent packages is missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def import_all_tables() -> list[str]:
    """Import every ``simulacra_services.<package>.tables`` or ``<package>.persistence.tables`` module.

    Returns the names of the modules imported, sorted. Importing a module
    registers its tables on :data:`metadata`.
    """
    root = importlib.import_module(_SERVICES_PACKAGE)
    imported = []
    for info in pkgutil.iter_modules(root.__path__):
        if not info.ispkg:
            continue
        for module in _TABLES_MODULES:
            name = f"{_SERVICES_PACKAGE}.{info.name}.{module}"
            if _module_exists(name):
                importlib.import_module(name)
                imported.append(name)
    # The core's own tables live in this package, not in core.tables.
    importlib.import_module(f"{__package__}.idempotency")
    return sorted(imported)
