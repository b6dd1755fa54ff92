"""Optimisers: the Muon partition (labels and optax's routing), weight-decay masks, schedules, training with
Muon and AdamW, frozen encoder, clipping."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jetjax import optim
from jetjax.models.part import ParT

BLOCKS = ("blocks_0", "blocks_1", "cls_blocks_0")
BLOCK_MATRICES = ("attn/query/kernel", "attn/key/kernel", "attn/value/kernel", "attn/out/kernel",
                  "ffn/fc1/kernel", "ffn/fc1_gate/kernel", "ffn/fc2/kernel")
EXPECTED_MUON = {f"{block}/{matrix}" for block in BLOCKS for matrix in BLOCK_MATRICES}
EXPECTED_KERNELS = EXPECTED_MUON | {
    "embed/dense_0/kernel", "embed/dense_1/kernel", "embed/dense_2/kernel",
    "pair_embed/dense_0/kernel", "pair_embed/dense_1/kernel", "pair_embed/dense_2/kernel",
    "head/hidden/kernel", "head/out/kernel"}
NUM_CLASSES = 3


def tiny_part():
    return ParT(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=2, num_cls_layers=1,
                num_classes=NUM_CLASSES, ffn="geglu", layer_scale_init=0.1, head="mlp", head_hidden=8)


def labelled_jets(batch=32, slots=8, seed=0):
    """Random jets whose class k raises input channel k of every real particle by 1: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, NUM_CLASSES, batch)
    mask = np.arange(slots)[None] < rng.integers(3, slots + 1, (batch, 1))
    features = rng.normal(size=(batch, slots, 7)) + np.eye(7)[label][:, None, :]
    pt = rng.exponential(20.0, (batch, slots)) + 1.0
    eta, phi = rng.normal(0, 0.3, (2, batch, slots))
    vectors = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)], -1)
    return {"features": (features * mask[..., None]).astype(np.float32),
            "vectors": (vectors * mask[..., None]).astype(np.float32), "mask": mask, "label": label}


@pytest.fixture(scope="module")
def variables():
    jets = labelled_jets()
    return jax.jit(tiny_part().init)(jax.random.key(0), jets["features"], jets["vectors"], jets["mask"])


def paths_where(tree, predicate=bool):
    return {"/".join(optim.path_names(path)) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if predicate(leaf)}


def states_of_type(opt_state, kind):
    return [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kind)) if isinstance(s, kind)]


def test_muon_labels_are_the_hidden_block_matrices(variables):
    params = variables["params"]
    assert paths_where(optim.muon_labels(params), lambda label: label == "muon") == EXPECTED_MUON
    with_embedding = optim.muon_labels(params, muon_embedding=True)
    assert paths_where(with_embedding, lambda label: label == "muon") == EXPECTED_MUON | {
        "embed/dense_1/kernel", "embed/dense_2/kernel"}


def test_muon_labels_in_an_objective_tree_keep_heads_on_adam(variables):
    params = variables["params"]
    objective_params = {"encoder": params, "decoder": {"blocks_0": params["blocks_0"]},
                        "projection": {"hidden": params["head"]["hidden"]}}
    muon = paths_where(optim.muon_labels(objective_params), lambda label: label == "muon")
    assert muon == {f"encoder/{path}" for path in EXPECTED_MUON}


def test_optax_routes_exactly_the_labelled_leaves(variables):
    params = variables["params"]
    tx = optim.make_optimizer(10, name="muon", learning_rate=1e-3, muon_learning_rate=0.02, weight_decay=0.0,
                              clip_norm=None, schedule="constant")
    state = tx.init(params)
    (muon_state,) = states_of_type(state, optax.contrib.MuonState)
    (adam_state,) = states_of_type(state, optax.ScaleByAdamState)
    all_paths = paths_where(params, lambda leaf: True)
    assert paths_where(muon_state.mu, lambda leaf: True) == EXPECTED_MUON
    assert paths_where(adam_state.mu, lambda leaf: True) == all_paths - EXPECTED_MUON

    grads = jax.tree.map(lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
        name = "/".join(optim.path_names(path))
        if name in EXPECTED_MUON:  # orthogonalised: all singular values near lr * sqrt(max(1, fan_out / fan_in))
            shape_scale = math.sqrt(max(1.0, update.shape[1] / update.shape[0]))
            singular_values = np.linalg.svd(np.asarray(update), compute_uv=False) / (0.02 * shape_scale)
            assert 0.5 < singular_values.min() and singular_values.max() < 1.25, name
        else:  # Adam's first step: the same magnitude (~ adam lr) for every element, whatever the gradient
            magnitude = np.abs(np.asarray(update))
            assert 1e-3 <= magnitude.min() and magnitude.max() < 2e-3 and magnitude.max() / magnitude.min() < 1.01, name


def test_weight_decay_mask_is_exactly_the_kernels(variables):
    assert paths_where(optim.weight_decay_mask(variables["params"])) == EXPECTED_KERNELS


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_weight_decay_acts_on_kernels_only(variables, name):
    """With zero gradients the update is pure decoupled decay: -lr * wd * param on kernels, 0 elsewhere."""
    params = variables["params"]
    tx = optim.make_optimizer(10, name=name, learning_rate=0.1, weight_decay=0.5, muon_learning_rate=0.02,
                              muon_weight_decay=0.25, clip_norm=None, schedule="constant")
    updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    for path, update in jax.tree_util.tree_flatten_with_path(updates)[0]:
        name_ = "/".join(optim.path_names(path))
        param = params
        for key in optim.path_names(path):
            param = param[key]
        if name == "muon" and name_ in EXPECTED_MUON:
            factor = 0.02 * 0.25
        else:
            factor = 0.1 * 0.5 if name_ in EXPECTED_KERNELS else 0.0
        np.testing.assert_allclose(update, -factor * np.asarray(param), rtol=1e-6, atol=1e-12, err_msg=name_)


def test_cosine_schedule_values():
    peak, end, total, warmup = 0.1, 0.05, 100, 10
    schedule = optim.make_schedule("cosine", peak, total, warmup, end_factor=end)
    def cosine(step):
        return peak * (end + (1 - end) * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))))
    for step, expected in [(0, 0.0), (5, peak / 2), (warmup, peak), (40, cosine(40)), (total, peak * end),
                           (total + 50, peak * end)]:
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9), step


def test_constant_schedule_values():
    schedule = optim.make_schedule("constant", 0.3, 100, 20)
    for step, expected in [(0, 0.0), (10, 0.15), (20, 0.3), (99, 0.3), (500, 0.3)]:
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6), step
    assert float(optim.make_schedule("constant", 0.3, 100, 0)(0)) == pytest.approx(0.3)
    assert float(optim.make_schedule("cosine", 0.3, 100, 0)(0)) == pytest.approx(0.3)


def test_schedule_and_optimizer_errors_name_the_key():
    with pytest.raises(ValueError, match="optimizer.schedule"):
        optim.make_schedule("linear", 0.1, 100)
    with pytest.raises(ValueError, match="optimizer.warmup_steps"):
        optim.make_schedule("cosine", 0.1, 100, 100)
    with pytest.raises(ValueError, match="optimizer.name"):
        optim.make_optimizer(100, name="sgd")
    with pytest.raises(ValueError, match="optimizer.clip_norm"):
        optim.make_optimizer(100, clip_norm=0.0)


def train(variables, tx, steps, jets):
    """`steps` optimizer steps of the tiny ParT on one fixed batch; returns params and the loss per step."""
    model = tiny_part()

    def loss_fn(params, batch_stats, key):
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, jets["features"],
                                   jets["vectors"], jets["mask"], train=True, rngs={"dropout": key},
                                   mutable=["batch_stats"])
        loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], jets["label"]).mean()
        return loss, updates["batch_stats"]

    @jax.jit
    def step(params, batch_stats, opt_state, key):
        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch_stats, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    losses = []
    for i in range(steps):
        params, batch_stats, opt_state, loss = step(params, batch_stats, opt_state, jax.random.key(i))
        losses.append(float(loss))
    return params, np.array(losses)


@pytest.mark.parametrize("settings", [
    dict(name="adamw", learning_rate=3e-3),
    dict(name="muon", learning_rate=3e-3, muon_learning_rate=0.02),
])
def test_training_lowers_the_loss(variables, settings):
    _, losses = train(variables, optim.make_optimizer(100, warmup_steps=10, **settings), 100, labelled_jets())
    assert np.all(np.isfinite(losses))
    assert losses[-5:].mean() < 0.3 * losses[:5].mean(), losses


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_frozen_encoder_stays_bit_identical(variables, name):
    tx = optim.make_optimizer(10, name=name, learning_rate=1e-2, schedule="constant", trainable=optim.is_head)
    params, _ = train(variables, tx, 3, labelled_jets())
    before = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    after = jax.tree.leaves(params)
    for (path, old), new in zip(before, after, strict=True):
        names = optim.path_names(path)
        assert np.array_equal(old, new) != (names[0] == "head"), names


def test_is_head_marks_heads_in_both_tree_layouts():
    assert optim.is_head(("head", "out", "kernel")) and optim.is_head(("encoder", "head", "out", "kernel"))
    assert optim.is_head(("decoder", "blocks_0", "attn", "query", "kernel")) and optim.is_head(("projection",))
    assert not optim.is_head(("encoder", "blocks_0", "attn", "query", "kernel"))
    assert not optim.is_head(("cls_token",)) and not optim.is_head(("encoder", "pair_embed", "bn_0", "scale"))


def first_adam_moment(tx, grads, params):
    """Adam's first moment after one update: (1 - b1) times the gradient Adam received (after clipping)."""
    _, state = jax.jit(tx.update)(grads, tx.init(params), params)
    (adam_state,) = states_of_type(state, optax.ScaleByAdamState)
    return adam_state.mu


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_clipping_to_the_global_norm(variables, name):
    params = variables["params"]
    grads = jax.tree.map(lambda p: 1e6 * jnp.ones_like(p), params)
    grad_norm = float(optax.tree.norm(grads))
    clipped = first_adam_moment(optim.make_optimizer(10, name=name, clip_norm=2.0), grads, params)
    unclipped = first_adam_moment(optim.make_optimizer(10, name=name, clip_norm=None), grads, params)
    # Under Muon the Adam moment holds only the Adam leaves: compare their share of the gradient's norm.
    share = float(optax.tree.norm(unclipped)) / ((1 - 0.9) * grad_norm)
    assert float(optax.tree.norm(clipped)) == pytest.approx((1 - 0.9) * 2.0 * share, rel=1e-5)
    if name == "adamw":
        assert share == pytest.approx(1.0, rel=1e-6)


def test_clipping_ignores_frozen_parameters(variables):
    """A huge gradient on the frozen encoder must not shrink the head's gradient."""
    params = variables["params"]
    grads = {key: jax.tree.map(lambda p: (0.01 if key == "head" else 1e6) * jnp.ones_like(p), tree)
             for key, tree in params.items()}
    mu = first_adam_moment(optim.make_optimizer(10, clip_norm=1.0, trainable=optim.is_head), grads, params)
    head_norm = float(optax.tree.norm(grads["head"]))
    assert head_norm < 1.0
    assert float(optax.tree.norm(mu)) == pytest.approx((1 - 0.9) * head_norm, rel=1e-5)
