"""Turning the generator's float32 [N, C, H, W] output into what a client asked for.

uint8 is computed in place in the output buffer ONNX Runtime handed us (which nobody else holds),
so the only new array is the uint8 one. PNG is written here with zlib (no imaging library): the
sampling process needs ONNX Runtime and numpy only.
"""

from __future__ import annotations

import enum
import struct
import zlib

import numpy as np


class Format(enum.Enum):
    FLOAT32 = "float32"
    UINT8 = "uint8"
    PNG = "png"


class Layout(enum.Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
"""Channels -> PNG colour type: grey, grey+alpha, RGB, RGBA."""


def to_uint8_inplace(samples: np.ndarray) -> np.ndarray:
    """uint8 = clip(rint((x + 1) * 127.5), 0, 255), float32 arithmetic, rint = round half to even.

    Overwrites ``samples`` (float32, owned by the caller) on the way; returns the new uint8 array.
    """
    if samples.dtype != np.float32:
        raise TypeError(f"samples must be float32, got {samples.dtype}")
    np.add(samples, np.float32(1.0), out=samples)
    np.multiply(samples, np.float32(127.5), out=samples)
    np.rint(samples, out=samples)
    np.clip(samples, np.float32(0.0), np.float32(255.0), out=samples)
    return samples.astype(np.uint8)


def to_layout(samples: np.ndarray, layout: Layout) -> np.ndarray:
    """[N, C, H, W] as it is, or [N, H, W, C] (contiguous)."""
    if layout is Layout.NHWC:
        return np.ascontiguousarray(samples.transpose(0, 2, 3, 1))
    return samples


def png_bytes(image: np.ndarray, compress_level: int = 1) -> bytes:
    """One PNG of a uint8 [C, H, W] sample (C in 1..4), 8 bits per channel, no filtering."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] not in PNG_COLOR_TYPES:
        raise ValueError(f"a PNG needs uint8 [C, H, W] with C in 1..4, got {image.dtype} {image.shape}")
    channels, height, width = image.shape
    rows = np.empty((height, 1 + width * channels), dtype=np.uint8)
    rows[:, 0] = 0  # filter type None on every scanline
    rows[:, 1:] = image.transpose(1, 2, 0).reshape(height, width * channels)
    header = struct.pack(">IIBBBBB", width, height, 8, PNG_COLOR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)),
            _chunk(b"IEND", b""),
        )
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode(samples: np.ndarray, fmt: Format, layout: Layout) -> np.ndarray | list[bytes]:
    """float32 [N, C, H, W] (consumed) -> float32 or uint8 array in ``layout``, or one PNG per sample."""
    if fmt is Format.FLOAT32:
        return to_layout(samples, layout)
    pixels = to_uint8_inplace(samples)
    if fmt is Format.PNG:
        return [png_bytes(image) for image in pixels]
    return to_layout(pixels, layout)
