"""The classifier objective: the encoder with its classification head, cross-entropy (the ParT reference and
the study's "Ours"; also every supervised, fine-tuning and evaluation run, jetjax/finetune.py)."""
from typing import Optional

import flax.linen as nn

from jetjax import losses
from jetjax.objectives.base import EncoderLengths, encode


class Supervised(nn.Module, EncoderLengths):
    """Classifier on the encoder; `unfrozen_blocks` k runs all but the last k particle blocks in eval mode
    (running BatchNorm statistics, no dropout, no gradient): partial fine-tuning, jetjax/finetune.py."""

    encoder: nn.Module
    label_smoothing: float = 0.0
    unfrozen_blocks: Optional[int] = None

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        options = {} if self.unfrozen_blocks is None else {"unfrozen_blocks": self.unfrozen_blocks}
        out = encode(self.encoder, batch, train, plan, **options)
        loss, metrics = losses.cross_entropy(out["logits"], batch["label"], self.label_smoothing)
        return loss, metrics, {"z": out["z"], "logits": out["logits"]}


def build(encoder, feature_set, num_particles, **settings):
    return Supervised(encoder, **settings)
