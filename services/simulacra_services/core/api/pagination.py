"""Pagination of every List RPC (AIP-158): page sizes and opaque page tokens, in one place.

Usage in a servicer or repository::

    fingerprint = pagination.fingerprint(rpc="ListModels", parent=request.parent, filter=request.filter)
    page = PageRequest.parse(request.page_size, request.page_token, fingerprint)
    rows = query(after=page.cursor, limit=page.size + 1)    # one row more tells if a next page exists
    records, token = page.finish(rows, lambda row: [row.create_time, row.model_id])

Rules (the contract of every ``page_size`` / ``page_token`` pair):

* ``page_size`` 0 means ``DEFAULT_PAGE_SIZE`` (100); above ``MAX_PAGE_SIZE`` (1000)
  it is cut to the maximum; negative is INVALID_ARGUMENT ``INVALID_PAGE_SIZE``.
* A token continues after a *cursor*: any JSON value (typically the sort key
  of the last row returned); ``datetime`` values travel too (timezone-aware
  ones come back equal). ``cursor`` is None on the first page.
* A token is bound to a *fingerprint* of the other request fields
  (``fingerprint(**fields)``). A token that is altered, cut, too long, or
  used with other request fields is INVALID_ARGUMENT ``INVALID_PAGE_TOKEN``
  (metadata ``field``); callers that check the cursor's shape pass
  ``validate`` and get the same error for a cursor of the wrong shape. A
  cursor never reaches SQL as anything but the values the caller checked.
* Streams use the same codec for their resume cursors: ``field`` and
  ``reason`` name the request field and reason (e.g. ``start_cursor`` /
  ``INVALID_CURSOR``), ``hint`` says how to get a valid one.

A token is base64url of a small JSON document followed by a checksum. The
checksum is not a secret MAC: tokens hold no secret, every replica must read
every other's tokens without sharing a key, and a forged but well-formed token
can only start a listing the caller could request anyway.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from simulacra_services.core import errors

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_TOKEN_CHARS = 4096
"""Longer tokens are refused before any decoding."""

_FORMAT = 2
_CHECKSUM_CONTEXT = b"simulacra.page-token.v2"
_TIME_KEY = "$time"
_PAGE_TOKEN_HINT = "page_token must be the next_page_token of the previous page, with the same other request fields"

T = TypeVar("T")


def page_size_of(page_size: int, field: str = "page_size") -> int:
    """The contract's rule: 0 means the default, larger than the maximum is cut to it, negative is refused."""
    if page_size < 0:
        raise errors.InvalidArgument(
            "INVALID_PAGE_SIZE", f"{field} must be >= 0, got {page_size}", {"field": field, "value": page_size}
        )
    return DEFAULT_PAGE_SIZE if page_size == 0 else min(page_size, MAX_PAGE_SIZE)


def fingerprint(**fields: Any) -> str:
    """A short digest of the request fields a token is bound to (any JSON-able values; others via ``str``)."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _checksum(payload: bytes) -> str:
    return hashlib.sha256(_CHECKSUM_CONTEXT + payload).hexdigest()[:16]


def _encode_special(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {_TIME_KEY: value.isoformat()}
    raise TypeError(f"a page cursor holds JSON values and datetimes, not {type(value).__name__}")


def _decode_special(document: dict[str, Any]) -> Any:
    if len(document) == 1 and isinstance(document.get(_TIME_KEY), str):
        return dt.datetime.fromisoformat(document[_TIME_KEY])
    return document


def encode_token(cursor: Any, fingerprint: str) -> str:
    """An opaque token that continues after ``cursor`` for requests of ``fingerprint``.

    Cheap enough to make one per streamed item: one ``json.dumps`` and one sha256.
    """
    payload = json.dumps(
        {"c": cursor, "f": fingerprint, "v": _FORMAT}, separators=(",", ":"), default=_encode_special
    ).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + _checksum(payload)


def next_page_token(cursor: Any, fingerprint: str) -> str:
    """The ``next_page_token`` of a page whose last row has sort key ``cursor``."""
    return encode_token(cursor, fingerprint)


def invalid_token(
    field: str = "page_token", why: str = "", *, reason: str = "INVALID_PAGE_TOKEN", hint: str = _PAGE_TOKEN_HINT
) -> errors.SimulacraError:
    """The error for a token that cannot be used (``why``: malformed, altered, other request...)."""
    return errors.InvalidArgument(reason, f"{field}: {why + '; ' if why else ''}{hint}", {"field": field})


def decode_token(
    token: str,
    fingerprint: str,
    *,
    validate: Callable[[Any], bool] | None = None,
    field: str = "page_token",
    reason: str = "INVALID_PAGE_TOKEN",
    hint: str = _PAGE_TOKEN_HINT,
) -> Any:
    """The cursor of ``token``, checked against ``fingerprint`` (and ``validate`` when given)."""

    def bad(why: str) -> errors.SimulacraError:
        return invalid_token(field, why, reason=reason, hint=hint)

    if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise bad("malformed")
    body, checksum = token.split(".")
    try:
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise bad("malformed") from None
    if _checksum(payload) != checksum:
        raise bad("altered or truncated")
    try:
        document = json.loads(payload, object_hook=_decode_special)
        version, bound, cursor = document["v"], document["f"], document["c"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise bad("malformed") from None
    if version != _FORMAT or bound != fingerprint:
        raise bad("made for a different request")
    if validate is not None:
        try:
            valid = validate(cursor)
        except (TypeError, ValueError, KeyError, IndexError):
            valid = False
        if not valid:
            raise bad("malformed")
    return cursor


@dataclass(frozen=True)
class PageRequest:
    """One page of a List call: how many rows (``size``) after which ``cursor`` (None: from the start)."""

    size: int
    cursor: Any
    fingerprint: str

    @classmethod
    def parse(
        cls,
        page_size: int,
        page_token: str,
        fingerprint: str,
        *,
        validate: Callable[[Any], bool] | None = None,
    ) -> PageRequest:
        """Check ``page_size`` and ``page_token`` of a request whose other fields digest to ``fingerprint``."""
        size = page_size_of(page_size)
        cursor = decode_token(page_token, fingerprint, validate=validate) if page_token else None
        return cls(size, cursor, fingerprint)

    @property
    def first(self) -> bool:
        """True on the first page (no token given)."""
        return self.cursor is None

    def next_token(self, cursor: Any) -> str:
        return encode_token(cursor, self.fingerprint)

    def finish(self, rows: Sequence[T], cursor_of: Callable[[T], Any]) -> tuple[list[T], str]:
        """Given up to ``size + 1`` rows, the page's rows and its ``next_page_token`` ("" on the last page)."""
        page = list(rows[: self.size])
        if len(rows) > self.size and page:
            return page, self.next_token(cursor_of(page[-1]))
        return page, ""


# Cursor checks for ``validate``: a list of sort-key values of the given types.


def is_str(value: Any) -> bool:
    return isinstance(value, str)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_time(value: Any) -> bool:
    return isinstance(value, dt.datetime) and value.tzinfo is not None


def values_of(*checks: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A ``validate`` for a cursor that is a list of values, one check per position."""

    def validate(cursor: Any) -> bool:
        return isinstance(cursor, list) and len(cursor) == len(checks) and all(c(v) for c, v in zip(checks, cursor))

    return validate
