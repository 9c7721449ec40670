"""Generator families in torch: a conditional VAE and a conditional GAN (projection discriminator).

The enhanced GAN is the conditional GAN's networks trained with differentiable augmentation and
ADA (see ``training.loop``): it needs no networks of its own.
"""

from simulacra_services.training.models.config import MODEL_KINDS, ModelConfig
from simulacra_services.training.models.cgan import ConditionalGenerator, ProjectionDiscriminator
from simulacra_services.training.models.cvae import ConditionalVAE

__all__ = [
    "MODEL_KINDS",
    "ConditionalGenerator",
    "ConditionalVAE",
    "ModelConfig",
    "ProjectionDiscriminator",
]
