"""Samples of given indices: noise -> (dynamic batcher) -> ONNX Runtime -> encoding.

``produce`` is the one path every transport (Sample, StreamSamples, KServe) goes through, which is
what makes sample i the same whichever of them asks. Large calls draw noise and encode on a
worker thread so that the event loop stays free.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from simulacra_services.sampling.runtime import encode, noise
from simulacra_services.sampling.serving.generator import LoadedGenerator
from simulacra_services.sampling.serving.spec import CheckedSpec


@dataclass(frozen=True)
class SampleBatch:
    generator: str
    indices: np.ndarray
    """uint64 [n]."""
    labels: np.ndarray
    """int64 [n]."""
    attributes: np.ndarray | None
    """int64 [n, A], or None when the generator has no attributes."""
    samples: np.ndarray | None
    """float32 or uint8 in the asked layout; None for PNG."""
    images: list[bytes] | None
    """One PNG per sample, for PNG."""


def draw_inputs(
    generator: LoadedGenerator, checked: CheckedSpec, indices: np.ndarray, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(z, labels, attributes) of the given sample indices: pure functions of (seed, index, spec)."""
    sig = generator.signature
    spec = checked.spec
    z, drawn, attributes = noise.inputs(
        spec.seed, indices, sig.latent_dim, truncation=spec.truncation,
        label_mix=checked.class_mix if labels is None else None, num_classes=sig.num_classes,
        attribute_mixes=checked.attribute_weights if sig.attributes else (),
    )
    return z, drawn if labels is None else labels, attributes


async def produce(
    generator: LoadedGenerator, checked: CheckedSpec, indices: np.ndarray, labels: np.ndarray | None = None, *, offload: bool = False
) -> SampleBatch:
    spec = checked.spec
    if offload:
        z, labels, attributes = await asyncio.to_thread(draw_inputs, generator, checked, indices, labels)
    else:
        z, labels, attributes = draw_inputs(generator, checked, indices, labels)
    raw = await generator.infer(z, labels, attributes)
    if offload:
        encoded = await asyncio.to_thread(encode.encode, raw, spec.format, spec.layout)
    else:
        encoded = encode.encode(raw, spec.format, spec.layout)
    if isinstance(encoded, list):
        return SampleBatch(generator.name, indices, labels, attributes, None, encoded)
    return SampleBatch(generator.name, indices, labels, attributes, encoded, None)
