"""Idempotency keys: the record that a request was already carried out.

A client that retries a mutating call (because the answer was lost, not the
work) sends the same request id. The service does the work and, in the same
transaction, calls :func:`remember_request`; ``False`` means that request id
was already carried out (by an earlier attempt, or a concurrent one that
committed first), so the service rolls back its work and answers with the
earlier result, identified by :func:`recorded_digest`.

On PostgreSQL a concurrent duplicate waits on the primary key until the
first transaction ends, so exactly one of them gets ``True``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Column, Index, String, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from simulacra_services.core.errors import AlreadyExists, InvalidArgument, SimulacraError, shown

from .schema import UtcDateTime, metadata, utcnow

MAX_KEY_LENGTH = 128
"""Longest scope or request id accepted; request ids come from clients."""

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(MAX_KEY_LENGTH), primary_key=True),
    Column("request_id", String(MAX_KEY_LENGTH), primary_key=True),
    Column("response_digest", String(MAX_KEY_LENGTH), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # Expiry deletes by age.
    Index(None, "created_at"),
)


def remember_request(conn: Connection, scope: str, request_id: str, digest: str) -> bool:
    """Record that ``request_id`` in ``scope`` was carried out with result ``digest``.

    Returns ``True`` when this is the first time, ``False`` when the request
    id was recorded before (the earlier digest is kept). Runs in the caller's
    transaction, so a rollback forgets the request too. ``scope`` names the
    operation (e.g. ``"annotation.CreateDataset"``) so ids of different
    operations never collide.
    """
    _check_key("scope", scope)
    _check_key("request_id", request_id)
    _check_key("digest", digest)
    values = {"scope": scope, "request_id": request_id, "response_digest": digest, "created_at": utcnow()}
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(idempotency_keys).values(values).on_conflict_do_nothing(index_elements=["scope", "request_id"])
    # Without preserve_rowcount SQLAlchemy reports no row count for INSERT.
    return conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount == 1


def recorded_digest(conn: Connection, scope: str, request_id: str) -> str | None:
    """The digest recorded for ``request_id`` in ``scope``, or ``None`` if it was never recorded."""
    _check_key("scope", scope)
    _check_key("request_id", request_id)
    statement = select(idempotency_keys.c.response_digest).where(
        idempotency_keys.c.scope == scope, idempotency_keys.c.request_id == request_id
    )
    return conn.execute(statement).scalar_one_or_none()


def forget_requests_before(conn: Connection, cutoff: dt.datetime) -> int:
    """Delete the records created before ``cutoff`` (aware); returns how many went."""
    statement = delete(idempotency_keys).where(idempotency_keys.c.created_at < cutoff)
    result = conn.execute(statement, execution_options={"preserve_rowcount": True})
    return result.rowcount


def _check_key(field: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH or not value.isprintable():
        raise InvalidArgument(
            f"INVALID_{field.upper()}",
            f"{field} must be 1 to {MAX_KEY_LENGTH} printable characters",
            {"field": field, "max_length": MAX_KEY_LENGTH, "length": len(value) if isinstance(value, str) else 0},
        )


def request_id_reused(request_id: str) -> SimulacraError:
    """ALREADY_EXISTS REQUEST_ID_REUSED: a request id came back with a different request (every
    service says it in these words: upload batches, job creation)."""
    return AlreadyExists(
        "REQUEST_ID_REUSED",
        f"request_id {shown(request_id)!r} was already used for a different request; use a new request id "
        "for new content (resend the same request only to retry it)",
        {"field": "request_id", "request_id": shown(request_id)},
    )
