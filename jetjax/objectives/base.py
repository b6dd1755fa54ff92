"""What the engine asks of an objective (`Objective`), and the pieces objectives share: running the encoder on
a batch laid out by the step's plan (`encode`), and the base of the objectives that encode several views of
each jet (`ViewObjective`).
"""
from typing import Any, Callable, Optional, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jetjax import momentum as ema


class Objective(Protocol):
    """The protocol between an objective and the engine (jetjax/train.py, jetjax/feeding.py).

    An objective is a flax module. The engine initialises it with `init(key, batch, key)` and calls it as
    `apply(variables, batch, key, step=step, train=..., plan=plan, rngs={'dropout': ...}, mutable=[...])`;
    it returns `(loss, metrics, outputs)`: a scalar loss, a dict of scalar metrics (logged), and a dict of
    per-jet outputs holding the jet representation `z` (and `logits` for classifiers). `key` draws its views
    (augmentations, masking); `plan` is the batch's static layout (jetjax/models/layout.py), to be passed to
    the encoder untouched (`encode`). Variable collections other than 'params' and 'batch_stats' are the
    objective's own state (MoCo's 'momentum'): the engine carries them and lets training steps update them.

    `encoder` is the shared ParT, always the submodule of that name so that fine-tuning can load it from any
    pretraining run; None for an objective without a jet representation to probe (the VQ-VAE tokenizer stage).
    `encoder_lengths(lengths)` bounds, host side, the real particles of each jet the encoder will see (the
    feeder picks the batch's layout from them). An objective whose targets come from outside the train step
    also defines `prepare_targets(workdir, data, seed)`, returning itself with them resolved; one with a
    schedule over the whole run defines `with_run_steps(steps)` (both called by `jetjax.objectives.prepare`).
    """

    encoder: Optional[nn.Module]

    def encoder_lengths(self, lengths: np.ndarray) -> np.ndarray: ...

    def __call__(self, batch: dict, key: jax.Array, step: Any = 0, train: bool = False, plan: Any = None) -> tuple: ...


def encode(encoder, batch, train, plan, mask=None, **options):
    """The encoder on the batch (optionally with another `mask`), laid out by `plan` (models/layout.py);
    `options`: the encoder's other call options (ParT's block_outputs, unfrozen_blocks)."""
    return encoder(batch["features"], batch["vectors"], batch["mask"] if mask is None else mask, train=train,
                   plan=plan, **options)


class EncoderLengths:
    """Real particles of each jet the encoder sees, at most (host side, numpy): the batch's own by default."""

    def encoder_lengths(self, lengths):
        return lengths


def stack_views(views):
    """Views (batches of the same B jets) as one batch of B * V jets, jet-major: the views of a jet side by side
    (encoded together: one BatchNorm batch)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs, axis=1).reshape(-1, *xs[0].shape[1:]), *views)


def per_view(x, size):
    """Rows of the stacked views (size * V, ...) as (size, V, ...)."""
    return x.reshape(size, -1, *x.shape[1:])


class ViewObjective(nn.Module):
    """Base of the objectives on several views of each jet: `make_views(key, batch, train)` draws them,
    `view_lengths(lengths, capacity)` bounds their multiplicities host side (jetjax/augment.py), and the views
    are encoded together, stacked jet-major (`stack_views`)."""

    encoder: nn.Module
    make_views: Callable
    view_lengths: Callable
    capacity: int

    @nn.nowrap
    def encoder_lengths(self, lengths):
        return np.stack(self.view_lengths(np.asarray(lengths), self.capacity), axis=1).reshape(-1)

    def encode_views(self, batch, key, train, plan):
        """(the stacked views of `batch`, the encoder's output on them)."""
        stacked = stack_views(self.make_views(key, batch, train))
        return stacked, encode(self.encoder, stacked, train, plan)


class MomentumCopies:
    """Mixin of the objectives that keep momentum (EMA) copies of their submodules (MoCo's keys, JEPA's
    targets), in their 'momentum' variable collection (TrainState.extra: checkpointed, resumed)."""

    def momentum_copy(self, online, name, momentum, train, *args, changes=None, **kwargs):
        """`online` (a submodule already called) run again with its momentum copy's variables, kept under
        `name`: parameters the EMA of `online`'s (updated first in training steps, `momentum` a float or a
        traced schedule value), BatchNorm statistics its own. `changes`: fields of `online` the copy runs
        with instead (e.g. no dropout)."""
        params = self.variable("momentum", f"{name}_params", lambda: online.variables["params"])
        stats = self.variable("momentum", f"{name}_batch_stats", lambda: online.variables.get("batch_stats", {}))
        if train:
            params.value = ema.ema_update(params.value, online.variables["params"], momentum)
        out, new = online.clone(parent=None, **(changes or {})).apply(
            {"params": params.value, "batch_stats": stats.value}, *args, train=train, mutable=["batch_stats"],
            rngs={"dropout": self.make_rng("dropout")} if train else {}, **kwargs)
        if train:
            stats.value = new["batch_stats"]
        return out
