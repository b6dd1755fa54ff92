"""Masked particle modelling, MAE variant (docs/formulas.md §6): 30% of a jet's real particles leave the
encoder's mask, so they vanish from attention keys, pair features and BatchNorm statistics; a decoder predicts
their continuous input features (L1) and, when the feature set has particle identity, their 8-class ID."""
import flax.linen as nn
import jax.numpy as jnp

from jetjax import augment, losses
from jetjax.data.features import FEATURE_SETS, KINEMATIC_NAMES
from jetjax.models.heads import MaskedParticleDecoder
from jetjax.objectives.base import EncoderLengths, encode

IDENTITY_CHANNELS = frozenset(FEATURE_SETS["kinpid"]) - frozenset(KINEMATIC_NAMES)
"""Charge and particle-type flags: MPM predicts them as the 8-class particle ID, not by regression."""


def choose_masked(key, mask, fraction):
    """floor(fraction * n) distinct real particles per jet, uniformly at random (docs/formulas.md §6.1)."""
    return augment.random_real_subset(key, mask, jnp.floor(fraction * jnp.sum(mask, axis=1, keepdims=True)))


def choose_block(key, mask, deta, dphi, fraction):
    """floor(fraction * n) real particles per jet forming one block in (deta, dphi): those nearest to a real
    particle of the jet drawn uniformly at random (itself included), the point-cloud analogue of I-JEPA's
    block masking. deta, dphi (B, P) are about the jet axis, so within a jet no phi wrap arises."""
    count = jnp.floor(fraction * jnp.sum(mask, axis=1, keepdims=True))
    centre = augment.random_real_subset(key, mask, jnp.ones_like(count))
    at_centre = lambda x: jnp.sum(jnp.where(centre, x, 0.0), axis=1, keepdims=True)
    distance = jnp.where(mask, (deta - at_centre(deta)) ** 2 + (dphi - at_centre(dphi)) ** 2, jnp.inf)
    return mask & (jnp.argsort(jnp.argsort(distance, axis=1), axis=1) < count)


class MaskedParticleModel(nn.Module, EncoderLengths):
    """MPM with continuous targets (module docstring): `target_channels` regressed, the particle ID classified
    when `with_pid`."""

    encoder: nn.Module
    target_channels: tuple
    with_pid: bool
    max_particles: int
    mask_fraction: float = 0.3
    decoder_width: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 4

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        masked = choose_masked(key, batch["mask"], self.mask_fraction)
        out = encode(self.encoder, batch, train, plan, mask=batch["mask"] & ~masked)
        decoder = MaskedParticleDecoder(len(self.target_channels), self.max_particles, self.decoder_width,
                                        self.decoder_layers, self.decoder_heads, 8 if self.with_pid else 0,
                                        name="decoder")
        pred = decoder(out["tokens"], batch["mask"], masked, train=train)
        target = batch["features"][..., jnp.asarray(self.target_channels)]
        loss, metrics = losses.masked_particle(
            pred["features"], target, masked, pred.get("pid_logits"), batch["pid"] if self.with_pid else None)
        return loss, metrics, {"z": out["z"]}


def build(encoder, feature_set, num_particles, **settings):
    """MPM on `feature_set`: every channel but particle identity is reconstructed; identity, when present,
    becomes the 8-class particle-ID target. `num_particles` (P) sizes the decoder's null tokens."""
    names = FEATURE_SETS[feature_set]
    targets = tuple(i for i, n in enumerate(names) if n not in IDENTITY_CHANNELS)
    with_pid = any(n in IDENTITY_CHANNELS for n in names)
    return MaskedParticleModel(encoder, targets, with_pid, num_particles, **settings)
