"""Conditional GAN networks: a small upsampling generator and a projection discriminator.

The discriminator follows Miyato & Koyama 2018 (cGANs with a projection discriminator): its
output is ``psi(phi(x)) + <embed(y), phi(x)>``, every layer spectrally normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from simulacra_services.training.models.conditioning import ConditionEmbedding
from simulacra_services.training.models.config import ModelConfig


class ConditionalGenerator(nn.Module):
    """(z, labels, attributes) -> images in [-1, 1], shape [N, C, H, W].

    The VAE's decoder is this same network, so every family exports one graph shape.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        width = config.base_width
        self.condition = ConditionEmbedding(config, config.embedding_dim)
        self.project = nn.Linear(
            config.latent_dim + config.embedding_dim, 2 * width * config.seed_height * config.seed_width
        )
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, config.channels, 3, padding=1),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor:
        config = self.config
        h = self.project(torch.cat([z, self.condition(labels, attributes)], dim=1))
        h = h.view(-1, 2 * config.base_width, config.seed_height, config.seed_width)
        return self.body(h)[:, :, : config.height, : config.width]


class ProjectionDiscriminator(nn.Module):
    """Images (+ condition) -> one unbounded realness score per image."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.base_width
        self.features = nn.Sequential(
            spectral_norm(nn.Conv2d(config.channels, width, 3, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1)),
            nn.LeakyReLU(0.2),
        )
        self.score = spectral_norm(nn.Linear(4 * width, 1))
        self.condition = ConditionEmbedding(config, 4 * width)
        self.condition.classes = spectral_norm(self.condition.classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor:
        phi = F.leaky_relu(self.features(x), 0.2).sum(dim=(2, 3))
        projection = (self.condition(labels, attributes) * phi).sum(dim=1)
        return self.score(phi).squeeze(1) + projection
