"""Fine-tuning modes: the frozen parts of an adapter or partial fine-tune stay bit-identical (parameters and
BatchNorm statistics) while the rest trains; the per-block outputs are the masked means and class tokens of
the encoder's stages in both layouts; the head learning rate acts on the heads only."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import toy_jets

from configs import quickstart
from jetjax import build, finetune, objectives, optim
from jetjax.steps import init_state, make_train_step
from jetjax.models.layers import LORA_TARGETS
from jetjax.models.layout import plan_layout
from jetjax.models.part import ParT

TINY = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=2, num_cls_layers=1,
            dropout=0.1, attn_dropout=0.1, activation_dropout=0.1, head="mlp", head_hidden=8)


def config(method, unfreeze_blocks=1, **finetune_settings):
    c = quickstart.get_config()
    c.mode = "finetune"
    c.model.update(TINY)
    c.finetune.update(dict(method=method, unfreeze_blocks=unfreeze_blocks, **finetune_settings))
    return c


def flat(tree):
    return {"/".join(optim.path_names(p)): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def train_a_few_steps(c, steps=2):
    """(state before, state after) of `steps` engine train steps of the run `c`, one encoder leaf set to -0.0."""
    model = build.build_model(c)
    tx = optim.make_optimizer(100, **{**c.optimizer, "learning_rate": 1e-2},
                              **finetune.optimizer_settings(c, c.model.num_layers))
    batch = toy_jets(batch=8, slots=16, lengths=None, num_classes=3)
    state = init_state(model, tx, batch, jax.random.key(0))
    bias = state.params["encoder"]["embed"]["dense_0"]["bias"]
    state = state.replace(params={**state.params, "encoder": {**state.params["encoder"], "embed": {
        **state.params["encoder"]["embed"], "dense_0": {**state.params["encoder"]["embed"]["dense_0"],
                                                         "bias": bias.at[0].set(-0.0)}}}})
    before = jax.device_get((state.params, state.batch_stats))
    step = make_train_step(model, tx)
    for _ in range(steps):
        state, metrics = step(state, batch, None)
    assert np.isfinite(float(metrics["loss"]))
    return before, jax.device_get((state.params, state.batch_stats))


def assert_frozen_and_trained(before, after, is_frozen):
    """Every leaf for which `is_frozen(path)` holds is bit-identical (the -0.0 bias keeps its sign); every
    other parameter leaf changed."""
    (params0, stats0), (params1, stats1) = before, after
    p0, p1 = flat(params0), flat(params1)
    frozen = [k for k in p0 if is_frozen(k)]
    trained = [k for k in p0 if not is_frozen(k) and "key/bias" not in k]  # key bias: zero gradient (softmax)
    assert frozen and trained
    for k in frozen:
        assert p0[k].tobytes() == p1[k].tobytes(), k
    assert np.signbit(p1["encoder/embed/dense_0/bias"][0])
    changed = [k for k in trained if not np.array_equal(p0[k], p1[k])]
    assert changed == trained
    s0, s1 = flat(stats0), flat(stats1)
    for k in s0:
        if is_frozen(k):
            assert s0[k].tobytes() == s1[k].tobytes(), k
    return s0, s1


def test_adapter_leaves_the_encoder_bit_identical_and_trains_the_mix():
    before, after = train_a_few_steps(config("adapter"))
    s0, s1 = assert_frozen_and_trained(before, after, lambda k: k.startswith("encoder/"))
    assert s0 and set(s0) == set(s1)
    assert "adapter/mix_logits" in flat(after[0]) and "encoder/head/out/kernel" not in flat(after[0])


def test_last_k_freezes_the_embeddings_and_earlier_blocks_only():
    before, after = train_a_few_steps(config("last_k", unfreeze_blocks=1))
    frozen = ("encoder/embed/", "encoder/pair_embed/", "encoder/blocks_0/")
    assert_frozen_and_trained(before, after, lambda k: k.startswith(frozen))


def test_lora_freezes_every_pretrained_weight_and_trains_the_factors_and_head():
    # 3 steps: the first at the warm-up's zero rate; A's gradient is zero until B has moved off zero
    before, after = train_a_few_steps(config("lora", lora_rank=2, lora_targets=("query", "value", "fc2")), steps=3)
    assert_frozen_and_trained(before, after, lambda k: k.startswith("encoder/") and not finetune.is_lora(k)
                              and not k.startswith("encoder/head/"))
    factors = [k for k in flat(after[0]) if finetune.is_lora(k)]
    assert len(factors) == 2 * 3 * (TINY["num_layers"] + TINY["num_cls_layers"])  # A and B, 3 targets, 3 blocks
    assert "encoder/blocks_0/ffn/fc2_lora_b" in factors and not any("key_lora" in k for k in factors)


def test_merged_lora_is_the_same_model_without_lora():
    """Folding the updates into the weights (what export writes) gives the LoRA model's outputs, and the LoRA
    model with its B factors at zero (its initialisation) is the plain model."""
    batch = toy_jets(batch=6, slots=16, lengths=None, num_classes=3)
    args = (batch["features"], batch["vectors"], batch["mask"])
    lora = ParT(num_classes=3, **TINY, lora_rank=2, lora_alpha=4.0, lora_targets=LORA_TARGETS)
    plain = lora.clone(lora_rank=0)
    variables = lora.init(jax.random.key(0), *args)
    rng = np.random.default_rng(0)
    noisy = jax.tree_util.tree_map_with_path(
        lambda path, x: x + rng.normal(size=x.shape).astype(x.dtype) * (0.3 if finetune.is_lora(str(path[-1].key))
                                                                         else 0.0), variables)
    merged = {**noisy, "params": finetune.merged_lora(jax.device_get(noisy["params"]), 2.0)}
    want = lora.apply(noisy, *args)["logits"]
    assert float(jnp.abs(want - lora.apply(variables, *args)["logits"]).max()) > 1e-3  # the factors matter
    assert float(jnp.abs(plain.apply(merged, *args)["logits"] - want).max()) <= 1e-5
    assert jax.tree.structure(merged["params"]) == jax.tree.structure(plain.init(jax.random.key(0), *args)["params"])
    fresh = {**variables, "params": finetune.without_lora(variables["params"])}
    assert float(jnp.abs(plain.apply(fresh, *args)["logits"] - lora.apply(variables, *args)["logits"]).max()) == 0.0


def test_block_outputs_are_masked_means_and_class_tokens_in_both_layouts():
    encoder = ParT(num_classes=None, **TINY)
    batch = toy_jets(batch=6, slots=32, lengths=(32, 20, 9, 3, 1, 17))
    args = (batch["features"], batch["vectors"], batch["mask"])
    variables = jax.jit(encoder.init)(jax.random.key(0), *args)
    out, stages = jax.jit(lambda v, *a: encoder.apply(v, *a, block_outputs=True, mutable=["intermediates"]))(
        variables, *args)
    stages = stages["intermediates"]
    mask = np.asarray(batch["mask"])
    for i in range(TINY["num_layers"]):
        tokens = np.asarray(stages[f"block_{i}"][0])
        for b in range(len(mask)):
            np.testing.assert_allclose(out["blocks"][b, i], tokens[b][mask[b]].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["blocks"][:, -1], stages["cls_block_0"][0][:, 0])
    plan = plan_layout(mask.sum(1), 32, groups=2, slot_multiple=8)
    packed = jax.jit(lambda v, *a: encoder.apply(v, *a, plan=plan, block_outputs=True))(variables, *args)
    np.testing.assert_allclose(packed["blocks"], out["blocks"], rtol=1e-4, atol=1e-5)


def test_frozen_encoder_passes_no_gradient():
    encoder = ParT(num_classes=None, **TINY)
    model = finetune.Adapted(encoder, 3)
    batch = toy_jets(batch=4, slots=32, num_classes=3, lengths=(32, 9, 3, 1))
    variables = jax.jit(model.init)(jax.random.key(0), batch, jax.random.key(1))

    def loss(params):
        return model.apply({**variables, "params": params}, batch, jax.random.key(1), train=True,
                           rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"])[0][0]

    grads = flat(jax.jit(jax.grad(loss))(variables["params"]))
    assert all(not g.any() for k, g in grads.items() if k.startswith("encoder/"))
    assert any(g.any() for k, g in grads.items() if k.startswith("adapter/"))


def test_head_learning_rate_acts_on_the_heads_only():
    params = {"encoder": {"blocks_0": {"w": jnp.ones((3, 2))}, "head": {"out": {"kernel": jnp.ones((2, 2))}}},
              "adapter": {"mix_logits": jnp.zeros(3)}}
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5) + jnp.arange(p.size).reshape(p.shape), params)
    tx = optim.make_optimizer(10, learning_rate=1e-3, head_learning_rate=5e-2, clip_norm=None, schedule="constant")
    updates, _ = tx.update(grads, tx.init(params), params)

    def alone(lr, tree, tree_grads):
        """AdamW with rate `lr` on `tree` by itself (an independent reference)."""
        adamw = optax.adamw(lr, weight_decay=0.01, mask=optim.weight_decay_mask)
        return adamw.update(tree_grads, adamw.init(tree), tree)[0]

    heads = alone(5e-2, {"head": params["encoder"]["head"], "adapter": params["adapter"]},
                  {"head": grads["encoder"]["head"], "adapter": grads["adapter"]})
    body = alone(1e-3, params["encoder"]["blocks_0"], grads["encoder"]["blocks_0"])
    np.testing.assert_allclose(updates["encoder"]["head"]["out"]["kernel"], heads["head"]["out"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(updates["adapter"]["mix_logits"], heads["adapter"]["mix_logits"], rtol=1e-6)
    np.testing.assert_allclose(updates["encoder"]["blocks_0"]["w"], body["w"], rtol=1e-6)
    at_body_rate = alone(1e-3, params["adapter"], grads["adapter"])
    assert not np.allclose(heads["adapter"]["mix_logits"], at_body_rate["mix_logits"])


def test_settings_errors_name_the_key():
    with pytest.raises(ValueError, match="finetune.method"):
        build.build_model(config("prompt"))
    with pytest.raises(ValueError, match="lora_targets"):
        build.build_model(config("lora", lora_targets=("query", "gate")))
    supervised = config("adapter")
    supervised.mode = "supervised"
    with pytest.raises(ValueError, match="applies to mode 'finetune'"):
        build.build_model(supervised)
    with pytest.raises(ValueError, match="unfreeze_blocks=3"):
        build.build_model(config("last_k", unfreeze_blocks=3))
    assert isinstance(build.build_model(config("last_k")), objectives.Supervised)
