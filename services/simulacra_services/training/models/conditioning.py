"""Class and attribute conditioning shared by every network."""

from __future__ import annotations

import torch
from torch import nn

from simulacra_services.training.models.config import ModelConfig


class ConditionEmbedding(nn.Module):
    """Embeds a class label and one value index per attribute, summed into one vector.

    Labels are clamped into range so that an unconditional model (one shared row) still reads
    its ``labels`` input: the exported graph keeps every input of the fixed signature.
    """

    def __init__(self, config: ModelConfig, dim: int) -> None:
        super().__init__()
        self.label_slots = config.label_slots
        self.classes = nn.Embedding(config.label_slots, dim)
        self.attributes = nn.ModuleList(nn.Embedding(size, dim) for size in config.attribute_sizes)

    def forward(self, labels: torch.Tensor, attributes: torch.Tensor | None = None) -> torch.Tensor:
        out = self.classes(labels.clamp(0, self.label_slots - 1))
        for index, table in enumerate(self.attributes):
            assert attributes is not None, "this model is conditioned on attributes"
            out = out + table(attributes[:, index].clamp(0, table.num_embeddings - 1))
        return out
