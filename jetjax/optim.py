"""Optimisers: AdamW, Muon (optax.contrib.muon with an explicit partition), warm-up + cosine/constant learning
rate schedules, global-norm clipping, weight-decay masks and frozen subtrees.

Every choice is made from the names in a parameter's path (flax `DictKey`s), so the same rules hold for a bare
`ParT` parameter tree (`embed`, `pair_embed`, `blocks_i`, `cls_blocks_i`, `cls_token`, `norm`, `head`) and for
an objective's tree, where the encoder sits under `encoder` beside head subtrees (`projection`, `decoder`,
`vae`). Path entries of other kinds (attributes of a state object, sequence indices) are ignored.

`make_optimizer` takes plain arguments so that a config section can be splatted into it:
`make_optimizer(**config.optimizer, total_steps=...)`.
"""
import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax

ENCODER = "encoder"
"""Name of the ParT encoder's subtree in an objective's parameters (jetjax.objectives)."""

_ENCODER_PART = re.compile(r"embed|pair_embed|(cls_)?blocks_\d+|cls_token|norm")
_BLOCK = re.compile(r"(cls_)?blocks_\d+")
_HIDDEN_EMBED_DENSE = re.compile(r"dense_[1-9]\d*")
_BLOCK_MATRICES = frozenset(
    [("attn", projection, "kernel") for projection in ("query", "key", "value", "out")]
    + [("ffn", layer, "kernel") for layer in ("fc1", "fc1_gate", "fc2")])

SCHEDULES = ("constant", "cosine")
OPTIMIZERS = ("adamw", "muon")


def path_names(path):
    """The dictionary keys of a pytree path, as a tuple of strings (other path entries dropped)."""
    return tuple(str(entry.key) for entry in path if isinstance(entry, jax.tree_util.DictKey))


def encoder_part(names):
    """`names` relative to the ParT encoder's root for an encoder parameter; None for a head parameter
    (the encoder's classifier `head` and every subtree beside the encoder)."""
    if names[:1] == (ENCODER,):
        names = names[1:]
    return names if names and _ENCODER_PART.fullmatch(names[0]) else None


def is_head(names):
    """True for parameters outside the encoder proper: `trainable=is_head` freezes the encoder (an adapter)."""
    return encoder_part(names) is None


def trains_from_block(first_block):
    """`trainable` predicate of partial fine-tuning: the heads, the particle blocks from `first_block` on, the
    class blocks, the class token and the final norm train; the embeddings and earlier blocks are frozen."""
    def trainable(names):
        part = encoder_part(names)
        if part is None or part[0] in ("cls_token", "norm") or part[0].startswith("cls_blocks_"):
            return True
        return part[0].startswith("blocks_") and int(part[0].removeprefix("blocks_")) >= first_block
    return trainable


def freeze():
    """Updates of -0.0 for frozen parameters: p + (-0.0) is p bit for bit for every p, -0.0 included
    (optax.set_to_zero's +0.0 turns a -0.0 parameter into +0.0)."""
    return optax.stateless(lambda updates, params=None: jax.tree.map(lambda u: jnp.full_like(u, -0.0), updates))


def is_muon_matrix(names, muon_embedding=False):
    """True for the hidden 2-D matrices that Muon updates (docs/formulas.md §8.4): the query/key/value/output
    projections and feed-forward kernels (fc1, fc1_gate, fc2) of the particle and class-attention blocks and,
    with `muon_embedding`, the particle embedding's kernels after the first (128->512, 512->128)."""
    part = encoder_part(names) or ()
    if part and _BLOCK.fullmatch(part[0]):
        return part[1:] in _BLOCK_MATRICES
    return (muon_embedding and len(part) == 3 and part[0] == "embed"
            and bool(_HIDDEN_EMBED_DENSE.fullmatch(part[1])) and part[2] == "kernel")


def muon_labels(params, muon_embedding=False):
    """'muon' or 'adam' for every leaf of `params`: which branch of `make_optimizer(name='muon')` updates it."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "muon" if is_muon_matrix(path_names(path), muon_embedding) else "adam", params)


def muon_dimension_numbers(muon_embedding=False):
    """The `muon_weight_dimension_numbers` callable of optax.contrib.muon: a flax kernel (in, out) reduces
    over axis 0 and outputs axis 1 (the default MuonDimensionNumbers); None sends a leaf to the Adam branch."""
    def dimension_numbers(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: optax.contrib.MuonDimensionNumbers()
            if is_muon_matrix(path_names(path), muon_embedding) else None, params)
    return dimension_numbers


def weight_decay_mask(params):
    """True only for Dense kernels (>= 2-D leaves named `kernel`): no decay on biases, LayerNorm/BatchNorm
    parameters, head scales, residual and layer scales, the class token or tokens (docs/formulas.md §2.12)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: path_names(path)[-1:] == ("kernel",) and leaf.ndim >= 2, params)


def make_schedule(kind, peak_lr, total_steps, warmup_steps=0, end_factor=0.01):
    """Learning rate per update step: linear warm-up from 0 to `peak_lr` over `warmup_steps`, then
    'constant' (peak_lr) or 'cosine' (half-cosine decay from peak_lr to end_factor * peak_lr at `total_steps`,
    the warm-up included in total_steps). The default end 0.01 x peak is where ParT's flat+decay schedule ends
    (docs/formulas.md §3.3)."""
    if kind not in SCHEDULES:
        raise ValueError(f"optimizer.schedule must be one of {SCHEDULES}, got {kind!r}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"optimizer.warmup_steps={warmup_steps} must be >= 0 and below the total number of "
                         f"training steps ({total_steps})")
    if kind == "constant":
        after_warmup = optax.constant_schedule(peak_lr)
    else:
        after_warmup = optax.cosine_decay_schedule(peak_lr, total_steps - warmup_steps, alpha=end_factor)
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup_steps), after_warmup],
                                [warmup_steps])


def decoupled_weight_decay(learning_rate, rate, mask):
    """AdamW's decoupled decay as a transform of its own: update <- update - lr(step) * rate * param on the
    leaves where `mask(params)` is True. Muon needs it for its Adam branch, whose decay optax cannot mask."""
    def init_fn(params):
        del params
        return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

    def update_fn(updates, state, params):
        step_size = learning_rate(state.count) * rate
        updates = jax.tree.map(lambda u, p, decay: u - step_size * p if decay else u, updates, params,
                               mask(params))
        return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def muon_with_adamw(muon_lr, adam_lr, *, weight_decay, b1, b2, eps, momentum, nesterov, ns_steps,
                    muon_weight_decay, muon_embedding):
    """optax.contrib.muon with the explicit ParT partition and the traps of its defaults closed
    (docs/formulas.md §8.4): the Adam branch gets its own learning rate (never Muon's), AdamW's betas and eps,
    and its weight decay on kernels only (optax would decay every Adam leaf, biases and norms included, so it runs with
    adam_weight_decay=0 and the masked decay follows it)."""
    def adam_kernels(params):
        return jax.tree.map(lambda decay, label: decay and label == "adam", weight_decay_mask(params),
                            muon_labels(params, muon_embedding))

    return optax.chain(
        optax.contrib.muon(
            muon_lr, ns_steps=ns_steps, beta=momentum, eps=eps, weight_decay=muon_weight_decay,
            nesterov=nesterov, adam_b1=b1, adam_b2=b2, adam_weight_decay=0.0, adam_learning_rate=adam_lr,
            muon_weight_dimension_numbers=muon_dimension_numbers(muon_embedding)),
        decoupled_weight_decay(adam_lr, weight_decay, adam_kernels))


def make_optimizer(total_steps, name="adamw", learning_rate=1e-4, weight_decay=0.01, clip_norm=1.0,
                   schedule="cosine", warmup_steps=0, end_factor=0.01, b1=0.9, b2=0.999, eps=1e-8,
                   muon_learning_rate=0.02, muon_momentum=0.95, muon_nesterov=True, muon_ns_steps=5,
                   muon_weight_decay=0.0, muon_embedding=False,
                   trainable: Optional[Callable[[tuple], bool]] = None,
                   head_learning_rate: Optional[float] = None) -> optax.GradientTransformation:
    """The training optimizer: global-norm clipping of the trainable gradients (clip_norm=None: off), then
    AdamW or Muon, learning rates following `make_schedule(schedule, ..., total_steps, warmup_steps, end_factor)`.

    adamw: optax.adamw(learning_rate, b1, b2, eps) with decoupled weight decay on kernels only
           (docs/formulas.md §2.12). Defaults: the study's lr 1e-4 and clipping 1.0, PyTorch's AdamW betas/eps
           and weight decay 0.01 (also ParT's fine-tuning recipe, §3.4).
    muon:  optax.contrib.muon on the blocks' hidden matrices (`is_muon_matrix`) with muon_learning_rate 0.02,
           momentum 0.95, Nesterov, 5 Newton-Schulz steps and muon_weight_decay 0 (Keller Jordan's defaults,
           §8.4; decay there is lr * wd per step); every other parameter gets exactly the adamw optimizer
           above (learning_rate, b1, b2, eps, weight_decay on kernels), except that optax shares
           `muon_nesterov` with it (NAdamW when on). `muon_embedding` adds the embedding's hidden matrices.
    `trainable(names)`, given a parameter path's dictionary keys, marks what trains; the other parameters
    are left bit-identical (`freeze`), hold no optimizer state and are left out of the clipping norm:
    `trainable=is_head` trains a head on a frozen encoder.
    `head_learning_rate` (None: `learning_rate`): the peak learning rate of the head parameters (`is_head`),
    with the same schedule and optimizer (weaver's fine-tuning recipe gives a new head a larger rate); the
    clipping norm stays the global norm of every trainable gradient.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer.name must be one of {OPTIMIZERS}, got {name!r}")
    if clip_norm is not None and clip_norm <= 0:
        raise ValueError(f"optimizer.clip_norm must be positive or None (no clipping), got {clip_norm}")

    def scheduled(peak_lr):
        return make_schedule(schedule, peak_lr, total_steps, warmup_steps, end_factor)

    def optimizer(peak_lr):
        if name == "adamw":
            return optax.adamw(scheduled(peak_lr), b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                               mask=weight_decay_mask)
        return muon_with_adamw(
            scheduled(muon_learning_rate), scheduled(peak_lr), weight_decay=weight_decay, b1=b1, b2=b2,
            eps=eps, momentum=muon_momentum, nesterov=muon_nesterov, ns_steps=muon_ns_steps,
            muon_weight_decay=muon_weight_decay, muon_embedding=muon_embedding)

    update = optimizer(learning_rate)
    if head_learning_rate is not None:
        update = optax.partition(
            {"encoder": update, "head": optimizer(head_learning_rate)},
            lambda params: labels_by(params, lambda names: "head" if is_head(names) else "encoder"))
    if clip_norm is not None:
        update = optax.chain(optax.clip_by_global_norm(clip_norm), update)
    if trainable is None:
        return update
    return optax.partition({"train": update, "freeze": freeze()},
                           lambda params: labels_by(params, lambda names: "train" if trainable(names) else "freeze"))


def labels_by(params, label):
    """`label(names)` for every leaf of `params` (an optax.partition labelling)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: label(path_names(path)), params)
