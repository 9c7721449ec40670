"""Filter strings in the manner of AIP-160: parse to an AST, compile to SQLAlchemy.

Shared by every service (``simulacra_services.core.api.filters``); a service
declares its own fields (see ``annotation.domain.filters.ITEM_FILTER_FIELDS``).

Supported subset (what ``ListItemsRequest.filter`` documents)::

    expression := factor (AND factor)*
    factor     := term (OR term)*           # AIP-160: OR binds tighter than AND
    term       := [NOT | -] simple
    simple     := "(" expression ")" | comparison
    comparison := FIELD ("=" | "!=" | "<" | "<=" | ">" | ">=" | ":") value
                | MAPFIELD ":" KEY          # key presence: attributes:weather
                | MAPFIELD "." KEY ":" "*"  # the same: attributes.weather:*
    value      := "string" | 'string' | number | true | false | bare_word

Keywords are upper case, as in AIP-160. Juxtaposition (AIP-160's implicit
AND) is refused rather than guessed: ``a = 1 b = 2`` is an error that asks
for AND or OR.

The caller declares the fields it accepts with their types (a whitelist);
values are checked and converted here (integers, numbers, booleans, RFC 3339
timestamps, strings, optionally a fixed set of choices), so the storage layer
receives typed values only. Every error is ``errors.InvalidArgument`` with
reason ``INVALID_FILTER`` and metadata ``position`` (0-based character
offset) plus what applies (``field``, ``limit``, ...).

``to_sqlalchemy`` turns an AST into a SQLAlchemy boolean expression given, for
each field, a column expression or a callable building the clause itself
(for joins, EXISTS subqueries, map fields).
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import sqlalchemy as sa
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from simulacra_services.core import errors

MAX_FILTER_LENGTH = 2048
MAX_DEPTH = 16
MAX_COMPARISONS = 64

REASON = "INVALID_FILTER"

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Integers a filter may hold: what every database column (and protobuf int64) can compare with."""


class FieldType(enum.Enum):
    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOL = "bool"
    TIMESTAMP = "timestamp"
    # A string-to-string map, read as MAP.<key> (e.g. attributes.weather).
    MAP = "map"


@dataclass(frozen=True)
class FieldSpec:
    """A filterable field: its type and, for strings, optionally the values allowed."""

    type: FieldType
    choices: tuple[str, ...] | None = None


class Operator(enum.Enum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    HAS = ":"


Value = Union[str, int, float, bool, dt.datetime, None]


@dataclass(frozen=True)
class Comparison:
    """``field op value``. For map fields ``field`` is the map's name and ``key``
    the map key; ``value is None`` only for a presence test (``op`` HAS)."""

    field: str
    op: Operator
    value: Value
    position: int
    key: str | None = None


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]


@dataclass(frozen=True)
class Not:
    operand: Node


Node = Union[Comparison, And, Or, Not]


# ---------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------

_MAP_KEY = re.compile(r"[a-z_][a-z0-9_]{0,63}")
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<op>!=|<=|>=|=|<|>|:)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<star>\*)
  | (?P<minus>-)
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<quote>["'])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # op, lparen, rparen, star, minus, number, word, string, end
    text: str
    position: int
    value: str = ""  # unescaped content of a string token


def _error(message: str, position: int, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument(REASON, f"invalid filter: {message} (at position {position})", {"position": position, **metadata})


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 < len(text) and text[i + 1] in (quote, "\\"):
                out.append(text[i + 1])
                i += 2
                continue
            raise _error("a backslash may only escape the quote or a backslash", i)
        if char == quote:
            return "".join(out), i + 1
        out.append(char)
        i += 1
    raise _error("unterminated string", start)


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        match = _TOKEN.match(text, i)
        if match is None:
            raise _error(f"unexpected character {text[i]!r}", i)
        kind = match.lastgroup or ""
        if kind == "quote":
            value, end = _read_string(text, i)
            tokens.append(_Token("string", text[i:end], i, value))
            i = end
            continue
        if kind != "space":
            tokens.append(_Token(kind, match.group(), i))
        i = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# ---------------------------------------------------------------------------
# Parser
# ---------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, fields: Mapping[str, FieldSpec], max_depth: int, max_comparisons: int) -> None:
        self.tokens = _tokenize(text)
        self.index = 0
        self.fields = fields
        self.max_depth = max_depth
        self.max_comparisons = max_comparisons
        self.comparisons = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def advance(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def keyword(self, word: str) -> bool:
        return self.token.kind == "word" and self.token.text == word

    def parse(self) -> Node:
        node = self.expression(0)
        if self.token.kind != "end":
            if self.token.kind == "rparen":
                raise _error("unbalanced ')'", self.token.position)
            raise _error(f"expected AND, OR or the end of the filter, found {self.token.text!r}", self.token.position)
        return node

    def expression(self, depth: int) -> Node:
        operands = [self.factor(depth)]
        while self.keyword("AND"):
            self.advance()
            operands.append(self.factor(depth))
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def factor(self, depth: int) -> Node:
        operands = [self.term(depth)]
        while self.keyword("OR"):
            self.advance()
            operands.append(self.term(depth))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def term(self, depth: int) -> Node:
        if self.keyword("NOT") or self.token.kind == "minus":
            position = self.advance().position
            self.check_depth(depth + 1, position)
            return Not(self.term(depth + 1))
        return self.simple(depth)

    def simple(self, depth: int) -> Node:
        token = self.token
        if token.kind == "lparen":
            self.advance()
            self.check_depth(depth + 1, token.position)
            node = self.expression(depth + 1)
            if self.token.kind != "rparen":
                raise _error(f"expected ')' to close the '(' at position {token.position}", self.token.position)
            self.advance()
            return node
        if token.kind == "word" and token.text not in ("AND", "OR", "NOT"):
            return self.comparison()
        if token.kind == "end":
            raise _error("the filter ends where a comparison should follow", token.position)
        raise _error(f"expected a field name or '(', found {token.text!r}", token.position)

    def check_depth(self, depth: int, position: int) -> None:
        if depth > self.max_depth:
            raise _error(f"nesting deeper than {self.max_depth} levels", position, limit=self.max_depth)

    def comparison(self) -> Comparison:
        name_token = self.advance()
        self.comparisons += 1
        if self.comparisons > self.max_comparisons:
            raise _error(f"more than {self.max_comparisons} comparisons", name_token.position, limit=self.max_comparisons)
        field, key, spec = self.resolve_field(name_token)
        op_token = self.token
        if op_token.kind != "op":
            raise _error(f"expected an operator (=, !=, <, <=, >, >=, :) after {name_token.text!r}", op_token.position, field=name_token.text)
        self.advance()
        op = Operator(op_token.text)
        if spec.type is FieldType.MAP:
            return self.map_comparison(field, key, op, name_token)
        value_token = self.advance()
        value = self.value(value_token, spec, field)
        if spec.type is FieldType.BOOL and op not in (Operator.EQ, Operator.NE, Operator.HAS):
            raise _error(f"field {field!r} is a boolean: only =, != and : apply", op_token.position, field=field)
        return Comparison(field, op, value, name_token.position)

    def resolve_field(self, token: _Token) -> tuple[str, str | None, FieldSpec]:
        name = token.text
        spec = self.fields.get(name)
        if spec is not None:
            return name, None, spec
        head, dot, key = name.partition(".")
        head_spec = self.fields.get(head)
        if dot and head_spec is not None and head_spec.type is FieldType.MAP:
            if not _MAP_KEY.fullmatch(key):
                raise _error(f"{key!r} is not a valid key of {head!r} (lower-case letters, digits, '_')", token.position, field=name)
            return head, key, head_spec
        allowed = ", ".join(sorted(f"{n}.<key>" if s.type is FieldType.MAP else n for n, s in self.fields.items()))
        raise _error(f"unknown field {name!r}; fields: {allowed}", token.position, field=name)

    def map_comparison(self, field: str, key: str | None, op: Operator, name_token: _Token) -> Comparison:
        value_token = self.advance()
        if key is None:  # attributes:weather
            if op is not Operator.HAS:
                raise _error(f"compare a key of {field!r} ({field}.<key> = value) or test one with {field}:<key>", name_token.position, field=field)
            if value_token.kind not in ("word", "string") or not _MAP_KEY.fullmatch(value_token.value or value_token.text):
                raise _error(f"expected a key of {field!r} after ':'", value_token.position, field=field)
            return Comparison(field, op, None, name_token.position, key=value_token.value or value_token.text)
        if op is Operator.HAS and value_token.kind == "star":  # attributes.weather:*
            return Comparison(field, op, None, name_token.position, key=key)
        value = self.value(value_token, FieldSpec(FieldType.STRING), f"{field}.{key}")
        return Comparison(field, op, value, name_token.position, key=key)

    def value(self, token: _Token, spec: FieldSpec, field: str) -> Value:
        negative = False
        if token.kind == "minus" and self.token.kind == "number":
            negative = True
            token = self.advance()
        kind, text = token.kind, token.text
        if kind == "word" and text in ("AND", "OR", "NOT"):
            raise _error(f"{text} is a keyword; quote it to compare {field!r} with the text", token.position, field=field)
        if kind not in ("string", "number", "word"):
            raise _error(f"expected a value for {field!r}, found {text or 'the end'!r}", token.position, field=field)
        if spec.type is FieldType.STRING:
            value = token.value if kind == "string" else ("-" if negative else "") + text
            if spec.choices is not None and value not in spec.choices:
                raise _error(f"{field!r} must be one of {', '.join(spec.choices)}; got {value!r}", token.position, field=field)
            return value
        if spec.type is FieldType.BOOL:
            if kind == "word" and text in ("true", "false"):
                return text == "true"
            raise _error(f"{field!r} is a boolean: use true or false", token.position, field=field)
        if spec.type is FieldType.TIMESTAMP:
            if kind != "string":
                raise _error(f"{field!r} is a timestamp: quote an RFC 3339 time such as \"2024-01-31T12:00:00Z\"", token.position, field=field)
            return _timestamp(token, field)
        if kind != "number":
            raise _error(f"{field!r} is a number, got {text!r}", token.position, field=field)
        sign = -1 if negative else 1
        if spec.type is FieldType.INTEGER and not text.isdigit():
            raise _error(f"{field!r} is an integer, got {errors.shown(text)!r}", token.position, field=field)
        if text.isdigit():
            # Out of int64, SQLite raises OverflowError and PostgreSQL a type error: bad input, not INTERNAL.
            value = sign * int(text)
            if not INT64_MIN <= value <= INT64_MAX:
                raise _error(
                    f"{field!r}: {errors.shown(text, 40)} is outside the 64-bit integer range", token.position, field=field, limit=INT64_MAX
                )
            return value
        number = float(text)
        if not math.isfinite(number):
            raise _error(f"{field!r} must be a finite number", token.position, field=field)
        return sign * number


def _timestamp(token: _Token, field: str) -> dt.datetime:
    text = token.value
    try:
        value = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise _error(f"{field!r} needs an RFC 3339 time such as \"2024-01-31T12:00:00Z\", got {text!r}", token.position, field=field) from None
    if value.tzinfo is None:
        raise _error(f"the time {text!r} needs a time zone (Z or +hh:mm)", token.position, field=field)
    return value.astimezone(dt.timezone.utc)


def parse_filter(
    text: str,
    fields: Mapping[str, FieldType | FieldSpec],
    *,
    max_length: int = MAX_FILTER_LENGTH,
    max_depth: int = MAX_DEPTH,
    max_comparisons: int = MAX_COMPARISONS,
) -> Node | None:
    """Parse ``text`` against the allowed ``fields``; ``None`` for an empty filter."""
    if len(text) > max_length:
        raise _error(f"filter is {len(text)} characters long, the limit is {max_length}", max_length, limit=max_length, length=len(text))
    if not text.strip():
        return None
    specs = {name: spec if isinstance(spec, FieldSpec) else FieldSpec(spec) for name, spec in fields.items()}
    return _Parser(text, specs, max_depth, max_comparisons).parse()


def fields_of(node: Node | None) -> set[str]:
    """Names of the fields a filter uses (map fields by their map name)."""
    if node is None:
        return set()
    if isinstance(node, Comparison):
        return {node.field}
    if isinstance(node, Not):
        return fields_of(node.operand)
    return set().union(*(fields_of(operand) for operand in node.operands))


# ---------------------------------------------------------------------------
# SQLAlchemy
# ---------------------------------------------------------------------------

ClauseBuilder = Callable[[Comparison], ColumnElement[bool]]
Target = Union[ColumnElement, ClauseBuilder, object]
"""A column expression (or ORM attribute), or a callable that builds the clause."""


def compare(column: ColumnElement, op: Operator, value: Value) -> ColumnElement[bool]:
    """``column op value``; HAS on a plain column means equality."""
    if value is None:
        raise ValueError("a presence test needs a clause builder, not a plain column")
    if isinstance(value, int) and not isinstance(value, bool):
        # Bound as BIGINT: PostgreSQL would type the parameter like a 32-bit column and refuse
        # any value beyond it (width > 3000000000) with "integer out of range".
        return apply(op, column, sa.literal(value, sa.BigInteger()))
    return apply(op, column, value)


_PYTHON_OPERATORS = {
    Operator.EQ: operator.eq,
    Operator.HAS: operator.eq,
    Operator.NE: operator.ne,
    Operator.LT: operator.lt,
    Operator.LE: operator.le,
    Operator.GT: operator.gt,
    Operator.GE: operator.ge,
}


def apply(op: Operator, left: Any, right: Any) -> Any:
    """``left op right`` with Python's operators: a bool for values, a clause for columns."""
    return _PYTHON_OPERATORS[op](left, right)


def to_sqlalchemy(node: Node | None, targets: Mapping[str, Target]) -> ColumnElement[bool]:
    """The SQLAlchemy condition of a parsed filter (``true()`` when ``node`` is None).

    ``targets`` maps every field of the whitelist to a column expression or a
    callable ``(Comparison) -> clause``; map fields need a callable.
    """
    if node is None:
        return sa.true()
    if isinstance(node, And):
        return sa.and_(*(to_sqlalchemy(operand, targets) for operand in node.operands))
    if isinstance(node, Or):
        return sa.or_(*(to_sqlalchemy(operand, targets) for operand in node.operands))
    if isinstance(node, Not):
        return sa.not_(to_sqlalchemy(node.operand, targets))
    target = targets[node.field]
    if isinstance(target, ClauseElement) or hasattr(target, "__clause_element__"):
        if node.key is not None:
            raise ValueError(f"map field {node.field!r} needs a clause builder, not a plain column")
        return compare(target, node.op, node.value)  # type: ignore[arg-type]
    if callable(target):
        return target(node)
    raise TypeError(f"filter target of {node.field!r} must be a column or a callable, got {type(target).__name__}")

