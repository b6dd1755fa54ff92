"""Objectives: one small record each, so that one training engine runs them all through one code path.

An objective is a flax module holding the shared ParT encoder (always the submodule named 'encoder', so a
fine-tuning run can load it from any pretraining run) and the heads it attaches. Calling it as
`model.apply(variables, batch, key, step=step, train=..., rngs={'dropout': ...}, mutable=['batch_stats'])`
makes its views (augmentations or masking, from `key`), runs the encoder and heads, and returns
`(loss, metrics, outputs)`; `outputs` holds the jet representation `z` (and `logits` for classifiers).

  supervised  classifier head, cross-entropy (the ParT reference and the study's "Ours")
  supcon      two augmented views (validation: noise/smearing only), projection head, SupCon, tau 0.07
  jetclr      JetCLR's two views (rotation, translation, soft smearing, collinear splitting), NT-Xent, tau 0.1
  mpm         30% of real particles removed from everything the encoder sees, decoder reconstructs them
  clipvae     VAE head on z: pT-weighted Chamfer reconstruction + clipped KL
  vqvae, mpm_vq, mpm_kmeans   the particle tokenizer and MPM with token targets (jetjax.objectives_tokens)
  vicreg, simsiam, moco       on JetCLR's views (jetjax.objectives_siamese)

Variable collections other than 'params' and 'batch_stats' (MoCo's 'momentum') are the objective's own state:
the engine keeps them in TrainState.extra and lets the objective update them in training steps.
"""
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jetjax import augment, losses
from jetjax.data.features import FEATURE_SETS, KINEMATIC_NAMES
from jetjax.models.heads import MaskedParticleDecoder, ProjectionHead, VAEHead

IDENTITY_CHANNELS = frozenset(FEATURE_SETS["kinpid"]) - frozenset(KINEMATIC_NAMES)
"""Charge and particle-type flags: MPM predicts them as the 8-class particle ID, not by regression."""


def encode(encoder, batch, train, plan, mask=None, **options):
    """The encoder on the batch (optionally with another `mask`), laid out by `plan` (models/layout.py);
    `options`: the encoder's other call options (ParT's block_outputs, unfrozen_blocks)."""
    return encoder(batch["features"], batch["vectors"], batch["mask"] if mask is None else mask, train=train,
                   plan=plan, **options)


class EncoderLengths:
    """Real particles of each jet the encoder sees, at most (host side, numpy): the batch's own by default."""

    def encoder_lengths(self, lengths):
        return lengths


class Supervised(nn.Module, EncoderLengths):
    """Classifier on the encoder; `unfrozen_blocks` k runs all but the last k particle blocks in eval mode
    (running BatchNorm statistics, no dropout, no gradient): partial fine-tuning, jetjax.finetune."""

    encoder: nn.Module
    label_smoothing: float = 0.0
    unfrozen_blocks: Optional[int] = None

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        options = {} if self.unfrozen_blocks is None else {"unfrozen_blocks": self.unfrozen_blocks}
        out = encode(self.encoder, batch, train, plan, **options)
        loss, metrics = losses.cross_entropy(out["logits"], batch["label"], self.label_smoothing)
        return loss, metrics, {"z": out["z"], "logits": out["logits"]}


def stack_views(views):
    """Views (batches of the same B jets) as one batch of B * V jets, jet-major: the views of a jet side by side
    (encoded together: one BatchNorm batch)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=1).reshape(-1, *xs[0].shape[1:]), *views)


class ViewLengths:
    """Encoder lengths of objectives that encode the stacked views of each jet: `view_lengths(lengths,
    capacity)` bounds each view's multiplicities (host side)."""

    def encoder_lengths(self, lengths):
        return np.stack(self.view_lengths(np.asarray(lengths), self.capacity), axis=1).reshape(-1)


class Contrastive(nn.Module, ViewLengths):
    """Views from `make_views(key, batch, train)`, encoded together (`stack_views`), projected, and compared
    with SupCon (labels used) or NT-Xent (labels ignored)."""

    encoder: nn.Module
    make_views: Callable
    view_lengths: Callable
    capacity: int
    temperature: float
    use_labels: bool
    projection_hidden: int = 128
    projection_features: int = 128

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        views = self.make_views(key, batch, train)
        out = encode(self.encoder, stack_views(views), train, plan)
        h = ProjectionHead(self.projection_hidden, self.projection_features, name="projection")(out["z"])
        size = batch["mask"].shape[0]
        h = h.reshape(size, len(views), -1)  # (B, V, d)
        labels = batch["label"] if self.use_labels else None
        loss, metrics = losses.supcon(h, labels, self.temperature, base_temperature=self.temperature)
        return loss, metrics, {"z": out["z"].reshape(size, len(views), -1)[:, 0]}


def choose_masked(key, mask, fraction):
    """floor(fraction * n) distinct real particles per jet, uniformly at random (PART_SPEC §6.1)."""
    return augment.random_real_subset(key, mask, jnp.floor(fraction * jnp.sum(mask, axis=1, keepdims=True)))


class MaskedParticleModel(nn.Module, EncoderLengths):
    """MPM (MAE variant): masked particles leave the encoder's mask, so they vanish from attention keys,
    pair features and BatchNorm statistics; the decoder predicts their continuous input features (L1) and,
    when the feature set has particle identity, their 8-class ID."""

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


class ClipVAE(nn.Module, EncoderLengths):
    """CLIP-VAE on the jet representation; the latent noise is warmed up linearly over `kl_warmup_steps`."""

    encoder: nn.Module
    latent: int = 16
    decoder_width: int = 128
    decoder_layers: int = 2
    decoder_heads: int = 4
    beta: float = 0.08
    clip_fraction: float = 0.75
    r0: float = 0.1
    kl_warmup_steps: int = 10_000

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        out = encode(self.encoder, batch, train, plan)
        noise_scale = jnp.minimum(1.0, step / max(self.kl_warmup_steps, 1))
        head = VAEHead(self.latent, self.decoder_width, self.decoder_layers, self.decoder_heads, name="vae")
        vae = head(out["z"], batch["mask"], key if train else None, noise_scale, train=train)
        target = augment.vae_target(batch)
        loss, metrics = losses.vae(vae["recon"], target, batch["mask"], vae["mu"], vae["logvar"], self.beta,
                                   self.clip_fraction, self.r0)
        return loss, metrics, {"z": out["z"], "mu": vae["mu"]}


def build(name: str, encoder: nn.Module, feature_set: str = "kin", num_particles: int = 128,
          **settings: Any) -> nn.Module:
    """The objective module `name` around `encoder`; `settings` are that objective's config fields.

    The input `feature_set` ('kin', 'kinpid', 'full') decides MPM's targets: every channel but particle
    identity is reconstructed; identity, when present, becomes the 8-class particle-ID target. `num_particles`
    (P) is the most particles a jet may hold (JetCLR's splitting fills jets up to it; MPM's null tokens).
    """
    if name == "supervised":
        return Supervised(encoder, **settings)
    if name == "supcon":
        return Contrastive(encoder, augment.supcon_views, augment.supcon_lengths, num_particles, use_labels=True,
                           **{"temperature": 0.07, **settings})
    if name == "jetclr":
        return Contrastive(encoder, functools.partial(augment.jetclr_views, capacity=num_particles),
                           augment.jetclr_lengths, num_particles, use_labels=False, **{"temperature": 0.1, **settings})
    if name == "mpm":
        names = FEATURE_SETS[feature_set]
        targets = tuple(i for i, n in enumerate(names) if n not in IDENTITY_CHANNELS)
        with_pid = any(n in IDENTITY_CHANNELS for n in names)
        return MaskedParticleModel(encoder, targets, with_pid, num_particles, **settings)
    if name == "clipvae":
        return ClipVAE(encoder, **settings)
    from jetjax import objectives_siamese, objectives_tokens  # they build on this module

    if name in objectives_tokens.NAMES:
        return objectives_tokens.build(name, encoder, feature_set, num_particles, **settings)
    if name in objectives_siamese.OBJECTIVES:
        return objectives_siamese.build(name, encoder, num_particles, **settings)
    known = ("supervised", "supcon", "jetclr", "mpm", "clipvae") + objectives_tokens.NAMES + tuple(
        objectives_siamese.OBJECTIVES)
    raise ValueError(f"unknown objective {name!r} (config key 'objective.name'); choose one of {', '.join(known)}")


def prepare(model, workdir, data, seed):
    """`model` ready to train in `workdir` on the training data `data` (jetjax.data.pipeline settings): an
    objective whose targets come from outside the train step (MPM's token targets: a tokenizer run, K-means
    centroids fitted on training jets and kept in the workdir) resolves them here; the others are ready."""
    return model.prepare_targets(workdir, data, seed) if hasattr(model, "prepare_targets") else model
