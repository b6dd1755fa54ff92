"""Gradient accumulation (`train.accumulate`): k micro batches through the engine's train step give the update
of one step on their union (the loss is a mean over jets; k equal micro batches), and the parameters stay put
in between. BatchNorm is left out here on purpose: with it each micro batch is normalised by its own
statistics, which is not the large batch's computation (steps.accumulated)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jetjax import build, parallel, steps


class LinearObjective(nn.Module):
    """The engine's objective interface on a linear classifier of the mean particle features."""

    @nn.compact
    def __call__(self, batch, key, step=0, train=False, plan=None):
        mask = batch["mask"][..., None]
        pooled = (batch["features"] * mask).sum(1) / jnp.maximum(mask.sum(1), 1)
        logits = nn.Dense(3)(pooled)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, {}, {"logits": logits}


def toy_batches(micro, size):
    rng = np.random.default_rng(0)
    batch = {"features": rng.normal(size=(micro * size, 8, 5)).astype(np.float32),
             "mask": rng.random((micro * size, 8)) < 0.7, "label": rng.integers(0, 3, micro * size)}
    return batch, [{k: v[i * size:(i + 1) * size] for k, v in batch.items()} for i in range(micro)]


def run(tx, batches):
    """The parameters before and after each train step on `batches`."""
    model, mesh = LinearObjective(), parallel.data_mesh()
    state = parallel.replicate(steps.init_state(model, tx, batches[0], jax.random.key(0)), mesh)
    step, trajectory = steps.make_train_step(model, tx), [jax.device_get(state.params)]
    for batch in batches:
        state, _ = step(state, parallel.shard_batch(batch, mesh), None)
        trajectory.append(jax.device_get(state.params))
    return trajectory


def test_accumulated_micro_batches_equal_one_large_batch():
    micro = 4
    large, micro_batches = toy_batches(micro, 8)
    adamw = optax.adamw(1e-2, weight_decay=0.01)
    initial, once = run(adamw, [large])
    accumulated = run(steps.accumulated(adamw, micro), micro_batches * 2)
    for params in accumulated[1:micro]:  # no update within a cycle
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(initial)):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(accumulated[micro]), jax.tree.leaves(once)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    moved = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(accumulated[-1]), jax.tree.leaves(once))]
    assert max(moved) > 1e-4  # the second cycle updates again


def test_accumulate_must_divide_the_batch():
    config = ml_collections.ConfigDict(dict(train=dict(batch_size=32, accumulate=3)))
    with pytest.raises(ValueError, match="train.accumulate=3 must be a positive divisor of train.batch_size=32"):
        build.micro_batch_size(config)
    config.train.accumulate = 4
    assert build.micro_batch_size(config) == 8
