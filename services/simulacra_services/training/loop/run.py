"""Drives a trainer over the batch schedule: steps, loss history, checkpoint state, stop requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from simulacra_services.training.loop.hyperparameters import Hyperparameters
from simulacra_services.training.loop.schedule import BatchSchedule
from simulacra_services.training.loop.trainers import Trainer

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass
class TrainingData:
    """Images in [-1, 1] [N, C, H, W], class labels [N], attribute value indices [N, A] or None."""

    images: torch.Tensor
    labels: torch.Tensor
    attributes: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, indices: torch.Tensor, device: torch.device):
        attributes = None if self.attributes is None else self.attributes[indices].to(device)
        return self.images[indices].to(device), self.labels[indices].to(device), attributes


def total_steps(hp: Hyperparameters, schedule: BatchSchedule) -> int:
    steps = hp.epochs * schedule.steps_per_epoch
    return min(steps, hp.max_steps) if hp.max_steps else steps


class TrainingRun:
    def __init__(self, trainer: Trainer, data: TrainingData) -> None:
        self.trainer = trainer
        self.data = data
        self.schedule = BatchSchedule(len(data), trainer.hp.batch_size, trainer.hp.seed)
        self.total_steps = total_steps(trainer.hp, self.schedule)
        self.step = 0
        self.history: list[dict] = []

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    @property
    def epoch(self) -> int:
        return self.schedule.epoch_of(max(self.step - 1, 0))

    def run(
        self,
        *,
        until_step: int | None = None,
        on_step: Callable[[TrainingRun, dict], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Trains to ``until_step`` (default: the end), or until ``should_stop()`` answers True."""
        end = self.total_steps if until_step is None else min(until_step, self.total_steps)
        while self.step < end:
            if should_stop is not None and should_stop():
                return
            images, labels, attributes = self.data.batch(self.schedule.indices(self.step), self.trainer.device)
            losses = self.trainer.step(self.step, images, labels, attributes)
            self.step += 1
            self.history.append({"step": self.step, **losses})
            if on_step is not None:
                on_step(self, losses)

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "kind": self.trainer.kind,
            "step": self.step,
            "trainer": self.trainer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT or state.get("kind") != self.trainer.kind:
            raise ValueError("checkpoint of another format or model kind")
        self.trainer.load_state_dict(state["trainer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self.history = list(state["history"])
