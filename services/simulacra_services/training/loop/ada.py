"""Adaptive discriminator augmentation (Karras et al. 2020): tune p from an overfitting heuristic.

Two heuristics of the ADA paper, each measured over the last ``interval`` steps:

- ``r_t`` = E[sign(D(train reals))]: near 1 when the discriminator is sure of every real image.
  It assumes D's scores sit around a fixed zero; a hinge-loss discriminator's scores drift up and
  down together (reals, held-out reals and fakes alike) by more than they differ, so r_t mostly
  follows that drift rather than overfitting.
- ``r_v`` = (E[D(train reals)] − E[D(validation reals)]) / (E[D(train reals)] − E[D(fakes)]): the
  share of the real-vs-fake margin that the discriminator gives the training images only, i.e.
  memorisation; 0 without overfitting, 1 when held-out reals look as fake as the generated ones.
  A common shift of all scores cancels. It needs held-out real images (the job's validation items,
  never those the report is measured on); when there is no margin (E[D(train)] ≤ E[D(fakes)]) r_v is 0.

Every interval, p moves toward the value that holds the heuristic at ``target``, by at most
batch*interval/speed_images; p's history (step, p, heuristic) is kept so the job can show and plot it.
"""

from __future__ import annotations

import dataclasses

import torch

HEURISTICS = ("r_t", "r_v")


@dataclasses.dataclass
class AdaController:
    target: float = 0.6
    interval: int = 4
    speed_images: int = 20_000
    p: float = 0.0
    adjust_enabled: bool = True
    heuristic: str = "r_t"
    history: list[tuple[int, float, float]] = dataclasses.field(default_factory=list)
    _sign_sum: float = 0.0
    _count: int = 0
    _steps: int = 0
    _real_sum: float = 0.0
    _fake_sum: float = 0.0
    _fake_count: int = 0
    _validation_sum: float = 0.0
    _validation_count: int = 0

    def accumulate(
        self, real_scores: torch.Tensor, fake_scores: torch.Tensor | None = None, validation_scores: torch.Tensor | None = None
    ) -> None:
        real_scores = real_scores.detach()
        self._sign_sum += float(torch.sign(real_scores).sum())
        self._real_sum += float(real_scores.sum())
        self._count += real_scores.numel()
        if fake_scores is not None:
            self._fake_sum += float(fake_scores.detach().sum())
            self._fake_count += fake_scores.numel()
        if validation_scores is not None:
            self._validation_sum += float(validation_scores.detach().sum())
            self._validation_count += validation_scores.numel()

    def measure(self) -> float:
        """The heuristic over what was accumulated since the last update."""
        if self.heuristic == "r_v":
            if not self._fake_count or not self._validation_count:
                raise ValueError("r_v needs the scores of fakes and of validation reals")
            real = self._real_sum / self._count
            margin = real - self._fake_sum / self._fake_count
            return (real - self._validation_sum / self._validation_count) / margin if margin > 0 else 0.0
        return self._sign_sum / self._count

    def end_step(self, step: int, batch_size: int) -> None:
        self._steps += 1
        if self._steps < self.interval or self._count == 0:
            return
        r = self.measure()
        if self.adjust_enabled:
            direction = 1.0 if r > self.target else -1.0
            self.p = min(1.0, max(0.0, self.p + direction * batch_size * self.interval / self.speed_images))
        self.history.append((step, self.p, r))
        self._sign_sum, self._count, self._steps = 0.0, 0, 0
        self._real_sum, self._fake_sum, self._fake_count, self._validation_sum, self._validation_count = 0.0, 0.0, 0, 0.0, 0

    @property
    def r(self) -> float:
        """The latest value of the heuristic (r_t or r_v)."""
        return self.history[-1][2] if self.history else 0.0

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, [tuple(item) for item in value] if key == "history" else value)
