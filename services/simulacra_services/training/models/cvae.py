"""Conditional VAE: a convolutional encoder q(z | x, y) and the shared generator as decoder."""

from __future__ import annotations

import torch
from torch import nn

from simulacra_services.training.models.cgan import ConditionalGenerator
from simulacra_services.training.models.conditioning import ConditionEmbedding
from simulacra_services.training.models.config import ModelConfig


class ConditionalVAE(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        width = config.base_width
        self.encoder = nn.Sequential(
            nn.Conv2d(config.channels, width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.condition = ConditionEmbedding(config, config.embedding_dim)
        self.posterior = nn.Linear(8 * width + config.embedding_dim, 2 * config.latent_dim)
        self.decoder = ConditionalGenerator(config)

    def encode(self, x: torch.Tensor, labels: torch.Tensor, attributes: torch.Tensor | None = None):
        h = torch.cat([self.encoder(x), self.condition(labels, attributes)], dim=1)
        mean, log_variance = self.posterior(h).chunk(2, dim=1)
        return mean, log_variance.clamp(-10.0, 10.0)

    def forward(self, x, labels, attributes=None, *, noise: torch.Tensor):
        """Reconstruction, mean and log-variance; ``noise`` is the reparameterisation's eps."""
        mean, log_variance = self.encode(x, labels, attributes)
        z = mean + noise * torch.exp(0.5 * log_variance)
        return self.decoder(z, labels, attributes), mean, log_variance
