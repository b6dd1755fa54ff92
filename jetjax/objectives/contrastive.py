"""Contrastive objectives on two augmented views of each jet (docs/formulas.md §4, §5): SupCon (labels used,
tau 0.07; validation views with noise and smearing only) and JetCLR (rotation, translation, soft smearing,
collinear splitting; NT-Xent, tau 0.1)."""
import functools

import flax.linen as nn

from jetjax import augment, losses
from jetjax.models.heads import ProjectionHead
from jetjax.objectives.base import ViewObjective


class Contrastive(ViewObjective):
    """The views encoded together, projected, and compared with SupCon (labels used) or NT-Xent (labels
    ignored; `losses.supcon` without labels is NT-Xent)."""

    temperature: float = 0.1
    use_labels: bool = False
    projection_hidden: int = 128
    projection_features: int = 128

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        size = batch["mask"].shape[0]
        _, out = self.encode_views(batch, key, train, plan)
        h = ProjectionHead(self.projection_hidden, self.projection_features, name="projection")(out["z"])
        h = h.reshape(size, -1, h.shape[-1])  # (B, V, d)
        labels = batch["label"] if self.use_labels else None
        loss, metrics = losses.supcon(h, labels, self.temperature, base_temperature=self.temperature)
        return loss, metrics, {"z": out["z"].reshape(size, -1, out["z"].shape[-1])[:, 0]}


def build_supcon(encoder, feature_set, num_particles, **settings):
    return Contrastive(encoder, augment.supcon_views, augment.supcon_lengths, num_particles, use_labels=True,
                       **{"temperature": 0.07, **settings})


def build_jetclr(encoder, feature_set, num_particles, **settings):
    views = functools.partial(augment.jetclr_views, capacity=num_particles)
    return Contrastive(encoder, views, augment.jetclr_lengths, num_particles, use_labels=False,
                       **{"temperature": 0.1, **settings})
