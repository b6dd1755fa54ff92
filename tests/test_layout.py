"""Packed layouts (models/layout.py): the encoder on real particles and pairs only, attention on groups of
jets sorted by multiplicity, gives what it gives on every slot (padding invariance), in eval and training
mode, for gradients and BatchNorm statistics; plans hold their batches; JetCLR's split views fit the plan."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jetjax import augment
from jetjax.models.layout import LayoutPlan, bounded_plans, bounded_slots, fits, plan_layout, slot_bucket
from jetjax.models.part import ParT

TINY = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=2, num_cls_layers=1,
            num_classes=3, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0)


def massive_jets(seed, batch=8, slots=24):
    """Jets of massive particles (m = 2 GeV: no float32 noise in ln m^2 of a particle with itself, which the
    compiler may round differently in two programs), with holes in the mask (as MPM masking makes them) and
    one empty jet."""
    rng = np.random.default_rng(seed)
    p3 = rng.normal(size=(batch, slots, 3)).astype(np.float32) * 20
    vectors = np.concatenate([p3, np.sqrt((p3 ** 2).sum(-1, keepdims=True) + 4.0)], -1).astype(np.float32)
    features = rng.normal(size=(batch, slots, 7)).astype(np.float32)
    mask = np.arange(slots)[None] < rng.integers(1, slots + 1, batch)[:, None]
    mask[:, 3] &= rng.random(batch) < 0.5
    mask[0] = False
    return features, vectors, mask


@pytest.fixture(scope="module")
def model_and_variables():
    f, v, m = massive_jets(0)
    model = ParT(**TINY)
    variables = model.init(jax.random.key(0), f, v, m)
    _, stats = model.apply(variables, f, v, m, train=True, mutable=["batch_stats"])
    return model, {**variables, **stats}


PLANS = {"one group": dict(groups=1), "three groups": dict(groups=3), "two shards": dict(shards=2, groups=2),
         "a group per jet": dict(groups=8)}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("plan_args", list(PLANS.values()), ids=list(PLANS))
def test_packed_layout_equals_every_slot(model_and_variables, plan_args, train):
    model, variables = model_and_variables
    f, v, m = massive_jets(1)
    plan = plan_layout(m.sum(1), m.shape[1], slot_multiple=8, **plan_args)
    run = jax.jit(lambda f, v, m, plan: model.apply(variables, f, v, m, train=train, plan=plan,
                                                     mutable=["batch_stats"]), static_argnums=3)
    (dense, dense_stats), (packed, packed_stats) = run(f, v, m, None), run(f, v, m, plan)
    np.testing.assert_allclose(packed["logits"], dense["logits"], atol=2e-5)
    np.testing.assert_allclose(packed["z"], dense["z"], atol=2e-5)
    np.testing.assert_allclose(np.asarray(packed["tokens"])[m], np.asarray(dense["tokens"])[m], atol=1e-4)
    assert np.all(np.asarray(packed["tokens"])[~m] == 0)
    for a, b in zip(jax.tree.leaves(dense_stats), jax.tree.leaves(packed_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_packed_layout_has_the_gradients_of_every_slot(model_and_variables):
    model, variables = model_and_variables
    f, v, m = massive_jets(2)
    plan = plan_layout(m.sum(1), m.shape[1], groups=3, slot_multiple=8)

    def loss(params, plan):
        out, _ = model.apply({**variables, "params": params}, f, v, m, train=True, plan=plan, mutable=["batch_stats"])
        return jnp.sum(out["logits"] ** 2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    dense, packed = grad(variables["params"], None), grad(variables["params"], plan)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(dense))
    for a, b in zip(jax.tree.leaves(dense), jax.tree.leaves(packed)):
        np.testing.assert_allclose(a, b, atol=1e-5 * scale)


def test_plan_is_its_batch_exactly():
    rng = np.random.default_rng(3)
    lengths = rng.integers(5, 120, 64)
    plan = plan_layout(lengths, 128, groups=4, slot_multiple=16)
    assert plan.shards == 1 and sum(j for j, _ in plan.groups) == 64
    ordered = np.sort(lengths)
    for (jets, slots), start in zip(plan.groups, (0, 16, 32, 48)):
        assert jets == 16 and slots == slot_bucket(ordered[start + 15], 16, 128) >= ordered[start + 15]
    assert plan.particles == lengths.sum() and plan.pairs == (lengths * (lengths + 1) // 2).sum()  # no spare rows
    assert plan_layout(rng.permutation(lengths), 128, groups=4, slot_multiple=16) == plan  # order does not matter
    halves = plan_layout(lengths, 128, shards=2, groups=4, slot_multiple=16)  # capacities of the fuller shard
    assert halves.particles == max(lengths[:32].sum(), lengths[32:].sum())
    with pytest.raises(ValueError, match="2 equal shards"):
        plan_layout(lengths[:63], 128, shards=2)


def realistic_lengths(rng, batch, slots=128):
    """Multiplicities like Pythia jets': mean ~60 with a tail to the slot count."""
    return np.clip(rng.gamma(6.0, 10.0, batch).astype(int), 1, slots)


def test_fits_is_exactly_what_a_plan_holds():
    rng = np.random.default_rng(4)
    lengths = realistic_lengths(rng, 64)
    plan = plan_layout(lengths, 128, groups=4, slot_multiple=16)
    n_particles, n_pairs = int(lengths.sum()), int((lengths * (lengths + 1) // 2).sum())
    assert fits(plan, lengths) and fits(plan, rng.permutation(lengths))
    first_group_slots = plan.groups[0][1]
    assert first_group_slots < 128 and not fits(plan, np.full(64, first_group_slots + 1))  # the first group's slots
    assert not fits(LayoutPlan(1, plan.groups, n_particles - 1, plan.pairs), lengths)  # one particle too many
    assert not fits(LayoutPlan(1, plan.groups, plan.particles, n_pairs - 1), lengths)  # one pair too many
    assert fits(LayoutPlan(1, plan.groups, n_particles, n_pairs), lengths)  # exactly full


def test_bounded_plans_are_few_nested_and_hold_any_batch():
    rng = np.random.default_rng(6)
    sample = [realistic_lengths(rng, 64) for _ in range(16)]
    plans = bounded_plans(sample, 128, 1, 4, 16, count=4)
    assert 1 <= len(plans) <= 4
    assert plans[-1].groups == ((16, 128),) * 4 and plans[-1].particles == 64 * 128  # any batch of 64 jets
    assert fits(plans[-1], np.full(64, 128))
    assert sum(fits(plans[0], lengths) for lengths in sample) >= 8  # the lightest half of the sample
    for small, large in zip(plans, plans[1:]):  # nested: whatever one holds, the next holds
        assert all(a <= b for (_, a), (_, b) in zip(small.groups, large.groups))
        assert small.particles <= large.particles and small.pairs <= large.pairs
    assert all(fits(plans[-2], lengths) for lengths in sample)  # the whole sample before the dense plan
    unseen = [realistic_lengths(rng, 64) for _ in range(200)]
    assert all(any(fits(plan, lengths) for plan in plans) for lengths in unseen)
    # the plan before the dense one (resampled from the sample's jets) holds nearly every unseen batch
    assert sum(fits(plans[-2], lengths) for lengths in unseen) >= 196
    assert plans == bounded_plans(sample, 128, 1, 4, 16, count=4)  # every process settles the same plans


def test_bounded_slots_are_few_and_end_at_the_slot_count():
    rng = np.random.default_rng(7)
    sample = [np.clip(rng.gamma(6.0, 5.0, 16).astype(int), 1, 128) for _ in range(16)]
    slots = bounded_slots(sample, 128, 16, count=4)
    assert len(slots) <= 4 and slots[-1] == 128 and slots == sorted(slots)
    assert all(s % 16 == 0 for s in slots)
    assert sum(lengths.max() <= slots[0] for lengths in sample) >= 8


def test_jetclr_view_lengths_bound_the_views_and_fit_a_smaller_bucket():
    """The host-side multiplicities of JetCLR's views (what the engine plans with) are exactly those of the
    views made in-graph, also when the batch is cut to the bucket of its split jets rather than P slots."""
    rng = np.random.default_rng(5)
    slots, capacity = 64, 128
    p3 = rng.normal(size=(6, slots, 3)).astype(np.float32) * 20
    vectors = np.concatenate([p3, np.sqrt((p3 ** 2).sum(-1, keepdims=True) + 1.0)], -1)
    lengths = np.array([1, 3, 8, 12, 16, 9])
    mask = np.arange(slots)[None] < lengths[:, None]
    jet = (vectors * mask[..., None]).sum(1)
    batch = {"vectors": jnp.asarray(vectors * mask[..., None]), "mask": jnp.asarray(mask), "jet": jnp.asarray(jet),
             "features": jnp.zeros((6, slots, 7)), "pid": jnp.zeros((6, slots), jnp.int32)}
    first, second = augment.jetclr_views(jax.random.key(0), batch, capacity=capacity)
    expected = augment.jetclr_lengths(lengths, capacity)
    np.testing.assert_array_equal(np.asarray(first["mask"]).sum(1), expected[0])
    np.testing.assert_array_equal(np.asarray(second["mask"]).sum(1), expected[1])
    np.testing.assert_array_equal(expected[1], 4 * lengths)  # 4n <= 64 slots: the bucket holds every daughter
