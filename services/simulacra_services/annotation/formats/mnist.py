"""MNIST-style IDX files -> digit images and labels, without storage.

The IDX format (LeCun's, of train-images-idx3-ubyte and friends): a 4-byte
magic ``00 00 TYPE NDIM``, then NDIM big-endian uint32 sizes, then the data
in row-major order, big-endian. Only TYPE 0x08 (unsigned byte) is accepted:
it is what every MNIST-like image and label file uses. Files may be gzip'ed
(as they are distributed); decompression is bounded so that a small gzip
cannot expand into gigabytes.

Each digit becomes a grayscale PNG encoded here with fixed settings, so the
same pixels always give the same bytes (and the same content address): a
re-run import finds its images already stored.
"""

from __future__ import annotations

import io
import zlib

import numpy as np

from simulacra_services.core import errors

IDX_UBYTE = 0x08
MAX_IDX_BYTES = 256 * 1024 * 1024
"""Largest decompressed IDX file (MNIST's 60,000 training images are 47 MB)."""
MAX_SIDE = 1024
MAX_LABEL = 255


def _invalid(reason: str, path: str, message: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument(reason, f"{path}: {message}", {"field": path, **metadata})


def _gunzip(data: bytes, path: str, max_bytes: int) -> bytes:
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, max_bytes + 1)
    except zlib.error as error:
        raise _invalid("INVALID_IDX", path, f"is not valid gzip: {error}") from None
    if len(out) > max_bytes:
        raise _invalid("IDX_TOO_LARGE", path, f"decompresses to more than {max_bytes} bytes", limit=max_bytes)
    if not decompressor.eof:
        raise _invalid("INVALID_IDX", path, "gzip stream is truncated")
    return out


def parse_idx(data: bytes, path: str = "idx", *, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """The uint8 array of an IDX file (gzip'ed or not)."""
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, path, max_bytes)
    elif len(data) > max_bytes:
        raise _invalid("IDX_TOO_LARGE", path, f"{len(data)} bytes, at most {max_bytes}", limit=max_bytes)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise _invalid("INVALID_IDX", path, "does not start with an IDX magic number (00 00 TYPE NDIM)")
    kind, ndim = data[2], data[3]
    if kind != IDX_UBYTE:
        raise _invalid("INVALID_IDX", path, f"element type 0x{kind:02x} is not supported, only unsigned bytes (0x08)", type=kind)
    if not 1 <= ndim <= 3:
        raise _invalid("INVALID_IDX", path, f"has {ndim} dimensions; labels have 1, images 3", ndim=ndim)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _invalid("INVALID_IDX", path, "ends inside its header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != expected:
        raise _invalid(
            "INVALID_IDX",
            path,
            f"header says {'x'.join(map(str, shape))} = {expected} bytes of data, the file has {len(data) - header}",
            expected=expected,
            actual=len(data) - header,
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def write_idx(array: np.ndarray) -> bytes:
    """An uncompressed IDX file of a uint8 array (for tests and tools)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, IDX_UBYTE, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def check_digits(images: np.ndarray, labels: np.ndarray, images_path: str = "images", labels_path: str = "labels") -> None:
    """Images are N x H x W, labels N, with matching counts."""
    if images.ndim != 3:
        raise _invalid("INVALID_IDX", images_path, f"images must have 3 dimensions (count, rows, columns), got {images.ndim}", ndim=images.ndim)
    if labels.ndim != 1:
        raise _invalid("INVALID_IDX", labels_path, f"labels must have 1 dimension, got {labels.ndim}", ndim=labels.ndim)
    count, rows, columns = images.shape
    if not (1 <= rows <= MAX_SIDE and 1 <= columns <= MAX_SIDE):
        raise _invalid("INVALID_IDX", images_path, f"images are {rows}x{columns}, each side must be 1..{MAX_SIDE}", rows=rows, columns=columns)
    if labels.shape[0] != count:
        raise _invalid(
            "MNIST_COUNT_MISMATCH",
            labels_path,
            f"{labels.shape[0]} labels for {count} images",
            labels=labels.shape[0],
            images=count,
        )


def encode_png(pixels: np.ndarray) -> bytes:
    """A grayscale PNG of a 2-D uint8 array, byte-for-byte the same for the same pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))  # 2-D uint8: mode L
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def category_name(label: int) -> str:
    """Digit d is the category named "d" (with id d + 1)."""
    return str(label)


SUBSET_SEED = 0
"""The seed of ``stratified_subset`` for an import's ``limit``: the same limit always takes the same digits."""


def stratified_subset(labels: np.ndarray, limit: int, *, seed: int = SUBSET_SEED) -> np.ndarray:
    """Indexes (ascending) of ``limit`` digits drawn so that each class keeps its share.

    MNIST files are often sorted by class, so the first N digits would hold
    the first classes only. Each class's digits are put in a random order
    (``seed``); the k-th of a class of n digits gets the rank (k + 0.5) / n,
    and the ``limit`` lowest ranks are taken: every class gets its share of
    ``limit`` within one digit, the same seed gives the same subset, and a
    larger limit takes a superset (a re-run with a larger limit only adds).
    """
    labels = np.asarray(labels)
    if limit <= 0 or limit >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    class_order = rng.permutation(len(classes))  # breaks ties between classes of equal size
    rank = np.empty(len(labels))
    tie = np.empty(len(labels))
    for position, label in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == label))
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
        tie[members] = class_order[position]
    chosen = np.lexsort((tie, rank))[:limit]
    return np.sort(chosen)
