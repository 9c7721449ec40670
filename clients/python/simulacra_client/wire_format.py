"""Protobuf wire-format pieces shared by the code that joins or scans messages as bytes
(``augmentation_wire`` in the SDK, the annotation-store's StreamItems responses, the
augmentation service's count of a stream request's items)."""

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


MAX_VARINT_BYTES = 10
"""A 64-bit value takes at most 10 bytes; protobuf refuses longer varints, and so does ``read_varint``."""


def read_varint(data: bytes, index: int) -> tuple[int, int]:
    """The varint at ``data[index:]`` and the index after it.

    Raises IndexError when the data ends inside the varint and ValueError when it runs past
    ``MAX_VARINT_BYTES`` (malformed, or a hostile run of continuation bytes).
    """
    value = shift = 0
    for position in range(index, index + MAX_VARINT_BYTES):
        byte = data[position]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position + 1
        shift += 7
    raise ValueError(f"varint at byte {index} runs past {MAX_VARINT_BYTES} bytes")
