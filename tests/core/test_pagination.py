"""core.api.pagination: page sizes, token round trips and every way a token is refused."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from simulacra_services.core import errors
from simulacra_services.core.api import pagination
from simulacra_services.core.api.pagination import PageRequest

FP = pagination.fingerprint(rpc="ListThings", parent="things/a", filter="")


def _reason(call) -> tuple[str, dict[str, str]]:
    with pytest.raises(errors.InvalidArgument) as caught:
        call()
    return caught.value.reason, caught.value.metadata


@pytest.mark.parametrize(("asked", "size"), [(0, 100), (1, 1), (99, 99), (1000, 1000), (1001, 1000), (2**31 - 1, 1000)])
def test_page_size_default_and_cap(asked: int, size: int) -> None:
    assert PageRequest.parse(asked, "", FP).size == size
    assert pagination.DEFAULT_PAGE_SIZE == 100 and pagination.MAX_PAGE_SIZE == 1000


def test_negative_page_size_is_invalid_page_size() -> None:
    reason, metadata = _reason(lambda: PageRequest.parse(-1, "", FP))
    assert reason == "INVALID_PAGE_SIZE"
    assert metadata == {"field": "page_size", "value": "-1"}


def test_first_page_has_no_cursor() -> None:
    page = PageRequest.parse(0, "", FP)
    assert page.cursor is None and page.first


@pytest.mark.parametrize(
    "cursor",
    [
        ["b", 7],
        {"after": "x", "n": [1, 2.5, None, True]},
        "plain",
        12,
        [dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc), "id-9"],
        [dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))],
        {"nested": {"$time": 3}},  # looks like a time marker but is not one
    ],
)
def test_token_round_trip(cursor: object) -> None:
    token = pagination.next_page_token(cursor, FP)
    page = PageRequest.parse(10, token, FP)
    assert page.cursor == cursor
    assert page.size == 10 and not page.first
    # url-safe and opaque: no padding, no characters that need quoting
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def test_a_datetime_comes_back_aware_and_equal() -> None:
    moment = dt.datetime(2026, 12, 2, 14, 0, tzinfo=dt.timezone.utc)
    (back,) = pagination.decode_token(pagination.next_page_token([moment], FP), FP)
    assert back == moment and back.tzinfo is not None and pagination.is_time(back)


def test_token_of_other_request_fields_is_refused() -> None:
    token = pagination.next_page_token(["a"], FP)
    other = pagination.fingerprint(rpc="ListThings", parent="things/a", filter='x = "1"')
    reason, metadata = _reason(lambda: PageRequest.parse(10, token, other))
    assert reason == "INVALID_PAGE_TOKEN" and metadata == {"field": "page_token"}


def test_fingerprint_depends_on_every_field_and_not_on_their_order() -> None:
    assert pagination.fingerprint(a=1, b="x") == pagination.fingerprint(b="x", a=1)
    assert pagination.fingerprint(a=1, b="x") != pagination.fingerprint(a=2, b="x")
    assert pagination.fingerprint(a=1) != pagination.fingerprint(a=1, b=None)


def _tampered(token: str) -> list[str]:
    body, checksum = token.split(".")
    payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    forged = base64.urlsafe_b64encode(payload.replace(b'"a"', b'"b"')).decode().rstrip("=")
    return [
        token[:-1],  # cut
        token + "x",
        body + "." + checksum[::-1],  # wrong checksum
        forged + "." + checksum,  # changed cursor, old checksum
        "",  # (empty means first page: handled below)
        "no-dot",
        "a.b.c",
        "!!!." + checksum,
        "x" * (pagination.MAX_TOKEN_CHARS + 1),
    ]


def test_altered_tokens_are_refused() -> None:
    token = pagination.next_page_token(["a", 1], FP)
    for bad in _tampered(token):
        if not bad:
            continue
        reason, _ = _reason(lambda bad=bad: PageRequest.parse(10, bad, FP))
        assert reason == "INVALID_PAGE_TOKEN", bad


def test_a_well_signed_token_of_another_format_is_refused() -> None:
    payload = json.dumps({"c": ["a"], "f": FP, "v": 1}, separators=(",", ":")).encode()
    token = base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + pagination._checksum(payload)  # noqa: SLF001
    assert _reason(lambda: PageRequest.parse(10, token, FP))[0] == "INVALID_PAGE_TOKEN"


def test_validate_refuses_cursors_of_the_wrong_shape() -> None:
    validate = pagination.values_of(pagination.is_time, pagination.is_str)
    good = [dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), "id"]
    assert PageRequest.parse(5, pagination.next_page_token(good, FP), FP, validate=validate).cursor == good
    for cursor in (["2026-01-01", "id"], [good[0]], [good[0], 3], [good[0], "id", "extra"], {"a": 1}, None, [True, "id"]):
        token = pagination.next_page_token(cursor, FP)
        assert _reason(lambda t=token: PageRequest.parse(5, t, FP, validate=validate))[0] == "INVALID_PAGE_TOKEN", cursor
    naive = pagination.next_page_token([dt.datetime(2026, 1, 1), "id"], FP)
    assert _reason(lambda: PageRequest.parse(5, naive, FP, validate=validate))[0] == "INVALID_PAGE_TOKEN"


def test_is_int_refuses_bools() -> None:
    assert pagination.is_int(3) and not pagination.is_int(True) and not pagination.is_int(3.0)


def test_stream_cursors_use_their_own_field_and_reason() -> None:
    token = pagination.encode_token(["item-1", 3], FP)
    other = pagination.fingerprint(rpc="Other")
    with pytest.raises(errors.InvalidArgument) as caught:
        pagination.decode_token(token, other, field="start_cursor", reason="INVALID_CURSOR", hint="ask the stream again")
    assert caught.value.reason == "INVALID_CURSOR"
    assert caught.value.metadata == {"field": "start_cursor"}
    assert "ask the stream again" in caught.value.message


def test_finish_cuts_the_extra_row_and_points_after_the_last_kept_row() -> None:
    page = PageRequest.parse(3, "", FP)
    rows, token = page.finish([1, 2, 3, 4], lambda row: [row])
    assert rows == [1, 2, 3]
    assert PageRequest.parse(3, token, FP).cursor == [3]
    assert page.finish([1, 2, 3], lambda row: [row]) == ([1, 2, 3], "")
    assert page.finish([], lambda row: [row]) == ([], "")


def test_walking_pages_returns_every_row_once() -> None:
    data = list(range(1, 251))
    seen: list[int] = []
    token = ""
    pages = 0
    while True:
        page = PageRequest.parse(0, token, FP, validate=pagination.values_of(pagination.is_int))
        after = page.cursor[0] if page.cursor else 0
        rows, token = page.finish([x for x in data if x > after][: page.size + 1], lambda row: [row])
        seen.extend(rows)
        pages += 1
        if not token:
            break
    assert seen == data and pages == 3


def test_unserializable_cursor_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        pagination.next_page_token([object()], FP)
