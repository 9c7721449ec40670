"""Where each sample of a resumable stream goes: workers, ranks and mixes, as pure arithmetic.

The data-loading layer (``simulacra_client.torch_data``) reads every source as a
numbered sequence: position 0, 1, 2, ... of a synthetic stream (a sample index
offset) or of an annotation-store version (the order of its item stream). What
a DataLoader worker or a data-parallel rank reads, and what a mix of two
sources yields at step t, is computed here from positions alone, so that it is
the same in every process and on every restart, and needs no torch.

Workers: a rank's positions are cut, from where the iteration starts, into
blocks of ``block_size`` (the DataLoader's batch size); block k goes to worker
k mod W. A DataLoader takes batches from its workers in turn, so with
``batch_size == block_size`` it delivers the positions in their natural order
whatever the number of workers, and "n samples consumed" is all a checkpoint
needs to resume at position start + n.

Ranks (for sources addressed by index): rank r of R owns the global blocks
g with g mod R == r; its local position q is global block (q // B) * R + r.

Mixing: step t of a mix with ratio p (the share of the second source) takes
the second source when floor((t + 1) * p) > floor(t * p), so that after any n
steps exactly floor(n * p) samples came from it (never off by more than one).
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction


def worker_positions(start: int, worker: int, workers: int, block_size: int, stop: int | None = None) -> Iterator[int]:
    """Positions from ``start`` (up to ``stop``, exclusive; None = endless) that ``worker`` of ``workers`` reads."""
    _check_split(worker, workers, block_size)
    block = worker
    while True:
        first = start + block * block_size
        for position in range(first, first + block_size):
            if stop is not None and position >= stop:
                return
            yield position
        block += workers


def rank_to_global(local: int, rank: int, ranks: int, block_size: int) -> int:
    """The global position of a rank's ``local`` position (blocks of ``block_size`` dealt to ranks in turn)."""
    _check_split(rank, ranks, block_size)
    block, offset = divmod(local, block_size)
    return (block * ranks + rank) * block_size + offset


def _check_split(index: int, count: int, block_size: int) -> None:
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"index {index} of {count}: need 0 <= index < count")
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")


class MixSchedule:
    """Which source step t of a two-source mix reads, and at which of its own positions.

    ``ratio`` is the share of source 1 (for ``mix(real, synthetic)``: the synthetic
    share), a float rounded to a fraction with denominator at most 10**6 so that
    every process computes the same schedule.
    """

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be within [0, 1], got {ratio}")
        self.ratio = Fraction(ratio).limit_denominator(1_000_000)

    def taken(self, steps: int) -> tuple[int, int]:
        """Samples of source 0 and of source 1 among the first ``steps`` steps."""
        second = (steps * self.ratio.numerator) // self.ratio.denominator
        return steps - second, second

    def at(self, step: int) -> tuple[int, int]:
        """``(source, position in that source)`` of ``step``."""
        before = self.taken(step)
        after = self.taken(step + 1)
        source = 1 if after[1] > before[1] else 0
        return source, before[source]
