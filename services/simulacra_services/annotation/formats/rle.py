"""COCO run-length encoding (RLE) of binary masks, without pycocotools.

The format (the one pycocotools reads and writes):

- The mask is scanned column-major (down each column, columns left to right,
  numpy ``order="F"``) and cut into runs that alternate 0s and 1s, starting
  with 0s: a mask whose first pixel is 1 starts with a run of length 0.
  The runs sum to ``height * width``.
- Uncompressed form: the list of run lengths.
- Compressed form: an ASCII string. From the third run on (index >= 3; that
  asymmetry is COCO's), each run is stored as the difference to the run two
  places before it; each number is written in 5-bit groups, least
  significant first, as characters ``48 + group``, with bit 0x20 set while
  more groups follow and the sign carried by bit 0x10 of the last group.

Malformed input raises ``errors.InvalidArgument`` with reason ``INVALID_RLE``
and metadata (``field`` when the caller names one); nothing here trusts its
input, because counts come straight from uploads and COCO files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simulacra_services.core import errors

Counts = Sequence[int]


def _invalid(message: str, field: str, **metadata: object) -> errors.SimulacraError:
    return errors.InvalidArgument("INVALID_RLE", f"{field}: {message}", {"field": field, **metadata})


def encode(mask: np.ndarray) -> list[int]:
    """Uncompressed RLE counts of a 2-D mask (any dtype; non-zero means 1)."""
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size])))
    counts = runs.tolist()
    if flat[0]:
        counts.insert(0, 0)
    return counts


def check_counts(counts: Counts, height: int, width: int, field: str = "counts") -> None:
    """Raise INVALID_RLE unless ``counts`` are non-negative runs summing to height*width."""
    if height < 0 or width < 0:
        raise _invalid(f"RLE size must be non-negative, got {height}x{width}", field, height=height, width=width)
    total = 0
    for index, run in enumerate(counts):
        if isinstance(run, bool) or not isinstance(run, (int, np.integer)) or run < 0:
            raise _invalid(f"RLE run {index} must be a non-negative integer, got {run!r}", field, index=index)
        total += int(run)
    if total != height * width:
        raise _invalid(
            f"RLE runs sum to {total} but the mask has {height}x{width} = {height * width} pixels",
            field,
            runs_sum=total,
            pixels=height * width,
        )


def decode(counts: Counts, height: int, width: int, field: str = "counts") -> np.ndarray:
    """The ``height`` x ``width`` uint8 mask (0/1) of uncompressed ``counts``."""
    check_counts(counts, height, width, field)
    values = np.arange(len(counts), dtype=np.int64) % 2
    flat = np.repeat(values.astype(np.uint8), np.asarray(counts, dtype=np.int64))
    return flat.reshape((height, width), order="F")


def area(counts: Counts) -> int:
    """Number of 1 pixels: the sum of the odd-indexed runs."""
    return int(sum(counts[1::2]))


def to_bbox(counts: Counts, height: int) -> tuple[float, float, float, float]:
    """Tight ``(x, y, w, h)`` box of the 1 pixels, as pycocotools' ``toBbox``.

    (0, 0, 0, 0) for an empty mask. Works on the runs, without decoding.
    """
    if height <= 0:
        return (0.0, 0.0, 0.0, 0.0)
    x_min = y_min = None
    x_max = y_max = -1
    position = 0
    for index, run in enumerate(counts):
        if index % 2 == 1 and run > 0:
            first, last = position, position + run - 1
            x_first, y_first = divmod(first, height)
            x_last, y_last = divmod(last, height)
            x_min = x_first if x_min is None else min(x_min, x_first)
            x_max = max(x_max, x_last)
            if x_first != x_last:  # the run wraps over a column: it covers every row between
                y_min, y_max = 0, height - 1
            else:
                y_min = y_first if y_min is None else min(y_min, y_first)
                y_max = max(y_max, y_last)
        position += run
    if x_min is None or y_min is None:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(x_min), float(y_min), float(x_max - x_min + 1), float(y_max - y_min + 1))


def compress(counts: Counts) -> str:
    """The compressed COCO string of uncompressed ``counts``."""
    out: list[str] = []
    for index, run in enumerate(counts):
        value = int(run)
        if index > 2:
            value -= int(counts[index - 2])
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: negative values end at -1
            more = value != -1 if group & 0x10 else value != 0
            if more:
                group |= 0x20
            out.append(chr(group + 48))
    return "".join(out)


def decompress(text: str, field: str = "counts", max_runs: int | None = None) -> list[int]:
    """Uncompressed counts of a compressed COCO string.

    Checks the alphabet and that no run ends up negative; the caller checks the
    total against the mask size (``check_counts``). ``max_runs`` bounds the work.
    """
    counts: list[int] = []
    position = 0
    length = len(text)
    while position < length:
        value = 0
        shift = 0
        more = True
        start = position
        while more:
            if position >= length:
                raise _invalid("compressed RLE ends in the middle of a number", field, position=start)
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise _invalid(
                    f"compressed RLE has an invalid character {text[position]!r} at position {position}",
                    field,
                    position=position,
                )
            value |= (code & 0x1F) << shift
            more = bool(code & 0x20)
            position += 1
            shift += 5
            if not more and code & 0x10:
                value |= -1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        if value < 0:
            raise _invalid(f"compressed RLE decodes to a negative run at position {start}", field, position=start)
        counts.append(value)
        if max_runs is not None and len(counts) > max_runs:
            raise _invalid(f"compressed RLE has more than {max_runs} runs", field, limit=max_runs)
    return counts


def counts_of(counts_or_string: Counts | str, height: int, width: int, field: str = "counts") -> list[int]:
    """Checked uncompressed counts from either form (a mask's ``counts``)."""
    if isinstance(counts_or_string, str):
        counts = decompress(counts_or_string, field, max_runs=height * width + 1)
    else:
        counts = list(counts_or_string)
    check_counts(counts, height, width, field)
    return counts
