"""Training state and the jit-compiled steps shared by every objective.

The state is one pytree (params, batch_stats, opt_state, step, key); a train step is a pure function
state, batch -> state, metrics, compiled once with the state's buffers donated. Under a data mesh the batch
arrives sharded along 'data' and the state replicated, so the same code runs on one device or many.
"""
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any
    opt_state: Any
    step: jax.Array
    key: jax.Array


def init_state(model, tx, batch, key):
    """A fresh state: the model initialised on `batch` (any batch of the right shapes) with `key`."""
    init_key, model_key, state_key = jax.random.split(key, 3)
    variables = model.init(init_key, batch, model_key)
    params = variables["params"]
    return TrainState(params=params, batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                      step=jnp.zeros((), jnp.int32), key=state_key)


def step_keys(state):
    """Independent keys for this step's views (augmentation/masking) and dropout: fold_in(key, step)."""
    view_key, dropout_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    return view_key, dropout_key


def make_train_step(model, tx):
    """state, batch -> new state, metrics (loss, the objective's metrics, gradient norm)."""

    def train_step(state, batch):
        view_key, dropout_key = step_keys(state)

        def loss_fn(params):
            variables = {"params": params, "batch_stats": state.batch_stats}
            (loss, metrics, _), new = model.apply(variables, batch, view_key, step=state.step, train=True,
                                                  rngs={"dropout": dropout_key}, mutable=["batch_stats"])
            return loss, (metrics, new.get("batch_stats", {}))

        (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        state = state.replace(params=optax.apply_updates(state.params, updates), batch_stats=batch_stats,
                              opt_state=opt_state, step=state.step + 1)
        return state, {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}

    return jax.jit(train_step, donate_argnums=0)


def make_eval_step(model):
    """state, batch -> metrics, outputs (eval mode: running statistics, no dropout; views from a key fixed
    per step so validation is reproducible)."""

    def eval_step(state, batch):
        view_key, _ = step_keys(state)
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        loss, metrics, outputs = model.apply(variables, batch, view_key, step=state.step, train=False)
        return {**metrics, "loss": loss}, outputs

    return jax.jit(eval_step)
