"""The Flax ParT reproduces the PyTorch reference (weaver-core v0.4.17) stage by stage.

The comparison runs op by op (no jit), as PyTorch does: the reference's ln m^2 of a massless particle
with itself is float32 rounding noise of E^2 - |p|^2, and under jit XLA fuses multiply-adds into FMAs,
which rounds that noise differently. `test_jit_equals_op_by_op` checks that jit changes nothing else.
"""
import jax
import numpy as np
import pytest

from conftest import shared_path
from jetjax.models.convert import check_compatible, convert_state_dict, load_state_dict
from jetjax.models.part import ParT

TOL = 1e-4


@pytest.fixture(scope="module")
def reference():
    path = shared_path("reference", "part_weaver_v0417_kin.npz")
    with np.load(path) as data:
        ref = {k: data[k] for k in data.files if not k.startswith("param/")}
    features = np.transpose(ref["input/features"], (0, 2, 1))
    vectors = np.transpose(ref["input/vectors"], (0, 2, 1))
    mask = ref["input/mask"][:, 0] > 0
    model = ParT(num_classes=10)
    variables = convert_state_dict(load_state_dict(path, prefix="param/"))
    check_compatible(variables, jax.eval_shape(model.init, jax.random.key(0), features, vectors, mask))
    out, state = model.apply(variables, features, vectors, mask, mutable=["intermediates"])
    inter = jax.tree.map(np.asarray, state["intermediates"])
    return ref, mask, jax.tree.map(np.asarray, out), {k: v[0] for k, v in inter.items()}


def max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)))


def test_embedding_matches_reference(reference):
    ref, mask, _, inter = reference
    want = np.transpose(ref["act/embed"], (1, 0, 2))
    assert max_err(inter["embedding"][mask], want[mask]) <= TOL


def test_pair_bias_matches_reference(reference):
    ref, mask, _, inter = reference
    pairs = mask[:, None, :, None] & mask[:, None, None, :]
    pairs = np.broadcast_to(pairs, ref["act/pair_embed"].shape)
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


def test_jit_equals_op_by_op():
    """With massive particles (m^2 far from rounding noise) jit and op-by-op agree to float32 precision."""
    rng = np.random.default_rng(0)
    model = ParT(num_classes=10)
    p3 = rng.normal(size=(4, 32, 3)).astype(np.float32) * 20
    vectors = np.concatenate([p3, np.sqrt((p3 ** 2).sum(-1, keepdims=True) + 4.0)], -1).astype(np.float32)
    features = rng.normal(size=(4, 32, 7)).astype(np.float32)
    mask = np.arange(32)[None] < np.array([[32], [20], [7], [1]])
    variables = model.init(jax.random.key(1), features, vectors, mask)
    eager = model.apply(variables, features, vectors, mask)
    jitted = jax.jit(model.apply)(variables, features, vectors, mask)
    assert max_err(jitted["logits"], np.asarray(eager["logits"])) <= TOL
