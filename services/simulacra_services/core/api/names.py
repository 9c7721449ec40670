"""Resource names (AIP-122), parsed before anything is looked up.

A service declares each name shape once as a :class:`NamePattern`::

    MODEL_VERSION = NamePattern("models/{model}/versions/{version}", version=VERSION_NUMBER)
    MODEL_VERSION.parse("models/mnist-cvae/versions/3")     # {"model": "mnist-cvae", "version": "3"}
    MODEL_VERSION.parse(request.name, field="name")         # INVALID_ARGUMENT INVALID_NAME otherwise
    MODEL_VERSION.format(model="mnist-cvae", version=3)     # "models/mnist-cvae/versions/3"

Template syntax: literal segments, ``{variable}`` for one segment (matched by
``RESOURCE_ID`` unless a pattern is given for it by keyword), and ``[...]``
around an optional part (``datasets/{dataset}[/versions/{version}]``).
Optional variables that are absent parse as None.

A malformed name is ``errors.InvalidArgument`` with reason ``INVALID_NAME``
and metadata ``field``, ``name`` (cut by ``errors.shown``) and ``expected``
(the template), so a bad name never reaches a query or an object key and an
echoed value never swells an error beyond gRPC's metadata limits. Names
longer than ``MAX_NAME_CHARS`` are refused before any matching.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from simulacra_services.core import errors
from simulacra_services.core.errors import shown

MAX_NAME_CHARS = 512

RESOURCE_ID = r"[a-z][a-z0-9-]{0,62}"
"""AIP-122 style ids: lower case letters, digits and hyphens, starting with a letter, at most 63."""
VERSION_NUMBER = r"[1-9][0-9]{0,17}"
"""A positive decimal number without leading zeros that fits an int64."""
VERSION_OR_ALIAS = rf"{VERSION_NUMBER}|latest|{RESOURCE_ID}"
"""A version number or an alias (``latest``, ``production``...)."""

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def invalid_name(name: str, expected: str, field: str = "name", why: str = "") -> errors.SimulacraError:
    """The error for a resource name that does not have the form ``expected``."""
    text = f"{field}: {shown(name)!r} is not a resource name of the form {expected}"
    return errors.InvalidArgument(
        "INVALID_NAME", text + (f" ({why})" if why else ""), {"field": field, "name": shown(name), "expected": expected}
    )


class NamePattern:
    """One resource-name shape: parse names of it, format names from values."""

    def __init__(self, template: str, **variables: str) -> None:
        self.template = template
        self.variables = _VARIABLE.findall(template)
        unknown = set(variables) - set(self.variables)
        if unknown:
            raise ValueError(f"{template!r} has no variable {sorted(unknown)}")
        pieces: list[str] = []
        position = 0
        for match in _VARIABLE.finditer(template):
            pieces.append(_literal(template[position : match.start()]))
            name = match.group(1)
            pieces.append(f"(?P<{name}>{variables.get(name, RESOURCE_ID)})")
            position = match.end()
        pieces.append(_literal(template[position:]))
        self.regex = re.compile("".join(pieces))

    def __repr__(self) -> str:
        return f"NamePattern({self.template!r})"

    def match(self, name: str) -> dict[str, str | None] | None:
        """The variables of ``name``, or None when it does not have this shape."""
        if len(name) > MAX_NAME_CHARS:
            return None
        found = self.regex.fullmatch(name)
        return None if found is None else found.groupdict()

    def parse(self, name: str, field: str = "name") -> dict[str, Any]:
        """The variables of ``name`` (absent optional ones None); INVALID_NAME when it is malformed."""
        found = self.match(name)
        if found is None:
            raise invalid_name(name, self.template, field)
        return found

    def format(self, **values: Any) -> str:
        """The name with ``values``; optional parts whose variables are missing or None are left out."""
        return _render(self.template, {k: v for k, v in values.items() if v is not None})


def _literal(text: str) -> str:
    """Regex of a template's literal text, turning ``[`` ``]`` into an optional group."""
    return re.escape(text).replace(r"\[", "(?:").replace(r"\]", ")?")


def _render(template: str, values: Mapping[str, Any]) -> str:
    # Optional parts first (innermost), kept only when every variable in them has a value.
    optional = re.compile(r"\[([^\[\]]*)\]")
    while (part := optional.search(template)) is not None:
        inner = part.group(1)
        keep = all(name in values for name in _VARIABLE.findall(inner))
        template = template[: part.start()] + (inner if keep else "") + template[part.end() :]
    missing = [name for name in _VARIABLE.findall(template) if name not in values]
    if missing:
        raise KeyError(f"missing values for {missing}")
    return _VARIABLE.sub(lambda m: str(values[m.group(1)]), template)
