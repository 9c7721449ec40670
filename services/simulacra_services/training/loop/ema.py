"""Exponential moving average of the generator's weights (the copy that is sampled and exported)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``decay`` is the long-run decay; early on it ramps up as (1 + step) / (10 + step), so the average
    never spans much more than the steps taken so far (a short run is not dragged back to its
    random initial weights by a 0.999 average whose window is longer than the run)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.decay_at(step)
        for mine, theirs in zip(self.model.parameters(), model.parameters()):
            mine.lerp_(theirs.detach(), 1.0 - decay)
        for mine, theirs in zip(self.model.buffers(), model.buffers()):
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
