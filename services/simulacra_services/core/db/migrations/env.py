"""Alembic environment: runs on the connection that ``migrate`` or ``revision`` hands over.

There is no ini file and no URL here on purpose: the caller holds the
migration lock on that connection (see ``core/db/migrate.py``).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.types import TypeDecorator

from simulacra_services.core.db.schema import metadata


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    # A revision must not import application types that may change later:
    # write a TypeDecorator (e.g. UtcDateTime) as the plain type it stores.
    if type_ == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{obj.impl_instance!r}"
    return False


def skip_empty_revision(migration_context: Any, revision: Any, directives: list[Any]) -> None:
    if not config.attributes.get("skip_empty_revision"):
        return
    script = directives[0]
    if script.upgrade_ops.is_empty():
        directives[:] = []


config = context.config
connection = config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "run migrations with simulacra_services.core.db.migrate(engine) and create revisions with "
        "python -m simulacra_services.core.db.revision; offline SQL generation is not supported"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    compare_type=True,
    # SQLite can alter a table only by rebuilding it; batch operations do
    # that there and emit plain ALTER on PostgreSQL.
    render_as_batch=True,
    render_item=render_item,
    process_revision_directives=skip_empty_revision,
)
with context.begin_transaction():
    context.run_migrations()
