"""Small generators exported to ONNX with the fixed signature, for the sampling tests.

torch is used here, in the test process only, to make realistic ONNX files (linear + embedding +
transposed convolution); the sampling service never imports it.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache

from simulacra_services.core.registry import AttributeSpec, GeneratorSignature

DIGITS = GeneratorSignature(
    latent_dim=16, channels=1, height=8, width=8, num_classes=10,
    class_names=tuple(f"d{i}" for i in range(10)), category_ids=tuple(range(1, 11)),
)
"""A conditional grey 8x8 generator (MNIST-like, in small)."""

SCENES = GeneratorSignature(
    latent_dim=8, channels=3, height=8, width=8, num_classes=4,
    class_names=("car", "bike", "bus", "person"), category_ids=(1, 2, 3, 4),
    attributes=(AttributeSpec("weather", ("clear", "fog", "rain")), AttributeSpec("time", ("day", "night"))),
)
"""A conditional RGB generator with two attributes."""

PLAIN = GeneratorSignature(latent_dim=4, channels=1, height=4, width=4)
"""An unconditional generator (labels are zeros)."""


@lru_cache(maxsize=None)
def export(signature: GeneratorSignature, weights_seed: int = 0) -> bytes:
    """ONNX bytes of a randomly initialised generator for ``signature`` (distinct seeds, distinct outputs)."""
    import torch
    from torch import nn

    torch.manual_seed(weights_seed)
    sig = signature
    attrs = len(sig.attributes)

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(max(sig.num_classes, 1), 8)
            self.attr_embed = nn.ModuleList(nn.Embedding(len(a.values), 4) for a in sig.attributes)
            self.fc = nn.Linear(sig.latent_dim + 8 + 4 * attrs, 16 * (sig.height // 2) * (sig.width // 2))
            self.up = nn.ConvTranspose2d(16, sig.channels, 4, 2, 1)

        def forward(self, z, labels, attributes=None):  # noqa: ANN001, ANN201
            parts = [z, self.embed(labels)]
            for j, embed in enumerate(self.attr_embed):
                parts.append(embed(attributes[:, j]))
            h = torch.relu(self.fc(torch.cat(parts, 1))).view(-1, 16, sig.height // 2, sig.width // 2)
            return torch.tanh(self.up(h) * 3.0)

    model = Generator().eval()
    n = 2
    args: tuple = (torch.zeros(n, sig.latent_dim), torch.zeros(n, dtype=torch.long))
    names = ["z", "labels"]
    if attrs:
        args += (torch.zeros(n, attrs, dtype=torch.long),)
        names.append("attributes")
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter needs no onnxscript
        torch.onnx.export(
            model, args, buffer, input_names=names, output_names=["samples"],
            dynamic_axes={name: {0: "n"} for name in [*names, "samples"]}, opset_version=17, dynamo=False,
        )
    return buffer.getvalue()
