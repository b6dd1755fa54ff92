"""Joint-embedding objectives on JetCLR's two views (augment.jetclr_views, stacked jet-major and encoded together
as the contrastive objectives do,
jetjax/objectives/base.py), each with its own heads (models.heads.MLPHead) and a loss from jetjax.losses:

  vicreg   expander; invariance + variance + covariance, weights 25 / 25 / 1 (Bardes, Ponce, LeCun 2022)
  simsiam  projector and predictor; symmetric negative cosine with a stop-gradient on the targets (Chen, He 2021)
  moco     momentum (EMA) copy of encoder and projector gives the keys; InfoNCE of each view's query against the
           other view's key, the negatives being the batch's other keys (MoCo v3, `queue_size=0`) or a queue of
           the keys of earlier batches (MoCo v2, `queue_size=K`); both kept in the 'momentum' collection

Every one logs `representation_std`, the collapse monitor of the encoder's representation z (the per-dimension
std across the batch of z / |z|, averaged over dimensions and views: 0 when every jet maps to one direction).
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jetjax import augment, losses, momentum
from jetjax.models.heads import MLPHead
from jetjax.objectives.base import MomentumCopies, ViewObjective, per_view


def representation_std(z_views):
    """`losses.normalised_std` of each view's representations (B, V, d) across the jets, mean over the views."""
    return jnp.mean(jnp.stack([losses.normalised_std(z_views[:, v]) for v in range(z_views.shape[1])]))


def with_monitors(metrics, z, size):
    return {**metrics, "representation_std": representation_std(per_view(z, size))}


class VICReg(ViewObjective):
    """VICReg on the `expander` output (widths of its layers; the paper's is 3 layers 4x the representation)."""

    invariance: float = 25.0
    variance: float = 25.0
    covariance: float = 1.0
    expander: tuple = (512, 512, 512)

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        size = batch["mask"].shape[0]
        _, out = self.encode_views(batch, key, train, plan)
        h = per_view(MLPHead(self.expander, name="expander")(out["z"], train), size)
        loss, metrics = losses.vicreg(h[:, 0], h[:, 1], self.invariance, self.variance, self.covariance)
        return loss, with_monitors(metrics, out["z"], size), {"z": per_view(out["z"], size)[:, 0]}


class SimSiam(ViewObjective):
    """SimSiam: `projection` widths (the paper's: 3 layers), a bottleneck predictor of `predictor_hidden`
    back to the projection width; `stop_gradient=False` is the paper's ablation (it collapses)."""

    projection: tuple = (256, 256, 256)
    predictor_hidden: int = 64
    stop_gradient: bool = True

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        size = batch["mask"].shape[0]
        _, out = self.encode_views(batch, key, train, plan)
        z = MLPHead(self.projection, name="projection")(out["z"], train)
        p = MLPHead((self.predictor_hidden, self.projection[-1]), name="predictor")(z, train)
        z, p = per_view(z, size), per_view(p, size)
        loss, metrics = losses.simsiam(p[:, 0], p[:, 1], z[:, 0], z[:, 1], self.stop_gradient)
        return loss, with_monitors(metrics, out["z"], size), {"z": per_view(out["z"], size)[:, 0]}


class MoCo(ViewObjective, MomentumCopies):
    """MoCo: queries from the encoder, `projection` and (when `predictor_hidden` > 0, MoCo v3) a predictor; keys
    from the momentum copy of encoder and projection, updated by EMA with `momentum` before the keys are
    computed, as in MoCo; loss = mean over the two directions of `losses.infonce` (view 1's query against
    view 2's key and back). With `queue_size` K > 0 the negatives are the K newest keys of earlier training
    steps (both views' keys enter the queue after each step: K >= 2 x batch size); else the batch's other keys.
    The momentum copy runs in the same mode as the encoder (training: batch statistics, dropout)."""

    temperature: float = 0.2
    momentum: float = 0.99
    queue_size: int = 0
    projection: tuple = (256, 256, 128)
    predictor_hidden: int = 256

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        size = batch["mask"].shape[0]
        stacked, out = self.encode_views(batch, key, train, plan)
        projector = MLPHead(self.projection, name="projection")
        queries = projector(out["z"], train)
        if self.predictor_hidden:
            queries = MLPHead((self.predictor_hidden, self.projection[-1]), name="predictor")(queries, train)
        key_z = self.momentum_copy(self.encoder, "encoder", self.momentum, train, stacked["features"],
                                   stacked["vectors"], stacked["mask"], plan=plan)["z"]
        keys = self.momentum_copy(projector, "projection", self.momentum, train, key_z)
        queue = self.negatives(keys, train)
        q, k = per_view(queries, size), per_view(keys, size)
        loss_12, metrics_12 = losses.infonce(q[:, 0], k[:, 1], queue, self.temperature)
        loss_21, metrics_21 = losses.infonce(q[:, 1], k[:, 0], queue, self.temperature)
        loss = 0.5 * (loss_12 + loss_21)
        metrics = {"infonce": loss, "top1_positive": 0.5 * (metrics_12["top1_positive"] + metrics_21["top1_positive"])}
        return loss, with_monitors(metrics, out["z"], size), {"z": per_view(out["z"], size)[:, 0]}

    def negatives(self, keys, train):
        """The queue as it was before this step (None without one); training steps then enqueue `keys`."""
        if not self.queue_size:
            return None
        if keys.shape[0] > self.queue_size:
            raise ValueError(f"objective.queue_size={self.queue_size} is smaller than the {keys.shape[0]} keys of a "
                             "batch (2 views x train.batch_size): raise it, or set it to 0 for in-batch negatives")
        queue = self.variable("momentum", "queue", lambda: jax.random.normal(
            self.make_rng("params"), (self.queue_size, keys.shape[1])))  # random directions until filled
        negatives = queue.value
        if train:
            queue.value = momentum.enqueue(queue.value, keys)
        return negatives


def builder(objective):
    """A builder (jetjax/objectives/__init__.py) of `objective` on JetCLR's views of jets of up to
    `num_particles` particles; `settings` are its config fields."""

    def build(encoder, feature_set, num_particles, **settings):
        views = functools.partial(augment.jetclr_views, capacity=num_particles)
        return objective(encoder, views, augment.jetclr_lengths, num_particles, **settings)

    return build
