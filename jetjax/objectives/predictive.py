"""Joint-embedding predictive pretraining (JEPA) on the ParT backbone, after I-JEPA (Assran et al. 2023).

The context encoder (the shared ParT, the one fine-tuning and probes take) sees each jet without a fraction of
its real particles: they leave its mask exactly as in MPM (jetjax/objectives/masked.py), so nothing of them
reaches attention, pair features or BatchNorm. A predictor regresses, at the masked particles, the particle
tokens that a momentum (EMA) copy of the encoder, the target encoder, gives the whole jet: no views, no
reconstruction of input features, no negatives. The targets are layer-normalised and carry no gradient
(`losses.latent_regression`); the target encoder follows the context encoder with a momentum rising linearly
from `momentum` to `momentum_end` over the run (I-JEPA's 0.996 -> 1), runs without dropout and keeps BatchNorm
statistics of its own. The predictor is MPM's decoder (`MaskedParticleDecoder`: visible tokens plus one
learned token per masked particle, a few transformer blocks) with the token width as output; its token of a
masked particle also carries the particle's (deta, dphi) (`predictor_positions`), as I-JEPA's mask tokens carry
their target's position: the latent of a particle is asked for at a place in the jet, not by rank alone.
"""
import flax.linen as nn
import jax.numpy as jnp

from jetjax import losses
from jetjax.data.features import FEATURE_SETS
from jetjax.models.heads import MaskedParticleDecoder
from jetjax.objectives.base import EncoderLengths, MomentumCopies, encode
from jetjax.objectives.masked import choose_block, choose_masked

MASKINGS = ("random", "block")
NO_DROPOUT = dict(dropout=0.0, attn_dropout=0.0, activation_dropout=0.0, drop_path=0.0)
"""The target encoder's changes to the encoder's settings: its targets are not perturbed."""


def momentum_at(step, start, end, steps):
    """The EMA momentum at training step `step`: linear from `start` to `end` over `steps`, then `end`."""
    return start + (end - start) * jnp.minimum(step / max(steps, 1), 1.0)


class JEPA(nn.Module, EncoderLengths, MomentumCopies):
    """JEPA (module docstring).

    `masking`: 'random' (floor(mask_fraction * n) real particles uniformly) or 'block' (as many nearest in
    (deta, dphi) to a random particle of the jet, `masked.choose_block`). `position_channels`: where deta and
    dphi sit among the input features. `predictor_positions`: the predictor's token of each masked particle
    also carries its (deta, dphi), as I-JEPA's mask tokens carry their target's position (False: only its
    rank among the masked particles, as MPM's decoder). `momentum_steps`: steps of the momentum schedule, 0
    for the whole run (set by `jetjax.objectives.prepare`). `loss`, `beta`: see `losses.latent_regression`."""

    encoder: nn.Module
    max_particles: int
    token_width: int
    position_channels: tuple
    mask_fraction: float = 0.3
    masking: str = "random"
    momentum: float = 0.996
    momentum_end: float = 1.0
    momentum_steps: int = 0
    loss: str = "smooth_l1"
    beta: float = 1.0
    predictor_width: int = 64
    predictor_layers: int = 2
    predictor_heads: int = 4
    predictor_positions: bool = True

    def positions(self, batch):
        """(B, P, 2) deta, dphi of every particle: where in the jet each masked particle is."""
        return batch["features"][..., jnp.asarray(self.position_channels)]

    def choose(self, key, batch):
        if self.masking == "random":
            return choose_masked(key, batch["mask"], self.mask_fraction)
        if self.masking == "block":
            position = self.positions(batch)
            return choose_block(key, batch["mask"], position[..., 0], position[..., 1], self.mask_fraction)
        raise ValueError(f"objective.masking={self.masking!r}: choose one of {MASKINGS}")

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        masked = self.choose(key, batch)
        out = encode(self.encoder, batch, train, plan, mask=batch["mask"] & ~masked)
        predictor = MaskedParticleDecoder(self.token_width, self.max_particles, self.predictor_width,
                                          self.predictor_layers, self.predictor_heads, 0, name="predictor")
        positions = self.positions(batch) if self.predictor_positions else None
        pred = predictor(out["tokens"], batch["mask"], masked, train=train, positions=positions)["features"]
        momentum = momentum_at(step, self.momentum, self.momentum_end, self.momentum_steps)
        targets = self.momentum_copy(self.encoder, "encoder", momentum, train, batch["features"], batch["vectors"],
                                     batch["mask"], changes=NO_DROPOUT, plan=plan)["tokens"]
        loss, metrics = losses.latent_regression(pred, targets, masked, self.loss, self.beta)
        z_std = losses.normalised_std(out["z"])
        return loss, {**metrics, "representation_std": z_std, "momentum": jnp.asarray(momentum, jnp.float32)}, {
            "z": out["z"]}

    @nn.nowrap
    def with_run_steps(self, steps):
        """Itself with the momentum schedule over `steps` training steps when `momentum_steps` is 0."""
        return self.clone(momentum_steps=steps) if self.momentum_steps == 0 else self


def build(encoder, feature_set, num_particles, **settings):
    """JEPA around `encoder` on jets of `feature_set` (its deta and dphi place the blocks) and up to
    `num_particles` particles (the predictor's learned tokens)."""
    names = FEATURE_SETS[feature_set]
    return JEPA(encoder, num_particles, encoder.embed_dims[-1], (names.index("deta"), names.index("dphi")),
                **settings)
