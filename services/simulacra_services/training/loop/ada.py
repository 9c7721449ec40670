"""Adaptive discriminator augmentation (Karras et al. 2020): tune p from the overfitting heuristic.

r_t = E[sign(D(real))] over the last ``interval`` steps: near 1 when the discriminator is sure of
every real image (it memorised them), near 0 when it is not. Every interval, p moves toward the
value that holds r_t at ``target``, by at most batch*interval/speed_images; p's history is kept so
the job can show and plot it.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class AdaController:
    target: float = 0.6
    interval: int = 4
    speed_images: int = 20_000
    p: float = 0.0
    adjust_enabled: bool = True
    history: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)
    _sign_sum: float = 0.0
    _count: int = 0
    _steps: int = 0

    def accumulate(self, real_scores: torch.Tensor) -> None:
        self._sign_sum += float(torch.sign(real_scores.detach()).sum())
        self._count += real_scores.numel()

    def end_step(self, step: int, batch_size: int) -> None:
        self._steps += 1
        if self._steps < self.interval or self._count == 0:
            return
        r_t = self._sign_sum / self._count
        if self.adjust_enabled:
            direction = 1.0 if r_t > self.target else -1.0
            self.p = min(1.0, max(0.0, self.p + direction * batch_size * self.interval / self.speed_images))
        self.history.append((step, self.p, r_t))
        self._sign_sum, self._count, self._steps = 0.0, 0, 0

    @property
    def r_t(self) -> float:
        return self.history[-1][2] if self.history else 0.0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, [tuple(item) for item in value] if key == "history" else value)
