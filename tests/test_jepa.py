"""JEPA (jetjax/objectives/predictive.py): its loss against a loop in numpy, its masks, its momentum schedule
and EMA target encoder, and a short run through the engine that lowers the loss without collapsing the
targets."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import toy_jets
from jetjax import losses, objectives, steps, train
from jetjax.models.part import ParT
from jetjax.objectives.masked import choose_block
from jetjax.objectives.predictive import momentum_at
from test_objectives_siamese import TINY
from test_train import tiny_config


def loop_latent_regression(pred, target, masked, loss, beta):
    """The loss particle by particle and dimension by dimension (float64)."""
    errors, normalised = [], []
    for b, p in zip(*np.nonzero(masked)):
        t = np.asarray(target[b, p], np.float64)
        t = (t - t.mean()) / np.sqrt(t.var() + 1e-5)
        normalised.append(t)
        for d in range(t.size):
            x = abs(float(pred[b, p, d]) - t[d])
            errors.append((0.5 * x * x / beta if x < beta else x - 0.5 * beta) if loss == "smooth_l1" else x * x)
    return np.mean(errors), np.mean(np.std(np.array(normalised), axis=0))


@pytest.mark.parametrize("loss,beta", [("smooth_l1", 1.0), ("smooth_l1", 0.3), ("l2", 1.0)])
def test_latent_regression_equals_a_loop_and_passes_no_gradient_to_the_targets(loss, beta):
    rng = np.random.default_rng(0)
    pred = rng.normal(0, 1.5, (3, 6, 5)).astype(np.float32)
    target = rng.normal(2.0, 3.0, (3, 6, 5)).astype(np.float32)
    masked = rng.random((3, 6)) < 0.4
    target[~masked] = np.nan  # unmasked slots reach neither the loss nor its gradient
    pred[~masked] = np.nan
    value, metrics = losses.latent_regression(pred, target, masked, loss, beta)
    expected, target_std = loop_latent_regression(pred, target, masked, loss, beta)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["target_std"]) == pytest.approx(target_std, rel=1e-4)
    assert metrics["masked_particles"] == masked.sum()
    grad_pred, grad_target = jax.grad(lambda p, t: losses.latent_regression(p, t, masked, loss, beta)[0],
                                      argnums=(0, 1))(jnp.asarray(pred), jnp.asarray(target))
    assert np.all(np.isfinite(grad_pred)) and np.all(grad_pred[~masked] == 0) and np.any(grad_pred[masked] != 0)
    assert np.all(np.nan_to_num(grad_target) == 0)
    with pytest.raises(ValueError, match="beta > 0"):
        losses.latent_regression(pred, target, masked, "smooth_l1", 0.0)


def test_a_collapsed_target_has_zero_std_and_an_empty_mask_gives_zero():
    target = np.broadcast_to(np.arange(4.0, dtype=np.float32), (2, 3, 4))
    masked = np.ones((2, 3), bool)
    assert float(losses.latent_regression(np.zeros((2, 3, 4)), target, masked)[1]["target_std"]) < 1e-6
    value, metrics = losses.latent_regression(np.zeros((2, 3, 4)), target, np.zeros((2, 3), bool))
    assert float(value) == 0.0 and float(metrics["target_std"]) == 0.0


def test_block_masking_takes_the_nearest_real_particles_to_one_of_them():
    rng = np.random.default_rng(1)
    lengths = np.array([20, 7, 3, 0])
    mask = np.arange(24)[None] < lengths[:, None]
    deta, dphi = (rng.normal(0, 0.3, (4, 24)).astype(np.float32) for _ in range(2))
    for seed in range(5):
        chosen = np.asarray(choose_block(jax.random.key(seed), mask, deta, dphi, 0.3))
        for j, n in enumerate(lengths):
            count = int(np.floor(0.3 * n))
            assert chosen[j].sum() == count and not np.any(chosen[j] & ~mask[j])
            if count == 0:
                continue
            # some real particle has exactly the chosen ones as its `count` nearest (itself among them)
            d2 = (deta[j, :n, None] - deta[j, None, :n]) ** 2 + (dphi[j, :n, None] - dphi[j, None, :n]) ** 2
            nearest = [set(np.argsort(row, kind="stable")[:count]) for row in d2]
            assert set(np.nonzero(chosen[j])[0]) in nearest


def test_the_momentum_rises_linearly_to_its_end():
    assert [float(momentum_at(s, 0.996, 1.0, 100)) for s in (0, 50, 100, 400)] == pytest.approx(
        [0.996, 0.998, 1.0, 1.0])


def jepa_engine(**settings):
    model = objectives.build("jepa", ParT(**TINY), "kin", 16, predictor_width=16, predictor_heads=2, **settings)
    tx = optax.adam(3e-3)
    state = steps.init_state(model, tx, toy_jets(0, batch=16, slots=16, lengths=None), jax.random.key(0))
    return model, state, steps.make_train_step(model, tx)


def test_the_target_encoder_is_the_ema_of_the_context_encoder():
    model, state, step = jepa_engine(momentum=0.9, momentum_end=0.5, momentum_steps=4)
    target = lambda s: jax.tree.leaves(jax.device_get(s.extra["momentum"]["encoder_params"]))
    online = lambda s: jax.tree.leaves(jax.device_get(s.params["encoder"]))
    for a, b in zip(target(state), online(state)):
        np.testing.assert_array_equal(a, b)  # it starts as the encoder
    history = [(target(state), online(state))]  # copied: the step donates the state's buffers
    for seed in (1, 2, 3):
        state, metrics = step(state, toy_jets(seed, batch=16, slots=16, lengths=None), None)
        history.append((target(state), online(state)))
    # step s updates the target with momentum_at(s) and the encoder as it was before that step
    m = float(momentum_at(2, 0.9, 0.5, 4))
    assert float(metrics["momentum"]) == pytest.approx(m)
    for t3, t2, o2 in zip(history[3][0], *history[2]):
        np.testing.assert_allclose(t3, m * t2 + (1 - m) * o2, rtol=1e-6, atol=1e-7)

@pytest.mark.parametrize("masking", ["random", "block"])
def test_both_maskings_hide_the_chosen_particles_from_the_context_encoder(masking):
    model, state, _ = jepa_engine(masking=masking)
    batch = toy_jets(5, batch=16, slots=16, lengths=None)
    variables = {"params": state.params, "batch_stats": state.batch_stats, **state.extra}
    loss, metrics, outputs = model.apply(variables, batch, jax.random.key(3))
    masked = model.choose(jax.random.key(3), batch)
    assert float(metrics["masked_particles"]) == np.sum(np.floor(0.3 * np.sum(batch["mask"], 1)))
    # the context encoder's z is the encoder's on the jets without the masked particles
    encoder_vars = {"params": state.params["encoder"], "batch_stats": state.batch_stats["encoder"]}
    hidden = model.encoder.apply(encoder_vars, batch["features"], batch["vectors"], batch["mask"] & ~masked)["z"]
    np.testing.assert_allclose(outputs["z"], hidden, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="objective.masking='disk'"):
        model.clone(masking="disk").apply(variables, batch, jax.random.key(3))


def test_pretraining_lowers_the_loss_and_keeps_the_target_std_away_from_zero(tmp_path):
    config = tiny_config("pretrain", name="jepa", predictor_width=16, predictor_heads=2, momentum=0.99)
    config.data.update(dict(epoch_size=768, val_size=128))
    config.train.update(dict(epochs=2, log_every=4))
    config.knn.update(dict(train_jets=128, val_jets=64, k=5))
    config.layout.update(dict(mode="dense", buckets=1))
    train.fit(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    training = [r for r in records if r["split"] == "train"]
    assert training[-1]["latent_loss"] < 0.8 * training[0]["latent_loss"], (training[0], training[-1])
    assert min(r["target_std"] for r in training) > 0.2  # the targets did not collapse to one vector
    # the schedule spans the run's 24 steps (records average 4 steps: the last is at step 21.5 of 24)
    assert [r["momentum"] for r in (training[0], training[-1])] == pytest.approx([0.99 + 0.01 * 1.5 / 24,
                                                                                 0.99 + 0.01 * 21.5 / 24])
    validation = [r for r in records if r["split"] == "val"]
    assert {"knn_macro_auc", "target_std", "representation_std"} <= set(validation[-1])
