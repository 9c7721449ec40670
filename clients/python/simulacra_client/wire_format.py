"""Protobuf wire-format pieces shared by the code that joins messages as bytes
(``augmentation_wire`` in the SDK, the annotation-store's StreamItems responses)."""

from __future__ import annotations


def varint(value: int) -> bytes:
    """The base-128 varint of a non-negative integer."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
