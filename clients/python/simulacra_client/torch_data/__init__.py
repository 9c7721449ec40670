"""PyTorch data loading from Simulacra services (the optional extra ``simulacra-client[torch]``).

- ``SyntheticDataset``: a generator's deterministic sample stream (sampling service).
- ``RealDataset``: the items of an annotation-store version, any split and filter.
- ``Augmented(source, ...)``: a source augmented by the augmentation service, seeded per sample.
- ``mix(real, synthetic, ratio=..., balance=...)``: deterministic interleaving.
- ``ResumableLoader``: a DataLoader whose ``state_dict()`` resumes the exact sequence.

Every dataset is a torch ``IterableDataset``; DataLoader workers and
data-parallel ranks read disjoint parts, and ``state_dict()`` /
``load_state_dict()`` continue a checkpointed run with exactly the samples it
would have seen. The rest of the SDK never imports this package (nor torch).
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised by a subprocess test without torch
    raise ImportError(
        "simulacra_client.torch_data needs PyTorch and Pillow: pip install 'simulacra-client[torch]'"
    ) from error

from simulacra_client.torch_data.augmented import Augmented
from simulacra_client.torch_data.base import ResumableDataset, ResumableLoader, Sample
from simulacra_client.torch_data.mixing import Mixed, mix
from simulacra_client.torch_data.real import RealDataset, decode_image, to_tensors
from simulacra_client.torch_data.synthetic import SyntheticDataset

__all__ = [
    "Augmented",
    "Mixed",
    "RealDataset",
    "ResumableDataset",
    "ResumableLoader",
    "Sample",
    "SyntheticDataset",
    "decode_image",
    "mix",
    "to_tensors",
]
