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
    torch.manual_seed(seed)
    model = SmallCNN(classes, test_images.shape[1])
    model(test_images[:1])  # materialise the lazy layer before the optimizer sees the parameters
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loss_fn = nn.CrossEntropyLoss()
    losses: list[float] = []
    started, seen = time.monotonic(), 0
    model.train()
    for _ in range(steps):
        if stop():
            raise KeyboardInterrupt
        images, labels = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(images), labels.long())
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        seen += len(labels)
    accuracy, recall = evaluate(model, test_images, test_labels, classes)
    return RunResult(accuracy, recall, losses, time.monotonic() - started, seen)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[float, list[float]]:
    model.eval()
    predicted = torch.cat([model(images[i : i + 512]).argmax(1) for i in range(0, len(images), 512)])
    correct = predicted == labels
    recall = [float(correct[labels == c].float().mean()) if bool((labels == c).any()) else float("nan") for c in range(classes)]
    return float(correct.float().mean()), recall
