"""Simulacra client SDK: typed stubs (``simulacra_client.api``) and a friendly client."""

__version__ = "0.1.0"

from simulacra_client.annotation import AnnotationClient  # noqa: E402  (after __version__, which submodules may read)
from simulacra_client.annotation_async import AsyncAnnotationClient  # noqa: E402
from simulacra_client.augmentation import AugmentationClient, Pipeline  # noqa: E402
from simulacra_client.sampling import AsyncSamplingClient, SamplingClient  # noqa: E402
from simulacra_client.training import TrainingClient  # noqa: E402

__all__ = ["AnnotationClient", "AsyncAnnotationClient", "AugmentationClient", "Pipeline", "AsyncSamplingClient", "SamplingClient", "TrainingClient", "__version__"]
