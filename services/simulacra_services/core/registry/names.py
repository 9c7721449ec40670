"""Model, version and alias names of the registry, checked before any object key is built."""

from __future__ import annotations

import re

from simulacra_services.core import errors

_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")
LATEST = "latest"
"""The reserved reference that always means a model's highest version."""
MAX_VERSION = 10**10 - 1
"""Version numbers are written with 10 digits in object keys (so keys sort by number)."""
_ECHO = 80


def _echo(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _ECHO else text[:_ECHO] + "..."


def check_model_id(model: str) -> str:
    if not isinstance(model, str) or not _ID.fullmatch(model):
        raise errors.InvalidArgument(
            "INVALID_MODEL_ID",
            f"model id {_echo(model)} is invalid: use 1 to 63 lower-case letters, digits and '-', starting with a letter",
            {"model": _echo(model)},
        )
    return model


def check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ID.fullmatch(alias) or alias == LATEST:
        raise errors.InvalidArgument(
            "INVALID_ALIAS",
            f"alias {_echo(alias)} is invalid: use 1 to 63 lower-case letters, digits and '-', starting with a letter "
            f"('{LATEST}' is reserved)",
            {"alias": _echo(alias)},
        )
    return alias


def check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION:
        raise errors.InvalidArgument(
            "INVALID_MODEL_VERSION",
            f"model version {_echo(version)} is invalid: versions are numbered from 1",
            {"version": _echo(version)},
        )
    return version


def parse_model_name(name: str) -> str:
    """``models/{model}`` -> model id."""
    parts = name.split("/") if isinstance(name, str) else []
    if len(parts) != 2 or parts[0] != "models":
        raise errors.InvalidArgument(
            "INVALID_MODEL_NAME", f"{_echo(name)} is not a model name: expected 'models/{{model}}'", {"name": _echo(name)}
        )
    return check_model_id(parts[1])


def parse_model_version_name(name: str) -> tuple[str, str]:
    """``models/{model}/versions/{ref}`` -> (model id, ref), ref a number, an alias or ``latest``."""
    parts = name.split("/") if isinstance(name, str) else []
    if len(parts) != 4 or parts[0] != "models" or parts[2] != "versions" or not parts[3]:
        raise errors.InvalidArgument(
            "INVALID_MODEL_VERSION_NAME",
            f"{_echo(name)} is not a model version name: expected 'models/{{model}}/versions/{{version, alias or latest}}'",
            {"name": _echo(name)},
        )
    model = check_model_id(parts[1])
    ref = parts[3]
    if not ref.isdigit() and ref != LATEST:
        check_alias(ref)
    return model, ref
