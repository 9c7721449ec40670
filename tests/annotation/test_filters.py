"""AIP-160 subset filters: parsing, errors, and compilation run on SQLite."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from simulacra_services.annotation.domain.filters import (
    ITEM_FILTER_FIELDS,
    And,
    Comparison,
    FieldSpec,
    FieldType,
    Not,
    Operator,
    Or,
    fields_of,
    parse_filter,
    to_sqlalchemy,
)
from simulacra_services.core import errors

FIELDS = {
    "split": FieldType.STRING,
    "width": FieldType.INTEGER,
    "score": FieldType.NUMBER,
    "reviewed": FieldType.BOOL,
    "create_time": FieldType.TIMESTAMP,
    "lineage": FieldSpec(FieldType.STRING, ("real", "augmented", "synthetic")),
    "attributes": FieldType.MAP,
}


def parse(text: str):
    return parse_filter(text, FIELDS)


def cmp(field: str, op: str, value, position: int, key: str | None = None) -> Comparison:
    return Comparison(field, Operator(op), value, position, key)


def rejected(text: str, **kwargs) -> errors.SimulacraError:
    with pytest.raises(errors.InvalidArgument) as caught:
        parse_filter(text, FIELDS, **kwargs)
    assert caught.value.reason == "INVALID_FILTER"
    assert "position" in caught.value.metadata
    return caught.value


# ---- parsing ------------------------------------------------------------------


def test_empty_filter_is_none() -> None:
    assert parse("") is None
    assert parse("   ") is None


def test_every_operator_and_literal_kind() -> None:
    assert parse('split = "train"') == cmp("split", "=", "train", 0)
    assert parse("split != val") == cmp("split", "!=", "val", 0)
    assert parse("width < 10") == cmp("width", "<", 10, 0)
    assert parse("width <= -3") == cmp("width", "<=", -3, 0)
    assert parse("score > 0.5") == cmp("score", ">", 0.5, 0)
    assert parse("score >= 2") == cmp("score", ">=", 2, 0)
    assert parse("reviewed = true") == cmp("reviewed", "=", True, 0)
    assert parse("split:train") == cmp("split", ":", "train", 0)
    assert parse(r"split = 'it\'s'") == cmp("split", "=", "it's", 0)
    assert parse(r'split = "say \"hi\" \\ there"') == cmp("split", "=", 'say "hi" \\ there', 0)
    assert parse("split = 2024") == cmp("split", "=", "2024", 0)  # numbers read as text for strings


def test_timestamp_is_converted_to_utc() -> None:
    node = parse('create_time >= "2024-03-01T12:00:00+02:00"')
    assert node == cmp("create_time", ">=", dt.datetime(2024, 3, 1, 10, 0, tzinfo=dt.timezone.utc), 0)


def test_map_fields_compare_keys_and_test_presence() -> None:
    assert parse('attributes.weather = "fog"') == cmp("attributes", "=", "fog", 0, key="weather")
    assert parse("attributes:weather") == cmp("attributes", ":", None, 0, key="weather")
    assert parse("attributes.weather:*") == cmp("attributes", ":", None, 0, key="weather")


def test_or_binds_tighter_than_and_as_in_aip_160() -> None:
    node = parse("split = a AND width = 1 OR width = 2")
    assert node == And((cmp("split", "=", "a", 0), Or((cmp("width", "=", 1, 14), cmp("width", "=", 2, 27)))))


def test_parentheses_not_and_minus() -> None:
    node = parse("NOT (split = a OR split = b) AND -reviewed = true")
    assert node == And(
        (
            Not(Or((cmp("split", "=", "a", 5), cmp("split", "=", "b", 18)))),
            Not(cmp("reviewed", "=", True, 34)),
        )
    )
    assert fields_of(node) == {"split", "reviewed"}


def test_item_fields_accept_the_documented_example() -> None:
    node = parse_filter('category = "car" AND split = "train" AND kind = box', ITEM_FILTER_FIELDS)
    assert fields_of(node) == {"category", "split", "kind"}


# ---- errors ---------------------------------------------------------------------


def test_unknown_field_names_field_and_position() -> None:
    error = rejected('split = "a" AND colour = "red"')
    assert error.metadata == {"position": "16", "field": "colour"}
    assert "colour" in error.message and "split" in error.message


def test_unknown_dotted_field() -> None:
    assert rejected("split.x = 1").metadata["field"] == "split.x"


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("split =", 7, "expected a value"),
        ("split", 5, "expected an operator"),
        ('split = "abc', 8, "unterminated string"),
        (r'split = "a\n"', 10, "backslash"),
        ("(split = a", 10, "expected ')'"),
        ("split = a)", 9, "unbalanced"),
        ("split = a split = b", 10, "expected AND, OR"),
        ("split = a AND", 13, "ends where a comparison"),
        ("split = a AND OR split = b", 14, "expected a field name"),
        ("split == a", 7, "expected a value"),
        ("split = a & b", 10, "unexpected character"),
        ("width = ten", 8, "is a number"),
        ("width = 1.5", 8, "is an integer"),
        ("reviewed = yes", 11, "true or false"),
        ("reviewed < true", 9, "only =, != and :"),
        ('create_time > "yesterday"', 14, "RFC 3339"),
        ('create_time > "2024-01-01T00:00:00"', 14, "time zone"),
        ("create_time > 5", 14, "quote an RFC 3339"),
        ("lineage = alien", 10, "must be one of"),
        ("attributes = x", 0, "compare a key"),
        ("attributes.Weather = x", 0, "not a valid key"),
        ("split = OR", 8, "keyword"),
    ],
)
def test_bad_filters_say_where(text: str, position: int, words: str) -> None:
    error = rejected(text)
    assert error.metadata["position"] == str(position)
    assert words in error.message


def test_too_long_filter() -> None:
    error = rejected("split = a" + " " * 2048)
    assert error.metadata["limit"] == "2048"
    assert error.metadata["length"] == str(9 + 2048)


def test_too_deep_nesting() -> None:
    assert parse("(" * 16 + "split = a" + ")" * 16) == cmp("split", "=", "a", 16)
    error = rejected("(" * 17 + "split = a" + ")" * 17)
    assert error.metadata == {"position": "16", "limit": "16"}
    assert rejected("NOT " * 17 + "split = a").metadata["limit"] == "16"


def test_too_many_comparisons() -> None:
    text = " OR ".join(["split = a"] * 5)
    assert parse_filter(text, FIELDS, max_comparisons=5) is not None
    error = rejected(text + " OR split = b", max_comparisons=5)
    assert error.metadata["limit"] == "5"


# ---- SQLAlchemy on SQLite ----------------------------------------------------------

metadata = sa.MetaData()
items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("split", sa.String),
    sa.Column("width", sa.Integer),
    sa.Column("score", sa.Float),
    sa.Column("reviewed", sa.Boolean),
    sa.Column("lineage", sa.String),
    sa.Column("create_time", sa.DateTime),
)
attributes = sa.Table(
    "attributes",
    metadata,
    sa.Column("item_id", sa.String, sa.ForeignKey("items.id")),
    sa.Column("key", sa.String),
    sa.Column("value", sa.String),
)

ROWS = [
    ("a", "train", 10, 0.1, True, "real", dt.datetime(2024, 1, 1)),
    ("b", "train", 20, 0.5, False, "augmented", dt.datetime(2024, 2, 1)),
    ("c", "val", 30, 0.9, True, "synthetic", dt.datetime(2024, 3, 1)),
    ("d", "test", 40, 0.7, False, "real", dt.datetime(2024, 4, 1)),
]
ATTRIBUTES = [("a", "weather", "fog"), ("b", "weather", "sun"), ("c", "weather", "fog"), ("c", "night", "true")]


def attribute_clause(comparison: Comparison) -> sa.ColumnElement[bool]:
    """EXISTS over the attributes table: how the storage layer plugs in a join."""
    condition = sa.and_(attributes.c.item_id == items.c.id, attributes.c.key == comparison.key)
    if comparison.value is not None:
        value = to_sqlalchemy(
            Comparison("value", comparison.op, comparison.value, comparison.position), {"value": attributes.c.value}
        )
        condition = sa.and_(condition, value)
    return sa.exists(sa.select(attributes.c.item_id).where(condition))


def naive_utc_time(comparison: Comparison) -> sa.ColumnElement[bool]:
    value = comparison.value.replace(tzinfo=None)  # stored as naive UTC
    return to_sqlalchemy(Comparison("t", comparison.op, value, comparison.position), {"t": items.c.create_time})


TARGETS = {
    "split": items.c.split,
    "width": items.c.width,
    "score": items.c.score,
    "reviewed": items.c.reviewed,
    "lineage": items.c.lineage,
    "create_time": naive_utc_time,
    "attributes": attribute_clause,
}


@pytest.fixture(scope="module")
def engine():
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(items.insert(), [dict(zip(("id", "split", "width", "score", "reviewed", "lineage", "create_time"), row)) for row in ROWS])
        connection.execute(attributes.insert(), [dict(zip(("item_id", "key", "value"), row)) for row in ATTRIBUTES])
    yield engine
    engine.dispose()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ["a", "b", "c", "d"]),
        ('split = "train"', ["a", "b"]),
        ("split != train", ["c", "d"]),
        ("width > 10 AND width <= 30", ["b", "c"]),
        ("width < 20 OR width >= 40", ["a", "d"]),
        ("score >= 0.5", ["b", "c", "d"]),
        ("reviewed = true", ["a", "c"]),
        ("NOT reviewed = true", ["b", "d"]),
        ("split = train AND lineage = real OR lineage = augmented", ["a", "b"]),
        ("(split = train AND lineage = real) OR lineage = synthetic", ["a", "c"]),
        ('attributes.weather = "fog"', ["a", "c"]),
        ('attributes.weather != "fog"', ["b"]),
        ("attributes:night", ["c"]),
        ("-attributes.weather:*", ["d"]),
        ('attributes.weather = fog AND split = val', ["c"]),
        ('create_time >= "2024-02-01T00:00:00Z"', ["b", "c", "d"]),
        ('create_time < "2024-02-01T01:00:00+02:00"', ["a"]),
    ],
)
def test_compiled_filter_selects_exactly_the_right_rows(engine, text: str, expected: list[str]) -> None:
    condition = to_sqlalchemy(parse(text), TARGETS)
    with engine.connect() as connection:
        ids = connection.execute(sa.select(items.c.id).where(condition).order_by(items.c.id)).scalars().all()
    assert ids == expected


def test_map_field_on_a_plain_column_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        to_sqlalchemy(parse("attributes:night"), {"attributes": attributes.c.value})
