"""Particle tokenizers: each real particle of a jet gets a discrete token, the target of MPM with tokens
(Heinrich et al., "Masked Particle Modeling on Sets"; Leigh et al., "Is tokenization needed for masked
particle modeling?").

  ParticleVQVAE   VQ-VAE over the particles of a jet: a small transformer encodes every particle (in the
                  context of its jet) to a 16-dimensional latent, which is replaced by the nearest of 512
                  codes (straight-through), and a small transformer decodes the codes back to the particles'
                  input features (L1). The codebook follows moving averages (default) or gradients; codes
                  unused for `dead_code_steps` updates restart at encoder outputs of the batch.
  vqvae_targets   the frozen tokenizer of a trained run as a function (features, mask) -> token ids.
  kmeans_targets  the same for K-means centroids of particle features (nearest centroid).

The codebook state lives in the 'batch_stats' collection, the moving averages that the train step already
carries, updates (train mode only) and checkpoints; nothing about it is special to the engine.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from jetjax import vq
from jetjax.data.features import FEATURE_SETS
from jetjax.models.heads import torch_linear_init
from jetjax.models.layers import Block
from jetjax.models.layout import DenseLayout

CODEBOOK_UPDATES = ("ema", "gradient")


class SetTransformer(nn.Module):
    """Dense(width) -> ParT blocks (self-attention over the real particles of each jet, no pair bias) ->
    LayerNorm -> Dense(features): one output per particle slot, zero on padded slots."""

    features: int
    width: int
    num_layers: int
    num_heads: int

    @nn.compact
    def __call__(self, x, mask, train=False):
        x = nn.Dense(self.width, kernel_init=torch_linear_init, name="embed")(jnp.where(mask[..., None], x, 0.0))
        for i in range(self.num_layers):
            x = Block(self.num_heads, "gelu", 4.0, 0.0, 0.0, 0.0, 0.0, None, jnp.float32, name=f"blocks_{i}")(
                x, DenseLayout(mask), train=train)
        x = nn.Dense(self.features, kernel_init=torch_linear_init, name="out")(
            nn.LayerNorm(epsilon=1e-5, name="norm")(x))
        return jnp.where(mask[..., None], x, 0.0)


class ParticleVQVAE(nn.Module):
    """VQ-VAE tokenizer of particles (module docstring). `codebook_update`: 'ema' (the codebook is the
    Laplace-smoothed moving average of the encoder outputs assigned to each code, `vq.ema_codebook_update`,
    and the codebook term of the loss carries no gradient) or 'gradient' (the codebook is a parameter trained
    by the codebook term). In both, `dead_code_steps` > 0 restarts codes unused that many consecutive
    training steps (`vq.reinit_dead_codes`); a gradient codebook is `parameter + restart offset`, the offset a
    batch_stats variable that the restarts write, so that restarts never touch parameters."""

    num_features: int
    num_codes: int = 512
    latent: int = 16
    width: int = 64
    num_layers: int = 2
    num_heads: int = 4
    commitment: float = 0.25
    codebook_update: str = "ema"
    decay: float = 0.99
    dead_code_steps: int = 100

    def setup(self):
        if self.codebook_update not in CODEBOOK_UPDATES:
            raise ValueError(f"objective.codebook_update={self.codebook_update!r}; choose one of {CODEBOOK_UPDATES}")
        self.encoder = SetTransformer(self.latent, self.width, self.num_layers, self.num_heads)
        self.decoder = SetTransformer(self.num_features, self.width, self.num_layers, self.num_heads)
        shape = (self.num_codes, self.latent)
        start = nn.initializers.normal(1.0)
        if self.codebook_update == "ema":
            self.codes = self.variable("batch_stats", "codebook", lambda: start(self.make_rng("params"), shape))
            self.counts = self.variable("batch_stats", "counts", jnp.ones, (self.num_codes,))
            self.sums = self.variable("batch_stats", "sums", lambda: self.codes.value)
        else:
            self.codebook_parameter = self.param("codebook", start, shape)
            self.restart_offset = self.variable("batch_stats", "restart_offset", jnp.zeros, shape)
        self.steps_unused = self.variable("batch_stats", "steps_unused", jnp.zeros, (self.num_codes,), jnp.int32)

    def codebook(self):
        """(num_codes, latent) the current codes."""
        if self.codebook_update == "ema":
            return self.codes.value
        return self.codebook_parameter + self.restart_offset.value

    def tokens(self, features, mask):
        """(B, P) int32 token id of every slot (eval mode; padded slots get a code too, never to be used)."""
        return vq.nearest_code(self.encoder(features, mask), self.codebook())

    def __call__(self, features, mask, key=None, train=False):
        """(reconstructed features (B, P, C), z_q (B, P, latent), token ids (B, P), VQ loss, VQ metrics).
        In train mode with batch_stats mutable the codebook state is updated (and dead codes restarted with
        `key`) after the codes of this batch were chosen; metric `restarted_codes` counts the restarts."""
        mask = jnp.asarray(mask, bool)
        z_e = self.encoder(features, mask, train)
        codebook = self.codebook()
        z_q, codes = vq.vq_quantise(z_e, codebook)
        recon = self.decoder(z_q, mask, train)
        vq_total, metrics = vq.vq_loss(z_e, codebook, codes, mask, self.commitment)
        if train and self.is_mutable_collection("batch_stats") and not self.is_initializing():
            metrics["restarted_codes"] = self.update_codebook(key, codebook, z_e, codes, mask)
        return recon, z_q, codes, vq_total, metrics

    def update_codebook(self, key, codebook, z_e, codes, mask):
        """Write this step's codebook state; returns the number of restarted codes."""
        if self.codebook_update == "ema":
            state = vq.ema_codebook_update(vq.EmaCodebook(codebook, self.counts.value, self.sums.value,
                                                          self.steps_unused.value), z_e, codes, mask, self.decay)
        else:  # only the usage counter: counts and sums are unused placeholders here
            used = vq.code_counts(codes, mask, self.num_codes) > 0
            state = vq.EmaCodebook(codebook, jnp.ones(self.num_codes, jnp.float32), codebook,
                                   jnp.where(used, 0, self.steps_unused.value + 1).astype(jnp.int32))
        restarted = jnp.zeros(self.num_codes, bool)
        if self.dead_code_steps > 0:
            state, restarted = vq.reinit_dead_codes(key, state, z_e, mask, self.dead_code_steps)
        if self.codebook_update == "ema":
            self.codes.value, self.counts.value, self.sums.value = state.codebook, state.counts, state.sums
        else:
            self.restart_offset.value = self.restart_offset.value + jax.lax.stop_gradient(state.codebook - codebook)
        self.steps_unused.value = state.steps_unused
        return jnp.sum(restarted).astype(jnp.float32)


def build_tokenizer(feature_set, **settings):
    """The ParticleVQVAE of a run on `feature_set`, with the config's objective settings."""
    return ParticleVQVAE(len(FEATURE_SETS[feature_set]), **settings)


def vqvae_targets(tokenizer, variables):
    """(features, mask) -> (B, P) token ids of the frozen tokenizer `tokenizer` with `variables` (its params
    and batch_stats): eval mode, the variables constants of the calling program, no gradient."""
    variables = jax.tree.map(jnp.asarray, variables)

    def targets(features, mask):
        codes = tokenizer.apply(variables, features, jnp.asarray(mask, bool), method=ParticleVQVAE.tokens)
        return jax.lax.stop_gradient(codes)

    return targets


def kmeans_targets(centroids):
    """(features, mask) -> (B, P) index of the nearest of the K-means `centroids` (K, C) to each particle's
    features (Euclidean, as K-means assigns them)."""
    centroids = jnp.asarray(centroids, jnp.float32)

    def targets(features, mask):
        return vq.nearest_code(jax.lax.stop_gradient(features), centroids)

    return targets
