"""VICReg, SimSiam and MoCo through the engine: a short run lowers each loss, MoCo's momentum encoder follows
its EMA formula and its queue its FIFO order, both resume bit-identically from a checkpoint, and a pretraining
run's validation records carry the kNN probe of the encoder's representation."""
import json

import jax
import numpy as np
import optax
import pytest

from configs import study as study_config
from conftest import toy_jets
from jetjax import checkpoint, knn_validation, metrics, objectives, steps, study, train
from jetjax.build import build_model, data_settings
from jetjax.checkpoint import Checkpoints
from jetjax.models.part import ParT
from test_train import tiny_config

TINY = dict(embed_dims=(16, 16, 16), pair_embed_dims=(8,), num_heads=2, num_layers=1, num_cls_layers=1,
            dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)
SMALL_HEADS = {
    "vicreg": dict(expander=(32, 32)),
    "simsiam": dict(projection=(32, 32), predictor_hidden=8),
    "moco": dict(projection=(32, 16), predictor_hidden=32, momentum=0.9),
    "moco_queue": dict(projection=(32, 16), predictor_hidden=0, queue_size=96, momentum=0.9),
}
BATCH = 16


def build(name):
    return objectives.build(name.removesuffix("_queue"), ParT(**TINY), "kin", 16, **SMALL_HEADS[name])


def engine(name, learning_rate=3e-3):
    """(model, its initial state, the engine's jitted train step) on toy jets of 16 slots."""
    model, tx = build(name), optax.adam(learning_rate)
    state = steps.init_state(model, tx, toy_jets(0, batch=BATCH, slots=16, lengths=None), jax.random.key(0))
    return model, state, steps.make_train_step(model, tx)


def train_steps(state, step, seeds):
    losses = []
    for seed in seeds:
        state, metrics_ = step(state, toy_jets(seed, batch=BATCH, slots=16, lengths=None), None)
        losses.append(float(metrics_["loss"]))
    return state, losses


@pytest.mark.parametrize("name,steps,drop", [("vicreg", 30, 0.1), ("simsiam", 30, 0.1), ("moco", 100, 0.05)])
def test_short_training_lowers_the_loss(name, steps, drop):
    # MoCo learns slower: its InfoNCE starts at ~ln(16), chance for 16 jets, and matching a jet's two views needs
    # invariance to their rotations and translations (measured: -7.5% in 100 steps, -4.6% in 60, where
    # float rounding in GELU moved the run by a few percent; VICReg, SimSiam far more)
    _, state, step = engine(name)
    data = [toy_jets(seed, batch=BATCH, slots=16, lengths=None) for seed in range(4)]
    history, spread = [], []
    for i in range(steps):
        state, m = step(state, data[i % len(data)], None)
        history.append(float(m["loss"]))
        spread.append(float(m["representation_std"]))
    first, last = np.mean(history[:steps // 5]), np.mean(history[-steps // 5:])
    assert last < first - drop * abs(first), (first, last)
    assert np.all(np.isfinite(history)) and 0 < min(spread) and max(spread) < 1  # the collapse monitor is logged


def test_moco_momentum_encoder_and_queue_follow_their_formulas_and_resume_bit_identically(tmp_path):
    model, initial, step = engine("moco_queue")
    extra = initial.extra["momentum"]
    assert set(extra) == {"encoder_params", "encoder_batch_stats", "projection_params", "projection_batch_stats",
                          "queue"}
    for a, b in zip(jax.tree.leaves(extra["encoder_params"]), jax.tree.leaves(initial.params["encoder"])):
        np.testing.assert_array_equal(a, b)  # the momentum copy starts as the encoder
    initial_queue = np.asarray(extra["queue"])
    after_one, _ = train_steps(initial, step, [1])
    online_one = jax.device_get(after_one.params)
    target_one = jax.device_get(after_one.extra["momentum"])
    after_two, _ = train_steps(after_one, step, [2])
    # MoCo: before computing the keys of step 2, target <- m target + (1 - m) online (m = 0.9)
    for t2, t1, o1 in zip(jax.tree.leaves(after_two.extra["momentum"]["projection_params"]),
                          jax.tree.leaves(target_one["projection_params"]),
                          jax.tree.leaves(online_one["projection"])):
        np.testing.assert_allclose(t2, 0.9 * t1 + 0.1 * o1, rtol=1e-6, atol=1e-7)
    keys_per_step = 2 * BATCH
    np.testing.assert_array_equal(after_two.extra["momentum"]["queue"][:-2 * keys_per_step],
                                  initial_queue[2 * keys_per_step:])  # FIFO: the oldest random rows left first
    assert not np.allclose(after_two.extra["momentum"]["queue"][-keys_per_step:], initial_queue[-keys_per_step:])

    checkpoints = Checkpoints(tmp_path)
    checkpoints.save("latest", 2, after_two, {})
    checkpoints.wait()
    resumed, _ = checkpoints.restore("latest", initial)
    checkpoints.close()
    straight, straight_losses = train_steps(after_two, step, [3, 4])
    resumed, resumed_losses = train_steps(resumed, step, [3, 4])
    assert straight_losses == resumed_losses
    for a, b in zip(*(jax.tree.leaves((s.params, s.batch_stats, s.opt_state, s.extra, s.step))
                      for s in (straight, resumed))):
        np.testing.assert_array_equal(a, b)


def test_pretraining_validation_records_the_knn_probe_of_the_encoder(tmp_path):
    config = tiny_config("pretrain", name="vicreg", expander=(32, 32))
    config.data.update(dict(epoch_size=256, val_size=128))
    config.knn.update(dict(train_jets=192, val_jets=128, k=5))
    config.layout.update(dict(mode="dense", buckets=1))  # one program per step function (compile time)
    train.fit(config, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["split"] == "val"]
    assert len(validation) == 1 and {"knn_accuracy", "knn_macro_auc", "representation_std"} <= set(validation[0])
    # the same numbers from the saved encoder alone on the probe's samples (all P slots, no packing)
    state = checkpoint.best_checkpoint(tmp_path, "run")
    encoder = build_model(config).encoder
    variables = {"params": state["params"]["encoder"], "batch_stats": state["batch_stats"]["encoder"]}
    embed = jax.jit(lambda b: encoder.apply(variables, b["features"], b["vectors"], b["mask"])["z"])
    samples = knn_validation.probe_samples(config, data_settings(config, tmp_path), 64)
    (z_train, y_train), (z_val, y_val) = (
        (np.concatenate([embed(b) for b in s]), np.concatenate([b["label"] for b in s])) for s in samples)
    _, expected = metrics.knn_probe(z_train, y_train, z_val, y_val, k=5, num_classes=7)
    assert validation[0]["knn_accuracy"] == pytest.approx(expected["accuracy"], abs=1.5 / len(y_val))
    assert validation[0]["knn_macro_auc"] == pytest.approx(expected["macro_auc"], abs=0.01)


def test_the_study_runs_them_under_their_literature_names(tmp_path):
    config = study_config.get_config()
    config.study.update(dict(objectives=("vicreg", "simsiam", "moco", "jepa"), tsne=()))
    rows = [row for _, row, _ in study.stages(config, tmp_path) if row is not None]
    assert rows[-4:] == ["VICReg", "SimSiam", "MoCo", "JEPA"]
    assert config.study.objective_settings["vicreg"].to_dict() == dict(invariance=25.0, variance=25.0, covariance=1.0)
