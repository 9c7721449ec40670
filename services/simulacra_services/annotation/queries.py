"""SQL building blocks of the store: visibility at a sequence, filters, ordering, page tokens.

Page tokens are opaque to clients: base64url of a small JSON document (the
sort key of the last row returned and a digest of the query it belongs to)
followed by a checksum. A token that was altered, cut, or used with other
request fields than the ones that produced it is INVALID_ARGUMENT
(INVALID_PAGE_TOKEN); it never reaches SQL as anything but typed values.
The checksum is not a secret MAC: tokens hold no secret, and a forged but
well-formed token can only start a listing the caller could request anyway.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from simulacra_services.annotation import filters
from simulacra_services.annotation.filters import Comparison
from simulacra_services.annotation.model import Category
from simulacra_services.annotation.tables import annotations, items
from simulacra_services.core import errors

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_TOKEN_VERSION = 1
_CHECKSUM_CONTEXT = b"simulacra.annotation.page-token.v1"
MAX_TOKEN_CHARS = 4096


def visible(table: sa.Table, seq: int | None) -> ColumnElement[bool]:
    """Rows of the working state (``seq`` None) or of the version committed at ``seq``."""
    if seq is None:
        return table.c.removed_seq.is_(None)
    return sa.and_(table.c.added_seq <= seq, sa.or_(table.c.removed_seq.is_(None), table.c.removed_seq > seq))


def page_size_of(page_size: int) -> int:
    """The contract's rule: 0 means the default, larger than the maximum is cut to it."""
    if page_size < 0:
        raise errors.InvalidArgument(
            "INVALID_PAGE_SIZE", f"page_size must be >= 0, got {page_size}", {"field": "page_size", "value": page_size}
        )
    return DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)


# ---------------------------------------------------------------------------
# Item filters
# ---------------------------------------------------------------------------


def item_filter(
    text: str, dataset_pk: int, categories: Sequence[Category], field: str = "filter"
) -> ColumnElement[bool]:
    """The condition on ``items`` of a ListItems filter, given the state's categories.

    ``category``, ``category_id`` and ``kind`` select items with at least one
    annotation that matches. Comparisons with an attribute the item lacks are
    false (so ``NOT attributes.weather = "fog"`` keeps items without weather).
    """
    node = filters.parse_filter(text, filters.ITEM_FILTER_FIELDS)

    def with_annotation(condition: ColumnElement[bool]) -> ColumnElement[bool]:
        # Correlated EXISTS: one probe of the (dataset, category_id, item_row) index per item
        # walked in order. "id IN (subquery)" would first collect every matching annotation
        # of the dataset, which costs milliseconds for a common category on every page.
        return sa.exists().where(annotations.c.dataset == dataset_pk, annotations.c.item_row == items.c.id, condition)

    def category(comparison: Comparison) -> ColumnElement[bool]:
        ids = [c.category_id for c in categories if filters.apply(comparison.op, c.display_name, comparison.value)]
        if not ids:
            return sa.false()
        return with_annotation(annotations.c.category_id.in_(ids))

    def category_id(comparison: Comparison) -> ColumnElement[bool]:
        return with_annotation(filters.compare(annotations.c.category_id, comparison.op, comparison.value))

    def kind(comparison: Comparison) -> ColumnElement[bool]:
        return with_annotation(filters.compare(annotations.c.kind, comparison.op, comparison.value))

    def attribute(comparison: Comparison) -> ColumnElement[bool]:
        value = items.c.attributes[comparison.key].as_string()
        if comparison.value is None:
            return value.is_not(None)
        return sa.and_(value.is_not(None), filters.compare(value, comparison.op, comparison.value))

    targets: Mapping[str, Any] = {
        "split": items.c.split,
        "category": category,
        "category_id": category_id,
        "kind": kind,
        "lineage": items.c.lineage_kind,
        "format": items.c.format,
        "width": items.c.width,
        "height": items.c.height,
        "channels": items.c.channels,
        "file_name": items.c.file_name,
        "sha256": items.c.image_sha256,
        "create_time": items.c.create_time,
        "attributes": attribute,
    }
    try:
        return filters.to_sqlalchemy(node, targets)
    except errors.SimulacraError as error:
        error.metadata.setdefault("field", field)
        raise


# ---------------------------------------------------------------------------
# Ordering
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SortKey:
    name: str
    column: ColumnElement[Any]
    descending: bool


def parse_order_by(
    text: str, columns: Mapping[str, ColumnElement[Any]], tie_breaker: str, field: str = "order_by"
) -> list[SortKey]:
    """``"a, b desc"`` into sort keys; ``tie_breaker`` is appended (ascending) unless named."""
    keys: list[SortKey] = []
    if text.strip():
        for part in text.split(","):
            words = part.split()
            if not words or len(words) > 2 or (len(words) == 2 and words[1].lower() not in ("asc", "desc")) or words[0] not in columns:
                raise errors.InvalidArgument(
                    "INVALID_ORDER_BY",
                    f"{field}: {part.strip()!r} is not a sort key; use comma-separated fields among "
                    f"{', '.join(columns)}, each optionally followed by ' desc'",
                    {"field": field, "order_by": text[:200]},
                )
            if any(key.name == words[0] for key in keys):
                raise errors.InvalidArgument(
                    "INVALID_ORDER_BY", f"{field}: {words[0]!r} appears twice", {"field": field, "order_by": text[:200]}
                )
            keys.append(SortKey(words[0], columns[words[0]], len(words) == 2 and words[1].lower() == "desc"))
    if not any(key.name == tie_breaker for key in keys):
        keys.append(SortKey(tie_breaker, columns[tie_breaker], False))
    return keys


def order_clauses(keys: Sequence[SortKey]) -> list[ColumnElement[Any]]:
    return [key.column.desc() if key.descending else key.column.asc() for key in keys]


def after(keys: Sequence[SortKey], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after the row with sort-key ``values`` in the order of ``keys``."""
    clauses = []
    for index, key in enumerate(keys):
        equal = [keys[j].column == values[j] for j in range(index)]
        step = key.column < values[index] if key.descending else key.column > values[index]
        clauses.append(sa.and_(*equal, step))
    return sa.or_(*clauses)


# ---------------------------------------------------------------------------
# Page tokens
# ---------------------------------------------------------------------------


def query_digest(**fields: Any) -> str:
    """A short digest of the request fields a page token is bound to."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _checksum(payload: bytes) -> str:
    return hashlib.sha256(_CHECKSUM_CONTEXT + payload).hexdigest()[:16]


def _encode_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"t": value.astimezone(dt.timezone.utc).isoformat()}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"t"} and isinstance(value["t"], str):
        return dt.datetime.fromisoformat(value["t"])
    return value


def encode_token(query: str, values: Sequence[Any], **extra: Any) -> str:
    """A page token (or stream cursor) continuing after the row with sort-key ``values``."""
    document = {"v": _TOKEN_VERSION, "q": query, "k": [_encode_value(v) for v in values], **extra}
    payload = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _checksum(payload)


def encode_cursor(query: str, item_id: str, version: int) -> str:
    """``encode_token(query, [item_id], ver=version)``, written directly: streams make one per item."""
    payload = f'{{"k":[{json.dumps(item_id)}],"q":{json.dumps(query)},"v":{_TOKEN_VERSION},"ver":{int(version)}}}'.encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _checksum(payload)


def bad_token(field: str, reason: str = "INVALID_PAGE_TOKEN", why: str = "") -> errors.SimulacraError:
    hint = "page_token must be the next_page_token of the previous page, with the same other request fields"
    if reason == "INVALID_CURSOR":
        hint = "start_cursor must be a cursor of an earlier response of a stream with the same parent, filter and shard"
    return errors.InvalidArgument(reason, f"{field}: {why + '; ' if why else ''}{hint}", {"field": field})


def decode_token(
    token: str,
    query: str,
    types: Sequence[Callable[[Any], bool]],
    *,
    field: str = "page_token",
    reason: str = "INVALID_PAGE_TOKEN",
) -> dict[str, Any]:
    """The document of a token made for ``query``; ``types`` check each sort-key value."""
    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise bad_token(field, reason, "malformed")
    body, checksum = token.split(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise bad_token(field, reason, "malformed") from None
    if _checksum(payload) != checksum:
        raise bad_token(field, reason, "altered or truncated")
    try:
        document = json.loads(payload)
        values = [_decode_value(v) for v in document["k"]]
    except (ValueError, KeyError, TypeError):
        raise bad_token(field, reason, "malformed") from None
    if document.get("v") != _TOKEN_VERSION or document.get("q") != query:
        raise bad_token(field, reason, "made for a different request")
    if len(values) != len(types) or not all(check(v) for check, v in zip(types, values)):
        raise bad_token(field, reason, "malformed")
    document["k"] = values
    return document


def is_str(value: Any) -> bool:
    return isinstance(value, str)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_time(value: Any) -> bool:
    return isinstance(value, dt.datetime) and value.tzinfo is not None
