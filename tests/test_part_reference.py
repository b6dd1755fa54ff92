"""The Flax ParT reproduces the PyTorch reference (weaver-core v0.4.17) stage by stage.

The stages are compared op by op (no jit), as PyTorch runs, and the pair bias and logits under jit too: the
reference's ln m^2 of a massless particle with itself is float32 rounding noise of E^2 - |p|^2, which jetjax
rounds as PyTorch does under jit as well (physics.mass2 keeps XLA from fusing multiply-adds there).

float32 comparisons hold at full float32 matmul precision, which conftest.py sets for the whole suite on
every backend (GPUs default to TF32: `test_tf32_matmuls_would_miss_the_float32_tolerance`). bfloat16
compute is checked at its own documented tolerance (README "Compute dtype").
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Literal

from conftest import shared_path
from jetjax.models.convert import check_compatible, convert_state_dict, load_state_dict
from jetjax.models.part import ParT

TOL = 1e-4
BF16_TOL = 0.05  # bfloat16 compute: max |difference| / max |reference value| of the logits and representation


def reference_inputs():
    """(reference arrays, model inputs (features, vectors, mask) in jetjax's layout, converted variables)."""
    path = shared_path("reference", "part_weaver_v0417_kin.npz")
    with np.load(path) as data:
        ref = {k: data[k] for k in data.files if not k.startswith("param/")}
    features = np.transpose(ref["input/features"], (0, 2, 1))
    vectors = np.transpose(ref["input/vectors"], (0, 2, 1))
    mask = ref["input/mask"][:, 0] > 0
    return ref, (features, vectors, mask), convert_state_dict(load_state_dict(path, prefix="param/"))


@pytest.fixture(scope="module")
def reference():
    ref, inputs, variables = reference_inputs()
    model = ParT(num_classes=10)
    check_compatible(variables, jax.eval_shape(model.init, jax.random.key(0), *inputs))
    out, state = model.apply(variables, *inputs, mutable=["intermediates"])
    inter = jax.tree.map(np.asarray, state["intermediates"])
    return ref, inputs[2], jax.tree.map(np.asarray, out), {k: v[0] for k, v in inter.items()}


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)))


def real_pairs(mask, ref):
    """Where both particles of a pair are real, in the shape of the reference's pair bias."""
    return np.broadcast_to(mask[:, None, :, None] & mask[:, None, None, :], ref["act/pair_embed"].shape)


def test_embedding_matches_reference(reference):
    ref, mask, _, inter = reference
    want = np.transpose(ref["act/embed"], (1, 0, 2))
    assert max_err(inter["embedding"][mask], want[mask]) <= TOL


def test_pair_bias_matches_reference(reference):
    ref, mask, _, inter = reference
    pairs = real_pairs(mask, ref)
    assert max_err(inter["pair_bias"][pairs], ref["act/pair_embed"][pairs]) <= TOL


@pytest.mark.parametrize("i", range(8))
def test_particle_block_matches_reference(reference, i):
    ref, mask, _, inter = reference
    want = np.transpose(ref[f"act/block{i}"], (1, 0, 2))
    assert max_err(inter[f"block_{i}"][mask], want[mask]) <= TOL


@pytest.mark.parametrize("i", range(2))
def test_class_block_matches_reference(reference, i):
    ref, _, _, inter = reference
    assert max_err(inter[f"cls_block_{i}"][:, 0], ref[f"act/cls_block{i}"][0]) <= TOL


def test_representation_and_logits_match_reference(reference):
    ref, _, out, _ = reference
    assert max_err(out["z"], ref["act/norm"][0]) <= TOL
    assert max_err(out["logits"], ref["output/logits"]) <= TOL


def test_converter_rejects_foreign_tensor():
    state = load_state_dict(shared_path("reference", "part_weaver_v0417_kin.npz"), prefix="param/")
    state["blocks.0.attn.extra"] = np.zeros(3)
    with pytest.raises(ValueError, match="blocks.0.attn.extra"):
        convert_state_dict(state)
    del state["blocks.0.attn.extra"], state["norm.bias"]
    with pytest.raises(ValueError, match="norm.bias"):
        convert_state_dict(state)


def test_jitted_model_matches_reference_on_real_jets_with_photons(xla_optimisations):
    """Under jit too, with XLA's usual optimisations: fused multiply-adds would round the reference's ln m^2 of
    massless pairs differently (physics.mass2); under jax 0.12.1 they moved this pair bias by 0.7."""
    ref, inputs, variables = reference_inputs()
    out, state = jax.jit(lambda v: ParT(num_classes=10).apply(v, *inputs, mutable=["intermediates"]))(variables)
    pairs = real_pairs(inputs[2], ref)
    assert max_err(state["intermediates"]["pair_bias"][0][pairs], ref["act/pair_embed"][pairs]) <= TOL
    assert max_err(out["logits"], ref["output/logits"]) <= TOL


def test_bfloat16_compute_matches_reference_at_its_tolerance():
    """The model.dtype=bfloat16 encoder (the default on GPU and TPU) against the float32 reference: within
    BF16_TOL of the values' scale, and really in bfloat16 (further off than float32 rounding)."""
    ref, inputs, variables = reference_inputs()
    out = ParT(num_classes=10, dtype=jnp.bfloat16).apply(variables, *inputs)
    for ours, want in ((out["z"], ref["act/norm"][0]), (out["logits"], ref["output/logits"])):
        relative = max_err(ours, want) / np.abs(want).max()
        assert 1e-3 < relative <= BF16_TOL


def tf32(x):
    """float32 `x` rounded to TF32 (10 mantissa bits, to nearest even), as NVIDIA tensor cores read it."""
    if x.dtype != jnp.float32:
        return x
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & jnp.uint32(0xFFFFE000)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def eval_rounding_matmuls(jaxpr, consts, args, rounding):
    """Evaluates `jaxpr` op by op with `rounding` applied to every matrix product's operands: `tf32` gives
    JAX's default float32 matmul precision on NVIDIA GPUs, which the CPU cannot be asked for (it ignores
    matmul precision settings)."""
    env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, Literal) else env[v]
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
        if eqn.primitive.name == "dot_general":
            inputs = [rounding(x) for x in inputs]
        if hasattr(inner, "jaxpr"):  # jit and custom_jvp calls: into their own equations
            outputs = eval_rounding_matmuls(inner.jaxpr, inner.consts, inputs, rounding)
        else:
            outputs = eqn.primitive.bind(*inputs, **eqn.params)
            outputs = outputs if eqn.primitive.multiple_results else [outputs]
        env.update(zip(eqn.outvars, outputs))
    return [read(v) for v in jaxpr.outvars]


def test_tf32_matmuls_would_miss_the_float32_tolerance():
    """Why the suite forces full float32 matmuls: with TF32 operands (a GPU's default) the logits are more
    than 10 x TOL off the reference; the same evaluation with float32 operands is within TOL."""
    ref, inputs, variables = reference_inputs()
    model = ParT(num_classes=10)
    closed = jax.make_jaxpr(lambda v: model.apply(v, *inputs)["logits"])(variables)
    logits = lambda rounding: eval_rounding_matmuls(closed.jaxpr, closed.consts, jax.tree.leaves(variables),
                                                    rounding)[0]
    assert max_err(logits(lambda x: x), ref["output/logits"]) <= TOL
    assert max_err(logits(tf32), ref["output/logits"]) > 10 * TOL
