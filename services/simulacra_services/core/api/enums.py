"""Enum fields of requests: a number the contract does not define is bad input.

proto3 keeps an enum value it does not know (99, -1) as a plain number, so a
servicer that compares against the values it handles would quietly treat an
unknown one as its default. ``known_enum`` refuses it at the API edge, the
same way for every service: INVALID_ARGUMENT, reason ``INVALID_ENUM_VALUE``
(or the caller's own reason), metadata ``field`` and ``value``.
"""

from __future__ import annotations

from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper

from simulacra_services.core import errors

REASON = "INVALID_ENUM_VALUE"


def known_enum(value: int, enum_type: EnumTypeWrapper | EnumDescriptor, field: str, *, reason: str = REASON) -> int:
    """``value`` when ``enum_type`` defines it, else InvalidArgument naming ``field`` and the allowed names."""
    descriptor = enum_type if isinstance(enum_type, EnumDescriptor) else enum_type.DESCRIPTOR
    if value in descriptor.values_by_number:
        return value
    allowed = ", ".join(v.name for v in descriptor.values)
    raise errors.InvalidArgument(
        reason,
        f"{field}: {value} is not a value of {descriptor.name} (one of {allowed})",
        {"field": field, "value": value},
    )
