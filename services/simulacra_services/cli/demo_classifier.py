"""The demo's small classifier: the same CNN trained on each data arm, then measured on the test split.

Imported by ``simulacra demo`` only (it needs torch; the rest of the CLI does not).
A run is a fixed number of optimizer steps, so every arm sees the same number
of samples whatever its sources; batches come from an iterator of (images,
labels) tensors that the caller builds (in memory, or streamed through the
SDK's datasets).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


class SmallCNN(nn.Module):
    """Two convolutions and a linear head: ~30 k parameters, a few ms per batch of 64 on a CPU."""

    def __init__(self, classes: int = 10, channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.LazyLinear(32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class RunResult:
    accuracy: float
    recall: list[float]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples: int = 0


def in_memory_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int) -> Batches:
    """Endless shuffled batches of in-memory tensors (a new permutation per pass, from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chosen = order[start : start + batch_size]
            yield images[chosen], labels[chosen]
        if len(order) < batch_size:
            yield images[order], labels[order]


def train(
    batches: Batches,
    *,
    steps: int,
    seed: int,
    channels: int = 1,
    classes: int = 10,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[SmallCNN, RunResult]:
    """A fresh SmallCNN (seeded) trained for ``steps`` batches, and its losses (no test figures yet)."""
    torch.manual_seed(seed)
    model = SmallCNN(classes, channels)
    optimizer: torch.optim.Optimizer | None = None
    schedule = None
    loss_fn = nn.CrossEntropyLoss()
    result = RunResult(float("nan"), [])
    started = time.monotonic()
    model.train()
    for _ in range(steps):
        if stop():
            raise KeyboardInterrupt
        images, labels = next(batches)
        if optimizer is None:  # materialise the lazy layer before the optimizer sees the parameters
            model(images[:1])
            optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels.long())
        loss.backward()
        optimizer.step()
        schedule.step()
        result.losses.append(float(loss.detach()))
        result.samples += len(labels)
    result.seconds = time.monotonic() - started
    return model, result


def train_and_test(
    batches: Batches,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    steps: int,
    seed: int,
    classes: int = 10,
    stop: Callable[[], bool] = lambda: False,
) -> RunResult:
    """Train a fresh SmallCNN (seeded) for ``steps`` batches; its test accuracy and per-class recall."""
    model, result = train(batches, steps=steps, seed=seed, channels=test_images.shape[1], classes=classes, stop=stop)
    result.accuracy, result.recall = evaluate(model, test_images, test_labels, classes)
    return result


@dataclass
class Tally:
    """Synthetic samples drawn and accepted by a ``LabelFilter``."""

    drawn: int = 0
    accepted: int = 0

    @property
    def rate(self) -> float:
        return self.accepted / self.drawn if self.drawn else float("nan")


class FilterStarved(RuntimeError):
    """A label filter that accepts almost nothing (a generator whose samples do not match their labels)."""


class LabelFilter:
    """Rejection sampling on label fidelity: a synthetic sample is kept when ``judge`` (a classifier
    trained on the real training data only) gives its conditioned label at least ``confidence``."""

    def __init__(self, judge: nn.Module, confidence: float, *, patience: int = 20_000) -> None:
        self.judge = judge.eval()
        self.confidence = confidence
        self.patience = patience  # samples drawn before an acceptance under 1% is given up on

    @torch.no_grad()
    def batches(self, blocks: Batches, batch_size: int, tally: Tally | None = None) -> Batches:
        """Batches of ``batch_size`` accepted samples, in the order ``blocks`` brings them; FilterStarved
        when fewer than 1% of ``patience`` drawn samples pass."""
        tally = tally if tally is not None else Tally()
        held: list[tuple[torch.Tensor, torch.Tensor]] = []
        count = 0
        for images, labels in blocks:
            labels = labels.long()
            tally.drawn += len(labels)
            if self.confidence > 0:
                agreement = self.judge(images).softmax(1).gather(1, labels[:, None])[:, 0]
                keep = agreement >= self.confidence
                images, labels = images[keep], labels[keep]
            tally.accepted += len(labels)
            if tally.drawn >= self.patience and tally.accepted < 0.01 * tally.drawn:
                raise FilterStarved(
                    f"the label filter kept {tally.accepted} of {tally.drawn} synthetic samples: the generator's samples do not look like "
                    f"their labels to a classifier trained on the real data (lower --synthetic-confidence, now {self.confidence:g}, to keep more)"
                )
            held.append((images, labels))
            count += len(labels)
            while count >= batch_size:
                pool_images, pool_labels = torch.cat([h[0] for h in held]), torch.cat([h[1] for h in held])
                yield pool_images[:batch_size], pool_labels[:batch_size]
                held, count = [(pool_images[batch_size:], pool_labels[batch_size:])], count - batch_size


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[float, list[float]]:
    model.eval()
    predicted = torch.cat([model(images[i : i + 512]).argmax(1) for i in range(0, len(images), 512)])
    correct = predicted == labels
    recall = [float(correct[labels == c].float().mean()) if bool((labels == c).any()) else float("nan") for c in range(classes)]
    return float(correct.float().mean()), recall
