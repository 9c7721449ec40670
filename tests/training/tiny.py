"""Tiny models and data shared by the training tests: a few steps take well under a second."""

from __future__ import annotations

import torch

from simulacra_services.training.loop.hyperparameters import resolve
from simulacra_services.training.loop.run import TrainingData, TrainingRun
from simulacra_services.training.loop.trainers import make_trainer
from simulacra_services.training.models import ModelConfig

TINY = {"batch_size": 8, "max_steps": 6, "base_width": 8, "latent_dim": 8}


def tiny_config(attribute_sizes: tuple[int, ...] = (), num_classes: int = 3, channels: int = 1, size: int = 28):
    return ModelConfig(
        latent_dim=8, base_width=8, embedding_dim=8, num_classes=num_classes,
        attribute_sizes=attribute_sizes, channels=channels, height=size, width=size,
    )


def tiny_data(n: int = 24, attribute_sizes: tuple[int, ...] = (), channels: int = 1, size: int = 28, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, size, size, generator=generator) * 2 - 1
    labels = torch.randint(0, 3, (n,), generator=generator)
    attributes = (
        torch.stack([torch.randint(0, s, (n,), generator=generator) for s in attribute_sizes], dim=1)
        if attribute_sizes
        else None
    )
    return TrainingData(images, labels, attributes)


def tiny_run(kind: str, attribute_sizes: tuple[int, ...] = (), validation: bool = True, **overrides) -> TrainingRun:
    """With ``validation``, 12 other items are the held-out reals ADA's r_v scores (as the worker's)."""
    hp = resolve(kind, TINY | overrides)
    trainer = make_trainer(kind, tiny_config(attribute_sizes), hp, torch.device("cpu"))
    if validation:
        trainer.use_validation(tiny_data(12, attribute_sizes=attribute_sizes, seed=1))
    return TrainingRun(trainer, tiny_data(attribute_sizes=attribute_sizes))


def weights(run: TrainingRun) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in run.trainer.modules().items():
        if isinstance(module, torch.nn.Module):
            out |= {f"{name}.{key}": value for key, value in module.state_dict().items()}
    if hasattr(run.trainer, "ema"):
        out |= {f"ema.{key}": value for key, value in run.trainer.ema.state_dict().items()}
    return out
