"""The SDK's protobuf varint pieces agree with protobuf's own encoder and refuse malformed input."""

from __future__ import annotations

import pytest

from simulacra_client.api.sampling.v1 import sampling_service_pb2 as api
from simulacra_client.wire_format import MAX_VARINT_BYTES, read_varint, varint

VALUES = [1, 127, 128, 300, 16383, 16384, 2**32 - 1, 2**35 + 7, 2**63, 2**64 - 1]


@pytest.mark.parametrize("value", VALUES)
def test_varints_are_protobufs(value: int) -> None:
    wire = api.SampleRequest(seed=value).SerializeToString()  # field 3, wire type 0: key byte 0x18
    assert wire == b"\x18" + varint(value)
    assert read_varint(wire, 1) == (value, len(wire))
    assert read_varint(wire + b"\x05tail", 1) == (value, len(wire))  # stops at its own end


def test_zero_is_one_byte() -> None:
    assert varint(0) == b"\x00" and read_varint(b"\x00", 0) == (0, 1)


def test_a_truncated_or_endless_varint_is_refused() -> None:
    encoded = varint(2**40)
    with pytest.raises(IndexError):
        read_varint(encoded[:-1], 0)
    with pytest.raises(ValueError, match="past 10 bytes"):
        read_varint(b"\xff" * (MAX_VARINT_BYTES + 5) + b"\x01", 0)
    assert read_varint(b"\xff" * (MAX_VARINT_BYTES - 1) + b"\x01", 0)[1] == MAX_VARINT_BYTES
