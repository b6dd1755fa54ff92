"""The classifier objective: the encoder with its classification head, cross-entropy (the ParT reference and
the study's "Ours"; also every supervised, fine-tuning and evaluation run, jetjax/finetune.py). On a
regression task (jetjax/regression.py) the same head has one output and regresses the standardised target."""
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from jetjax import losses, regression
from jetjax.objectives.base import EncoderLengths, encode


def task_outputs(module, head, batch, task, label_smoothing=0.0):
    """(loss, metrics, outputs) of the head's output `head` (B, K) on the batch's task: cross-entropy against
    the labels (outputs `logits`) without a regression `task`; else its loss on the target standardised by
    the task's scale, kept in `module`'s BatchNorm collection (so a checkpoint predicts in the target's units:
    outputs `prediction`)."""
    if task is None:
        loss, metrics = losses.cross_entropy(head, batch["label"], label_smoothing)
        return loss, metrics, {"logits": head}
    scale = module.variable("batch_stats", "target_scale", lambda: jnp.array([task.mean, task.std], jnp.float32))
    mean, std = scale.value[0], scale.value[1]
    loss, metrics = losses.regression(head[:, 0], (batch["target"] - mean) / std, task.loss, task.delta)
    return loss, metrics, {"prediction": mean + std * head[:, 0]}


class TaskHead:
    """Mixin of the objectives with a task head (`task`: None or a regression.TargetScale)."""

    def with_training_batches(self, batches):
        """Itself with a regression target's standardisation from the training `batches` (numpy dicts)."""
        return self if self.task is None else self.clone(task=regression.scale_of(self.task, batches))


class Supervised(nn.Module, EncoderLengths, TaskHead):
    """Classifier on the encoder; `unfrozen_blocks` k runs all but the last k particle blocks in eval mode
    (running BatchNorm statistics, no dropout, no gradient): partial fine-tuning, jetjax/finetune.py."""

    encoder: nn.Module
    label_smoothing: float = 0.0
    unfrozen_blocks: Optional[int] = None
    task: Optional[regression.TargetScale] = None

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        options = {} if self.unfrozen_blocks is None else {"unfrozen_blocks": self.unfrozen_blocks}
        out = encode(self.encoder, batch, train, plan, **options)
        loss, metrics, outputs = task_outputs(self, out["logits"], batch, self.task, self.label_smoothing)
        return loss, metrics, {"z": out["z"], **outputs}


def build(encoder, feature_set, num_particles, **settings):
    return Supervised(encoder, **settings)
