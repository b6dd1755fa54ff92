"""The engine's feeding: batches cut to slot buckets and computed in packed layouts give the P-slot results
(loss, parameters, BatchNorm statistics, evaluation scores), and evaluation returns every result in the
stream's order although jets are regrouped by multiplicity."""
import json

import jax
import ml_collections
import numpy as np
import optax
import pytest

from configs import defaults
from jetjax import feeding, objectives, parallel, steps, train
from jetjax.data import pipeline, synthetic
from jetjax.models.part import ParT

SLOTS = 64
NO_DROPOUT = dict(dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("jets")
    synthetic.write_dataset(root, jets_per_group=1200, seed=4)
    return root


def feeder(model, packed, slot_multiple):
    """A Feeder with packing on or off; slot_multiple=SLOTS computes every batch on all P slots."""
    layout = ml_collections.ConfigDict({**defaults.new_section("layout"), "mode": "packed" if packed else "dense",
                                        "groups": 3, "slot_multiple": slot_multiple, "sample_batches": 4})
    return feeding.Feeder(model, parallel.data_mesh(), SLOTS, layout)


def tiny_classifier():
    encoder = ParT(num_classes=7, embed_dims=(16, 32, 16), pair_embed_dims=(8,), num_heads=2, num_layers=1,
                   num_cls_layers=1, **NO_DROPOUT)
    return objectives.Supervised(encoder)


def test_bucketed_packed_training_equals_the_p_slot_computation(dataset):
    model, tx = tiny_classifier(), optax.sgd(0.1)
    batches = list(pipeline.training_sampler(dataset, batch_size=16, epoch_size=96, num_particles=SLOTS,
                                             seed=0).batches(0))
    step = steps.make_train_step(model, tx)
    runs = []
    for packed, multiple in ((False, SLOTS), (True, 8)):
        state = steps.init_state(model, tx, batches[0], jax.random.key(0))
        feed = feeder(model, packed, multiple)
        losses = []
        for state, metrics in steps.run_steps(state, step, feed, batches):
            losses.append(float(metrics["loss"]))
        runs.append((losses, state, feed.used))
    (losses_p, state_p, plans_p), (losses_b, state_b, plans_b) = runs
    assert {slots for slots, _ in plans_p} == {SLOTS}
    assert all(plan is not None for _, plan in plans_b) and min(slots for slots, _ in plans_b) < SLOTS
    np.testing.assert_allclose(losses_b, losses_p, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(state_p.params), jax.tree.leaves(state_b.params)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    for a, b in zip(jax.tree.leaves(state_p.batch_stats), jax.tree.leaves(state_b.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_evaluation_is_bucketed_exactly_and_in_stream_order(dataset):
    model = tiny_classifier()
    batches = list(pipeline.test_batches(dataset, batch_size=50, num_particles=SLOTS))
    state = steps.init_state(model, optax.sgd(0.1), batches[0], jax.random.key(1))
    eval_step = steps.make_eval_step(model)
    # the reference: each batch of the stream in turn, on all P slots, no regrouping (compiled too: op by op,
    # ln m^2 of a massless particle with itself is rounded differently, see test_part_reference.py)
    apply = jax.jit(lambda b: model.apply({"params": state.params, "batch_stats": state.batch_stats}, b,
                                          jax.random.key(0))[2])
    direct = [apply(b) for b in batches]
    scores = np.concatenate([jax.nn.softmax(o["logits"]) for o in direct])
    embeddings = np.concatenate([o["z"] for o in direct])
    result = feeding.run_eval(state, eval_step, feeder(model, True, 8), iter(batches), 50, window=4,
                            keep_embeddings=120)
    np.testing.assert_array_equal(result["labels"], np.concatenate([b["label"] for b in batches]))
    np.testing.assert_allclose(result["scores"], scores, atol=2e-5)
    np.testing.assert_allclose(result["embeddings"], embeddings[:120], atol=2e-5)
    lengths = np.concatenate([b["mask"].sum(1) for b in batches])
    assert len(result["scores"]) == len(lengths) and len(lengths) % 50  # a short last batch was padded
    regrouped = list(pipeline.grouped_by_length(iter(batches), 4))
    np.testing.assert_array_equal(np.sort(np.concatenate([b["position"] for b in regrouped])),
                                  np.arange(len(lengths)))
    spread = [np.ptp(b["mask"].sum(1)) for b in regrouped]
    assert np.mean(spread) < 0.5 * np.mean([np.ptp(b["mask"].sum(1)) for b in batches])  # similar jets together


@pytest.mark.parametrize("mode", ["packed", "dense"])
def test_an_epoch_compiles_only_the_programs_it_announced(tmp_path, dataset, mode):
    """fit settles its programs before the first step (at most layout.buckets per step function), compiles
    them ahead, and compiles no other train or eval step program over an epoch of 50 batches whose
    multiplicities reach the slot count (synthetic jets up to ~60 particles in P = 64)."""
    from configs import quickstart
    from jetjax import compilation

    c = quickstart.get_config()
    c.data.update(dict(root=str(dataset), synthetic_jets_per_group=0, num_particles=SLOTS, epoch_size=1600,
                       val_size=320))
    c.model.update(dict(embed_dims=(16, 32, 16), pair_embed_dims=(8,), num_heads=2, num_layers=1, num_cls_layers=1))
    c.train.update(dict(epochs=1, batch_size=32, log_every=10))
    c.optimizer.warmup_steps = 0
    c.layout.mode = mode
    with compilation.CompileLog() as log:
        train.fit(c, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    compiled = next(r for r in records if r["split"] == "compile")
    announced, announced_eval = compiled["layouts"], compiled["eval_layouts"]
    assert 1 <= announced <= 4 and 1 <= announced_eval <= 4
    assert log.programs["jit(train_step)"] == announced  # compiled ahead, never again
    validation = next(r for r in records if r["split"] == "val")
    assert 1 <= validation["layouts_used"] <= announced and 1 <= validation["eval_layouts_used"] <= announced_eval
    # the final test evaluation settles a feeder of its own on the test stream: at most 4 more
    assert announced_eval <= log.programs["jit(eval_step)"] <= announced_eval + 4
