"""Which items make up the batch of step k: a pure function of (seed, step), so resuming is exact.

Epoch e visits the items in a permutation drawn from (seed, e); the last partial batch of an epoch
is dropped, so every batch has the same size. The data-loader position in a checkpoint is the step.
"""

from __future__ import annotations

import torch


class BatchSchedule:
    def __init__(self, item_count: int, batch_size: int, seed: int) -> None:
        if item_count < 1:
            raise ValueError("no items to train on")
        self.item_count = item_count
        self.batch_size = min(batch_size, item_count)
        self.seed = seed
        self.steps_per_epoch = item_count // self.batch_size
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def indices(self, step: int) -> torch.Tensor:
        epoch = self.epoch_of(step)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
            self._order = torch.randperm(self.item_count, generator=generator)
            self._epoch = epoch
        start = (step % self.steps_per_epoch) * self.batch_size
        return self._order[start : start + self.batch_size]
