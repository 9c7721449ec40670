"""The augmentation engine: numpy + OpenCV, no protobuf, no torch.

- ``spec``: pipelines as data (JSON form, validation, canonical digest);
- ``registry`` and ``ops/``: op types (parameters, sampling, execution);
- ``pipeline``: ``Augmenter`` runs a pipeline on items (fused geometry);
- ``targets``: annotations moved with the pixels; ``warp``: the resampling;
- ``rng``: counter-based random streams keyed by (seed, item key, op path).
"""

from simulacra_services.augmentation.engine.pipeline import Augmented, Augmenter, Item
from simulacra_services.augmentation.engine.spec import PipelineSpec, canonical, digest, parse_spec

__all__ = ["Augmented", "Augmenter", "Item", "PipelineSpec", "canonical", "digest", "parse_spec"]
