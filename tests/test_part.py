"""ParT encoder: parameter counts, symmetries (permutation, padding) and the study's variants."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from jetjax.models.part import ParT

TINY = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=2, num_cls_layers=1,
            num_classes=3)
NO_RANDOMNESS = dict(dropout=0.0, attn_dropout=0.0, activation_dropout=0.0, drop_path=0.0)


def count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def jets(seed, batch=6, slots=24, channels=7, lengths=None):
    """Random physical jets: massive particles, features, mask with `lengths` real particles per jet."""
    rng = np.random.default_rng(seed)
    p3 = rng.normal(size=(batch, slots, 3)) * [20.0, 20.0, 60.0]
    energy = np.sqrt((p3 ** 2).sum(-1, keepdims=True) + rng.uniform(0.1, 1.0, (batch, slots, 1)))
    lengths = rng.integers(1, slots + 1, batch) if lengths is None else np.asarray(lengths)
    mask = np.arange(slots)[None] < lengths[:, None]
    features = rng.normal(size=(batch, slots, channels)) * mask[..., None]
    vectors = np.concatenate([p3, energy], -1) * mask[..., None]
    return features.astype(np.float32), vectors.astype(np.float32), mask


@pytest.mark.parametrize("channels,expected", [(7, 2_142_166), (13, 2_142_958), (17, 2_143_486)])
def test_parameter_count_equals_reference(channels, expected):
    f, v, m = jets(0, batch=2, slots=8, channels=channels)
    shapes = jax.eval_shape(ParT().init, jax.random.key(0), f, v, m)
    assert count(shapes["params"]) == expected


@pytest.mark.parametrize("pair_mass", ["reference", "stable"])
def test_permutation_invariance(pair_mass):
    f, v, m = jets(1)
    model = ParT(**TINY, pair_mass=pair_mass)
    variables = model.init(jax.random.key(0), f, v, m)
    rng = np.random.default_rng(2)
    perm = np.stack([rng.permutation(f.shape[1]) for _ in range(f.shape[0])])
    take = lambda x: np.take_along_axis(x, perm.reshape(perm.shape + (1,) * (x.ndim - 2)), axis=1)
    a = model.apply(variables, f, v, m)
    b = model.apply(variables, take(f), take(v), take(m))
    np.testing.assert_allclose(a["z"], b["z"], atol=2e-5)
    np.testing.assert_allclose(a["logits"], b["logits"], atol=2e-5)


def pad_with_garbage(x, extra, rng):
    garbage = rng.normal(size=(x.shape[0], extra) + x.shape[2:]) * 1e3
    garbage.flat[::7] = np.nan
    garbage.flat[::11] = np.inf
    return np.concatenate([x, garbage.astype(x.dtype)], axis=1)


@pytest.mark.parametrize("pair_mass", ["reference", "stable"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_padding_invariance(train, pair_mass):
    """Extra slots full of garbage (huge values, NaN, inf) change no output and no BatchNorm statistic."""
    f, v, m = jets(3, slots=24)
    rng = np.random.default_rng(4)
    f2, v2 = pad_with_garbage(f, 8, rng), pad_with_garbage(v, 8, rng)
    m2 = np.concatenate([m, np.zeros((m.shape[0], 8), bool)], axis=1)
    model = ParT(**TINY, **NO_RANDOMNESS, pair_mass=pair_mass)
    variables = model.init(jax.random.key(0), f, v, m)
    # move the running statistics away from their initial values so eval mode exercises them
    _, stats = model.apply(variables, f, v, m, train=True, mutable=["batch_stats"])
    variables = {**variables, **stats}
    a, sa = model.apply(variables, f, v, m, train=train, mutable=["batch_stats"])
    b, sb = model.apply(variables, f2, v2, m2, train=train, mutable=["batch_stats"])
    for key in ("z", "logits"):
        assert np.all(np.isfinite(b[key]))
        np.testing.assert_allclose(a[key], b[key], atol=2e-5)
    np.testing.assert_allclose(a["tokens"][m], b["tokens"][:, :24][m], atol=2e-5)
    for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_training_updates_running_statistics_from_real_particles_only():
    f, v, m = jets(5, slots=16)
    model = ParT(**TINY, **NO_RANDOMNESS)
    variables = model.init(jax.random.key(0), f, v, m)
    _, stats = model.apply(variables, f, v, m, train=True, mutable=["batch_stats"])
    real = f[m].astype(np.float64)
    running = stats["batch_stats"]["embed"]["input_bn"]
    np.testing.assert_allclose(running["mean"], 0.1 * real.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(running["var"], 0.9 + 0.1 * real.var(0, ddof=1), rtol=1e-4)


def test_eval_pair_embedding_with_folded_batch_norms_is_the_bn_dense_bn_gelu_mlp():
    """Eval mode folds every BatchNorm of the pair MLP into its Dense layer: the same function as the layers one
    by one (float64 numpy here), with non-trivial running statistics and BatchNorm parameters."""
    from jetjax import physics
    from jetjax.models.layout import DenseLayout

    f, v, m = jets(7, slots=12)
    model = ParT(**TINY, **NO_RANDOMNESS)
    variables = model.init(jax.random.key(0), f, v, m)
    rng = np.random.default_rng(1)
    pair = jax.tree.map(np.asarray, {k: variables[k]["pair_embed"] for k in ("params", "batch_stats")})
    for name in pair["batch_stats"]:
        shape = pair["batch_stats"][name]["mean"].shape
        pair["batch_stats"][name] = {"mean": rng.normal(0, 2, shape), "var": rng.uniform(0.1, 5, shape)}
        pair["params"][name] = {"scale": rng.uniform(0.5, 2, shape), "bias": rng.normal(0, 1, shape)}
    layers = [name for name in pair["params"] if name.startswith("dense_")]  # pair_embed_dims, then the heads
    assert len(layers) == 3
    for name in layers:
        pair["params"][name]["bias"] = rng.normal(0, 0.5, pair["params"][name]["bias"].shape)
    variables = {k: {**variables[k], "pair_embed": pair[k]} for k in ("params", "batch_stats")}
    _, inter = model.apply(variables, f, v, m, mutable=["intermediates"])

    def batch_norm(x, name):
        stats, params = pair["batch_stats"][name], pair["params"][name]
        return (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]

    layout = DenseLayout(jnp.asarray(m))
    (v_i, kin_i), (v_j, kin_j) = zip(*(layout.pair_rows(x) for x in (v, physics.pair_kinematics(jnp.asarray(v)))))
    x = batch_norm(np.asarray(physics.pair_features(v_i, v_j, kin_i, kin_j), np.float64), "input_bn")
    for n in range(len(layers)):
        dense = pair["params"][f"dense_{n}"]
        x = batch_norm(x @ dense["kernel"] + dense["bias"], f"bn_{n}")
        x = 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))
    expected = np.asarray(layout.pair_bias(jnp.asarray(x, jnp.float32))[0])  # one group: (B, H, S, S)
    got = np.asarray(inter["intermediates"]["pair_bias"][0])
    real = np.broadcast_to((m[:, None, :, None] & m[:, None, None, :]), got.shape)
    np.testing.assert_allclose(got[real], expected[real], rtol=1e-5, atol=1e-5)


VARIANTS = {
    "geglu": dict(ffn="geglu", ffn_ratio=6.0),
    "drop_path": dict(drop_path=0.2),
    "layer_scale": dict(layer_scale_init=1e-5),
    "mlp_head": dict(head="mlp", head_hidden=32),
    "bfloat16": dict(dtype=jnp.bfloat16),
    "ours": dict(ffn="geglu", ffn_ratio=6.0, drop_path=0.1, layer_scale_init=0.1, head="mlp", head_hidden=32),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains_with_finite_gradients(name):
    f, v, m = jets(6)
    labels = np.arange(f.shape[0]) % 3
    model = ParT(**TINY, **VARIANTS[name])
    variables = model.init(jax.random.key(0), f, v, m)

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, f, v, m, train=True,
                             rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])
        logp = jax.nn.log_softmax(out["logits"])
        return -jnp.mean(logp[jnp.arange(len(labels)), labels])

    value, grads = jax.jit(jax.value_and_grad(loss))(variables["params"])
    assert np.isfinite(value)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert sum(float(jnp.sum(jnp.abs(g))) for g in leaves) > 0


def test_geglu_adds_gate_matrices_and_layer_scale_adds_vectors():
    f, v, m = jets(7)
    base = count(ParT(**TINY).init(jax.random.key(0), f, v, m)["params"])
    blocks = TINY["num_layers"] + TINY["num_cls_layers"]
    e = TINY["embed_dims"][-1]
    geglu = count(ParT(**TINY, ffn="geglu").init(jax.random.key(0), f, v, m)["params"])
    assert geglu - base == blocks * (e * 4 * e + 4 * e)
    scaled = count(ParT(**TINY, layer_scale_init=0.1).init(jax.random.key(0), f, v, m)["params"])
    assert scaled - base == blocks * 2 * e


def test_drop_path_is_identity_in_eval_and_random_in_training():
    f, v, m = jets(8)
    plain, dropped = ParT(**TINY, **NO_RANDOMNESS), ParT(**TINY, **{**NO_RANDOMNESS, "drop_path": 0.5})
    variables = plain.init(jax.random.key(0), f, v, m)
    np.testing.assert_array_equal(plain.apply(variables, f, v, m)["z"], dropped.apply(variables, f, v, m)["z"])
    run = lambda key: dropped.apply(variables, f, v, m, train=True, rngs={"dropout": key},
                                    mutable=["batch_stats"])[0]["z"]
    assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))


def test_bfloat16_close_to_float32():
    f, v, m = jets(9)
    model = ParT(**TINY)
    variables = model.init(jax.random.key(0), f, v, m)
    a = model.apply(variables, f, v, m)["logits"]
    b = ParT(**TINY, dtype=jnp.bfloat16).apply(variables, f, v, m)["logits"]
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(a, b, atol=0.1)


def test_bad_config_names_the_key():
    f, v, m = jets(10)
    with pytest.raises(ValueError, match="model.ffn"):
        ParT(**TINY, ffn="reglu").init(jax.random.key(0), f, v, m)
    with pytest.raises(ValueError, match="model.norm"):
        ParT(**TINY, norm="batch").init(jax.random.key(0), f, v, m)
    with pytest.raises(ValueError, match="model.attn_gate"):
        ParT(**TINY, attn_gate="channelwise").init(jax.random.key(0), f, v, m)
    with pytest.raises(ValueError, match="model.head"):
        ParT(**TINY, head="deep").init(jax.random.key(0), f, v, m)
    with pytest.raises(ValueError, match="model.pair_mass"):
        ParT(**TINY, pair_mass="exact").init(jax.random.key(0), f, v, m)


def test_dropout_keeps_each_element_with_probability_one_minus_rate_independently():
    from jetjax.models.layers import Dropout

    x = jnp.ones((32, 64, 128))
    drop = Dropout(0.1)
    run = lambda seed: np.asarray(drop.apply({}, x, False, rngs={"dropout": jax.random.key(seed)}))
    a, b = run(0), run(1)
    kept, n = a > 0, a.size
    sigma = np.sqrt(0.09 / n)
    assert abs(kept.mean() - 0.9) < 4 * sigma
    np.testing.assert_allclose(a[kept], 1 / 0.9, rtol=1e-6)  # inverted dropout: the expectation is kept
    np.testing.assert_array_equal(run(0), a)  # a function of the key
    assert abs((kept == (b > 0)).mean() - 0.82) < 8 * sigma  # another key: an independent mask (0.9^2 + 0.1^2)
    for axis in range(3):  # neighbours along every axis are independent too
        both = np.moveaxis(kept, axis, 0)
        assert abs((both[1:] & both[:-1]).mean() - 0.81) < 8 * sigma
    np.testing.assert_array_equal(drop.apply({}, x, True), x)
