"""Reusing a trained encoder on a classification task: how much of it trains (config `finetune`, mode 'finetune').

    method='full'     every parameter trains (the encoder starts from `train.init_from`)
    method='adapter'  the encoder is frozen (eval mode: running BatchNorm statistics, no dropout, no gradient)
                      and a `heads.BlockMixClassifier` trains on its per-block outputs: a softmax-weighted mix
                      of every block's output, LayerNorm, and a `model.head` ('linear' | 'mlp') classifier
    method='last_k'   the last `unfreeze_blocks` particle blocks, the class blocks, the class token, the final
                      norm and the head train; the embeddings and earlier blocks are frozen as above
    method='lora'     every pretrained weight frozen; rank-`lora_rank` updates (lora_alpha / lora_rank) A B of the
                      blocks' Dense layers named in `lora_targets` (query, key, value, out, fc1, fc1_gate, fc2;
                      particle and class blocks) and the head train (Hu et al., arXiv:2106.09685). The embeddings
                      run in eval mode as above, the blocks with dropout; `merged_lora` folds the updates into
                      the weights (what jetjax.export writes)
    (mode 'probe', the linear probe, is a logistic regression fitted on the frozen encoder: jetjax.probe)

`head_learning_rate` is the peak learning rate of the new head; unset: ADAPTER_HEAD_LEARNING_RATE for the adapter
(a head on standardised frozen features, which barely moves at an encoder's rate: measured on Pythia jets with
60 steps, 2e-3 gave macro AUC 0.78 +- 0.07, 3e-2 0.85 / 0.87 and 0.1 0.84 / 0.88 at 100 / 1,000 labels, the
linear probe 0.84 / 0.88; docs/efficiency.md), `optimizer.learning_rate` otherwise. Frozen parameters and
BatchNorm statistics stay bit-identical (optim.freeze, eval mode).
"""
from typing import Optional

import flax.linen as nn
import jax

from configs import defaults
from jetjax import objectives, optim, regression
from jetjax.objectives.supervised import TaskHead, task_outputs
from jetjax.models.heads import BlockMixClassifier
from jetjax.models.layers import LORA_TARGETS

METHODS = ("full", "adapter", "last_k", "lora")
LORA_SUFFIXES = ("_lora_a", "_lora_b")
ADAPTER_HEAD_LEARNING_RATE = 0.1


def settings(config):
    """config.finetune with the defaults filled in (configs/defaults.py), checked."""
    values = defaults.section(config, "finetune")
    unknown = [t for t in values.lora_targets if t not in LORA_TARGETS]
    if values.method == "lora" and (values.lora_rank < 1 or unknown or not values.lora_targets):
        raise ValueError(f"config.finetune.lora_rank={values.lora_rank} must be >= 1 and config.finetune.lora_targets="
                         f"{tuple(values.lora_targets)} one or more of {LORA_TARGETS}")
    if values.method not in METHODS:
        raise ValueError(f"config.finetune.method={values.method!r} is not one of {METHODS}")
    if values.method != "full" and config.mode not in ("finetune", "evaluate"):
        raise ValueError(f"config.finetune.method={values.method!r} applies to mode 'finetune', not "
                         f"{config.mode!r}: set config.mode='finetune' (and train.init_from) or method='full'")
    return values


class Adapted(nn.Module, objectives.EncoderLengths, TaskHead):
    """Frozen encoder + adapter (module docstring): the encoder always runs in eval mode behind a stop_gradient."""

    encoder: nn.Module
    num_classes: int
    head: str = "linear"
    head_hidden: int = 256
    head_dropout: float = 0.1
    label_smoothing: float = 0.0
    task: Optional[regression.TargetScale] = None

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        out = objectives.encode(self.encoder, batch, False, plan, block_outputs=True)
        adapter = BlockMixClassifier(self.num_classes, self.head, self.head_hidden, self.head_dropout, name="adapter")
        logits = adapter(jax.lax.stop_gradient(out["blocks"]), train)
        loss, metrics, outputs = task_outputs(self, logits, batch, self.task, self.label_smoothing)
        return loss, metrics, {"z": out["z"], **outputs}


def classifier(config, encoder_class, model_settings, num_classes):
    """The classifier objective of a supervised / finetune / probe / evaluate run: `encoder_class(**model_settings)`
    (ParT) with a head, or without one under an adapter; on a regression task (jetjax/regression.py) the head
    has one output."""
    values, task = settings(config), regression.task(config)
    method, num_classes = values.method, 1 if task else num_classes
    if method == "adapter":
        return Adapted(encoder_class(num_classes=None, **model_settings), num_classes, model_settings["head"],
                       model_settings["head_hidden"], model_settings["head_dropout"], task=task)
    if method == "lora":
        model_settings = {**model_settings, "lora_rank": values.lora_rank, "lora_alpha": values.lora_alpha,
                          "lora_targets": tuple(values.lora_targets)}
    encoder = encoder_class(num_classes=num_classes, **model_settings)
    unfrozen = {"last_k": values.unfreeze_blocks, "lora": encoder.num_layers}.get(method)
    encoder.first_trained_block(unfrozen)  # a wrong unfreeze_blocks fails here, before any work
    return objectives.Supervised(encoder, unfrozen_blocks=unfrozen, task=task)


def optimizer_settings(config, num_layers):
    """`trainable` and `head_learning_rate` keywords of optim.make_optimizer for a run of `config`."""
    values = settings(config) if config.mode == "finetune" else defaults.new_section("finetune")
    trainable, head_learning_rate = None, values.head_learning_rate
    if values.method == "adapter":
        trainable = optim.is_head
        head_learning_rate = ADAPTER_HEAD_LEARNING_RATE if head_learning_rate is None else head_learning_rate
    elif values.method == "last_k":
        trainable = optim.trains_from_block(num_layers - values.unfreeze_blocks)
    elif values.method == "lora":  # the head on a frozen backbone, as the adapter's (measured: docs/efficiency.md)
        trainable = trains_lora
        head_learning_rate = ADAPTER_HEAD_LEARNING_RATE if head_learning_rate is None else head_learning_rate
    return dict(trainable=trainable, head_learning_rate=head_learning_rate)


def is_lora(name):
    return name.endswith(LORA_SUFFIXES)


def trains_lora(names):
    """`trainable` predicate of LoRA: the low-rank factors and the heads."""
    return optim.is_head(names) or is_lora(names[-1])


def without_lora(tree):
    """A parameter tree without its LoRA factors."""
    return {k: without_lora(v) if isinstance(v, dict) else v for k, v in tree.items() if not is_lora(k)}


def merged_lora(params, scale):
    """ParT parameters with each LoRA update folded into its Dense: kernel + `scale` A B (scale = lora_alpha /
    lora_rank), the factors removed: the parameters of the same ParT without LoRA."""
    if not isinstance(params, dict):
        return params
    merged = {k: merged_lora(v, scale) for k, v in params.items() if not is_lora(k)}
    for name in (k.removesuffix("_lora_a") for k in params if k.endswith("_lora_a")):
        update = scale * (params[f"{name}_lora_a"] @ params[f"{name}_lora_b"])
        merged[name] = {**merged[name], "kernel": merged[name]["kernel"] + update.astype(merged[name]["kernel"].dtype)}
    return merged
