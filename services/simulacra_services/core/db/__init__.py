"""The metadata database shared by the services: SQLite embedded, PostgreSQL at scale.

Typical start-up of a service::

    engine = create_engine(settings.resolved_database_url)
    migrate(engine)                        # idempotent, safe from several processes

and a write, from async code through ``asyncio.to_thread``::

    with transaction(engine) as conn:
        conn.execute(datasets.insert().values(...))

Services define their tables in ``simulacra_services.<service>.tables`` on
:data:`metadata`; ``python -m simulacra_services.core.db.revision "message"``
turns a change there into a migration.
"""

from .engine import create_engine, is_sqlite, normalize_url, transaction, write_transaction
from .idempotency import (
    forget_requests_before,
    forget_scopes,
    idempotency_keys,
    record_response,
    recorded_response,
    recorded_responses,
)
from .migrate import SchemaTooNewError, current_revision, head_revision, head_revisions, migrate
from .schema import NAMING_CONVENTION, UtcDateTime, import_all_tables, metadata, utcnow

__all__ = [
    "NAMING_CONVENTION",
    "SchemaTooNewError",
    "UtcDateTime",
    "create_engine",
    "current_revision",
    "forget_requests_before",
    "forget_scopes",
    "head_revision",
    "head_revisions",
    "idempotency_keys",
    "import_all_tables",
    "is_sqlite",
    "metadata",
    "migrate",
    "normalize_url",
    "record_response",
    "recorded_response",
    "recorded_responses",
    "transaction",
    "utcnow",
    "write_transaction",
]
