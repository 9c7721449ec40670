"""The small CNN used three ways: the report's domain feature extractor (trained on the real
training split, never on downloaded weights), and the TSTR / TRTR classifier; plus a logistic
regression on features for the classifier two-sample test."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FEATURE_DIM = 64


class SmallCnn(nn.Module):
    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(64 * 16, FEATURE_DIM),
            nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, max(num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


MIN_STEPS = 400
MAX_EPOCHS_FOR_MIN_STEPS = 50
"""Small sets get more passes: at least MIN_STEPS optimiser steps (but at most 50 epochs for that)."""


def train_classifier(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 5, seed: int = 0, batch_size: int = 64,
    min_steps: int = MIN_STEPS,
) -> SmallCnn:
    steps_per_epoch = max(1, -(-len(images) // batch_size))
    epochs = max(epochs, min(-(-min_steps // steps_per_epoch), MAX_EPOCHS_FOR_MIN_STEPS))
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SmallCnn(images.shape[1], num_classes)
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    model.train()
    if num_classes >= 2:
        for _ in range(epochs):
            order = torch.randperm(len(images), generator=generator)
            for start in range(0, len(images), batch_size):
                batch = order[start : start + batch_size]
                loss = F.cross_entropy(model(images[batch]), labels[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    return model.eval()


@torch.no_grad()
def predict(model: SmallCnn, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    return torch.cat([model(images[i : i + batch_size]).argmax(1) for i in range(0, len(images), batch_size)]).numpy()


@torch.no_grad()
def features(model: SmallCnn, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    return torch.cat([model.features(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]).numpy()


def weights_digest(model: nn.Module) -> str:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def two_sample_accuracy(a: np.ndarray, b: np.ndarray, seed: int = 0, steps: int = 200) -> float:
    """Held-out accuracy of a logistic regression telling a from b (half of each to train)."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([a, b]).astype(np.float32)
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))]).astype(np.float32)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    half = len(x) // 2
    mean, std = x[:half].mean(0), x[:half].std(0) + 1e-6
    x = torch.from_numpy((x - mean) / std)
    y = torch.from_numpy(y)
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps)

    def closure():
        optimizer.zero_grad()
        logits = x[:half] @ weight + bias
        loss = F.binary_cross_entropy_with_logits(logits, y[:half]) + 1e-3 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (x[half:] @ weight + bias) > 0
    return float((predicted.float() == y[half:]).float().mean())
