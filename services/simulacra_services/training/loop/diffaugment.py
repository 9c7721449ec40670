"""Differentiable augmentation (Zhao et al. 2020, DiffAugment), applied per image with probability p.

Small pure functions in the manner of ``DiffAugment_pytorch.py``: every random draw comes from the
caller's ``torch.Generator`` so that a resumed run draws the same augmentations. Each op is applied
to each image with probability ``p`` (ADA's per-image probability; p = 1 is plain DiffAugment).
Real and generated images go through the same ops, so the discriminator never sees an augmentation
that only one side has, and the gradients flow through to the generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from simulacra_services.training.loop.hyperparameters import POLICIES


def _uniform(x: torch.Tensor, generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand((x.shape[0], *shape), generator=generator, device=x.device, dtype=x.dtype)


def color(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random brightness, saturation and contrast."""
    x = x + (_uniform(x, generator, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(x, generator, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(x, generator, 1, 1, 1) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift by up to ``ratio`` of the size, filling with the background value -1."""
    n, _, h, w = x.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = (_uniform(x, generator) * (2 * max_dy + 1)).floor().long() - max_dy
    dx = (_uniform(x, generator) * (2 * max_dx + 1)).floor().long() - max_dx
    padded = F.pad(x, (max_dx, max_dx, max_dy, max_dy), value=-1.0)
    rows = torch.arange(h, device=x.device).view(1, h, 1) + max_dy - dy.view(n, 1, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w) + max_dx - dx.view(n, 1, 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, generator: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Blank a random square of ``ratio`` of the size (set to the background value -1)."""
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = (_uniform(x, generator) * (h + 1 - size_y % 2)).floor().long()
    cx = (_uniform(x, generator) * (w + 1 - size_x % 2)).floor().long()
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (
        (rows >= (cy - size_y // 2).view(n, 1, 1))
        & (rows < (cy - size_y // 2 + size_y).view(n, 1, 1))
        & (cols >= (cx - size_x // 2).view(n, 1, 1))
        & (cols < (cx - size_x // 2 + size_x).view(n, 1, 1))
    )
    return torch.where(inside.unsqueeze(1), torch.full_like(x, -1.0), x)


OPS = {"color": color, "translation": translation, "cutout": cutout}
assert tuple(OPS) == POLICIES


def diff_augment(x: torch.Tensor, policies: tuple[str, ...], p: float, generator: torch.Generator) -> torch.Tensor:
    """Applies each policy to each image with probability p (draws even when p is 0: same RNG stream)."""
    for policy in policies:
        augmented = OPS[policy](x, generator)
        chosen = _uniform(x, generator, 1, 1, 1) < p
        x = torch.where(chosen, augmented, x)
    return x
