"""Idempotency keys: the record that a request was already carried out, and its answer.

A client that retries a mutating call (because the answer was lost, not the
work) sends the same request id. The service checks :func:`recorded_response`
first; if nothing is recorded it does the work and, in the same transaction,
calls :func:`record_response` with the digest of the request's payload and
the (JSON) response to replay. A retry then gets the first response back; the
same request id with another payload is REQUEST_ID_REUSED.

``scope`` names the operation and whatever the request id is unique within
(e.g. ``"annotation:datasets/cats:upload"``), so ids of different operations
or parents never collide; :func:`forget_scopes` drops a parent's records when
the parent goes. On PostgreSQL a concurrent duplicate waits on the primary
key until the first transaction ends, so exactly one insert wins.

Job creation keeps its request ids in the job table (``core.jobs``); this is
for the other mutating calls (upload batches, import chunks, create requests).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Column, Index, String, Table, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from simulacra_services.core.errors import AlreadyExists, InvalidArgument, SimulacraError, shown

from .schema import UtcDateTime, metadata, utcnow

MAX_KEY_LENGTH = 128
"""Longest scope or request id accepted; request ids come from clients."""
DIGEST_LENGTH = 64
"""A payload digest: lower-case hex sha256."""

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(MAX_KEY_LENGTH), primary_key=True),
    Column("request_id", String(MAX_KEY_LENGTH), primary_key=True),
    Column("payload_sha256", String(DIGEST_LENGTH), nullable=False),
    # What the first attempt answered (JSON), replayed to a retry.
    Column("response", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    # Expiry deletes by age.
    Index(None, "created_at"),
)


def recorded_response(conn: Connection, scope: str, request_id: str, payload_digest: str) -> Any | None:
    """The response first given to ``request_id`` in ``scope``, or ``None`` when it was never recorded.

    REQUEST_ID_REUSED (ALREADY_EXISTS) when it was recorded for another payload.
    """
    _check_key("scope", scope)
    _check_key("request_id", request_id)
    row = conn.execute(
        select(idempotency_keys.c.payload_sha256, idempotency_keys.c.response).where(
            idempotency_keys.c.scope == scope, idempotency_keys.c.request_id == request_id
        )
    ).first()
    if row is None:
        return None
    if row.payload_sha256 != payload_digest:
        raise request_id_reused(request_id)
    return row.response


def record_response(conn: Connection, scope: str, request_id: str, payload_digest: str, response: Any) -> bool:
    """Record that ``request_id`` in ``scope`` was carried out for ``payload_digest``, answering ``response``.

    Returns ``True`` when this is the first record, ``False`` when one was
    there already (it is kept). Runs in the caller's transaction, so a
    rollback forgets the request too.
    """
    _check_key("scope", scope)
    _check_key("request_id", request_id)
    if not isinstance(payload_digest, str) or len(payload_digest) > DIGEST_LENGTH:
        raise ValueError(f"payload_digest must be a string of at most {DIGEST_LENGTH} characters")
    values = {
        "scope": scope, "request_id": request_id, "payload_sha256": payload_digest,
        "response": response, "created_at": utcnow(),
    }
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(idempotency_keys).values(values).on_conflict_do_nothing(index_elements=["scope", "request_id"])
    # Without preserve_rowcount SQLAlchemy reports no row count for INSERT.
    return conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount == 1


def recorded_responses(conn: Connection, scope: str, request_id_prefix: str = "") -> dict[str, Any]:
    """``{request id: response}`` of every record in ``scope`` whose request id starts with the prefix."""
    _check_key("scope", scope)
    statement = select(idempotency_keys.c.request_id, idempotency_keys.c.response).where(idempotency_keys.c.scope == scope)
    if request_id_prefix:
        statement = statement.where(idempotency_keys.c.request_id.startswith(request_id_prefix, autoescape=True))
    return {row.request_id: row.response for row in conn.execute(statement)}


def forget_scopes(conn: Connection, scope_prefix: str) -> int:
    """Delete the records of every scope that starts with ``scope_prefix`` (a parent that is deleted)."""
    _check_key("scope_prefix", scope_prefix)
    statement = delete(idempotency_keys).where(idempotency_keys.c.scope.startswith(scope_prefix, autoescape=True))
    return conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount


def forget_requests_before(conn: Connection, cutoff: dt.datetime) -> int:
    """Delete the records created before ``cutoff`` (aware); returns how many went."""
    statement = delete(idempotency_keys).where(idempotency_keys.c.created_at < cutoff)
    result = conn.execute(statement, execution_options={"preserve_rowcount": True})
    return result.rowcount


def check_request_id(request_id: str, field: str = "request_id") -> str:
    """A client's request id: at most 128 printable characters without spaces (a UUID); "" means none.
    INVALID_ARGUMENT INVALID_REQUEST_ID otherwise."""
    if len(request_id) > MAX_KEY_LENGTH or not request_id.isprintable() or any(c.isspace() for c in request_id):
        raise InvalidArgument(
            "INVALID_REQUEST_ID",
            f"{field}: request ids are 1-{MAX_KEY_LENGTH} printable characters without spaces (a UUID)",
            {"field": field, "limit": MAX_KEY_LENGTH},
        )
    return request_id


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
