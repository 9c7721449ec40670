"""Export to ONNX with the fixed signature, then prove the file computes what torch computes.

Signature (docs/contracts.md): inputs ``z`` float32 [N, latent_dim], ``labels`` int64 [N], and
``attributes`` int64 [N, A] only when the model has attributes; output ``samples`` float32
[N, C, H, W] in [-1, 1]; N dynamic; opset fixed. The legacy TorchScript exporter is used on
purpose: it is deterministic, needs no onnxscript, and the networks have no control flow.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

OPSET = 17
PARITY_SAMPLES = 64
PARITY_TOLERANCE = 1e-4


class ParityError(RuntimeError):
    """The exported graph does not reproduce the torch generator within the tolerance."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    onnx_bytes: bytes
    opset: int
    parity_max_abs_diff: float
    parity_samples: int
    input_names: tuple[str, ...]


class _SignatureWrapper(nn.Module):
    def __init__(self, generator: nn.Module, with_attributes: bool) -> None:
        super().__init__()
        self.generator = generator
        self.with_attributes = with_attributes

    def forward(self, z, labels, attributes=None):
        return self.generator(z, labels, attributes if self.with_attributes else None)


def _parity_inputs(latent_dim: int, num_classes: int, attribute_sizes: tuple[int, ...], seed: int):
    rng = np.random.default_rng(seed)
    inputs = {
        "z": rng.standard_normal((PARITY_SAMPLES, latent_dim)).astype(np.float32),
        "labels": rng.integers(0, max(num_classes, 1), PARITY_SAMPLES).astype(np.int64),
    }
    if attribute_sizes:
        inputs["attributes"] = np.stack(
            [rng.integers(0, size, PARITY_SAMPLES) for size in attribute_sizes], axis=1
        ).astype(np.int64)
    return inputs


def export_generator(
    generator: nn.Module,
    *,
    latent_dim: int,
    num_classes: int,
    attribute_sizes: tuple[int, ...] = (),
    seed: int = 0,
) -> ExportResult:
    """Exports ``generator`` (in eval mode, on the CPU) and checks it; raises ParityError."""
    generator = generator.to("cpu").eval()
    with_attributes = bool(attribute_sizes)
    wrapper = _SignatureWrapper(generator, with_attributes).eval()
    names = ("z", "labels", "attributes") if with_attributes else ("z", "labels")
    inputs = _parity_inputs(latent_dim, num_classes, attribute_sizes, seed)
    example = tuple(torch.from_numpy(inputs[name][:2]) for name in names)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            buffer,
            input_names=list(names),
            output_names=["samples"],
            dynamic_axes={name: {0: "N"} for name in (*names, "samples")},
            opset_version=OPSET,
            dynamo=False,
        )
    data = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    found = tuple(i.name for i in session.get_inputs())
    if found != names:
        raise ParityError(f"exported inputs {found} are not the fixed signature {names} (an input went unused)")
    (onnx_out,) = session.run(["samples"], inputs)
    with torch.no_grad():
        torch_out = wrapper(*(torch.from_numpy(inputs[name]) for name in names)).numpy()
    diff = float(np.max(np.abs(onnx_out - torch_out)))
    if not diff < PARITY_TOLERANCE:
        raise ParityError(f"ONNX output differs from torch by {diff:.3g} (tolerance {PARITY_TOLERANCE})")
    return ExportResult(data, OPSET, diff, PARITY_SAMPLES, names)
