"""Models: the ParT encoder (`ParT`) and the heads that objectives attach to it."""
from jetjax.models.heads import Classifier, MaskedParticleDecoder, ProjectionHead, VAEHead
from jetjax.models.part import ParT

__all__ = ["ParT", "Classifier", "ProjectionHead", "MaskedParticleDecoder", "VAEHead"]
