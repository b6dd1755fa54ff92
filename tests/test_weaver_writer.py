"""The weaver state_dict writer (`convert.to_state_dict`): the inverse of the reader, bit for bit, in both weaver
layouts; it reproduces the reference weaver file exactly and refuses what weaver's model cannot hold.
weaver's own model on the written weights: tests/test_export.py."""
import jax
import numpy as np
import pytest
from conftest import shared_path

from jetjax.models.convert import convert_state_dict, load_state_dict, matching_part, save_state_dict, to_state_dict
from jetjax.models.part import ParT
from test_export import TINY, massive_jets

REFERENCE = ("reference", "part_weaver_v0417_kin.npz")


def reference_variables():
    return convert_state_dict(load_state_dict(shared_path(*REFERENCE), prefix="param/"))


def tiny_variables(**model):
    """Random float32 values in the variable tree of a tiny ParT (2 heads: the HeadScale permutation is not
    the identity); only the tree is initialised (no compilation)."""
    shapes = jax.eval_shape(ParT(num_classes=5, **TINY, **model).init, jax.random.key(0), *massive_jets((16, 3), 16))
    rng = np.random.default_rng(3)
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)


def assert_bit_identical(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for path, a in jax.tree_util.tree_leaves_with_path(got):
        b = np.asarray(dict(jax.tree_util.tree_leaves_with_path(want))[path])
        assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)


def test_writer_reproduces_the_reference_weaver_file():
    stored = load_state_dict(shared_path(*REFERENCE), prefix="param/")
    written = to_state_dict(reference_variables(), weaver_version="0.4")
    assert set(written) == set(stored)
    for name, tensor in stored.items():
        if name.endswith("num_batches_tracked"):  # not a jetjax variable: written as 0
            assert written[name].dtype == np.int64 and written[name] == 0
        else:
            assert written[name].dtype == tensor.dtype and np.array_equal(written[name], tensor), name


@pytest.mark.parametrize("weaver_version", ["0.4", "0.5"])
@pytest.mark.parametrize("model", ["reference", "tiny"])
def test_round_trip_is_bit_identical(model, weaver_version):
    variables = reference_variables() if model == "reference" else tiny_variables()
    num_heads = 8 if model == "reference" else TINY["num_heads"]
    state = to_state_dict(variables, weaver_version)
    assert_bit_identical(convert_state_dict(state, num_heads, weaver_version), variables)


@pytest.mark.parametrize("model", ["reference", "tiny"])
def test_matching_part_is_the_model_the_variables_fit(model):
    """Converted variables -> the ParT they came from (a 2-head model with FFN ratio 2 and a 4x one, 8 heads)."""
    variables = reference_variables() if model == "reference" else convert_state_dict(
        to_state_dict(tiny_variables(ffn_ratio=2.0)), TINY["num_heads"])
    want = ParT(num_classes=10) if model == "reference" else ParT(num_classes=5, **TINY, ffn_ratio=2.0)
    assert matching_part(variables) == want


def test_the_two_layouts_differ_only_by_the_residual_stream_order():
    """0.5 = the 0.4 tensors with every residual-stream axis permuted, HeadScale and out_proj untouched."""
    old, new = (to_state_dict(tiny_variables(), v) for v in ("0.4", "0.5"))
    embed, heads = 16, TINY["num_heads"]
    order = [(m % (embed // heads)) * heads + m // (embed // heads) for m in range(embed)]  # m = h*D + d <- d*H + h
    assert np.array_equal(new["blocks.0.c_attn"], old["blocks.0.c_attn"])
    assert np.array_equal(new["blocks.0.attn.out_proj.weight"], old["blocks.0.attn.out_proj.weight"])
    assert np.array_equal(new["blocks.0.w_resid"], old["blocks.0.w_resid"][order])
    assert np.array_equal(new["blocks.0.attn.in_proj.weight"], old["blocks.0.attn.in_proj_weight"][:, order])
    assert np.array_equal(new["cls_token"], old["cls_token"][..., order])
    assert np.array_equal(new["embed.embed.7.weight"], old["embed.embed.7.weight"][order])
    assert np.array_equal(new["fc.0.weight"], old["fc.0.weight"][:, order])
    assert np.array_equal(new["pair_embed.embed.1.weight"], old["pair_embed.embed.1.weight"])


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_saved_state_dict_reads_back(suffix, tmp_path):
    if suffix == ".pt":
        pytest.importorskip("torch", reason="writing .pt needs torch: pip install 'jetjax[compare]'")
    state = to_state_dict(tiny_variables())
    back = load_state_dict(save_state_dict(state, tmp_path / f"part{suffix}"))
    assert set(back) == set(state)
    assert all(back[k].dtype == v.dtype and np.array_equal(back[k], v) for k, v in state.items())
    pair_weight = back["pair_embed.embed.1.weight"]
    assert pair_weight.ndim == 3 and pair_weight.shape[2] == 1  # weaver's pair embedding is a Conv1d


@pytest.mark.parametrize("upgrade,leaf", [(dict(ffn="geglu"), "fc1_gate"), (dict(layer_scale_init=0.1), "layer_scale"),
                                          (dict(head="mlp"), "hidden")])
def test_study_upgrades_are_refused_by_name(upgrade, leaf):
    with pytest.raises(ValueError, match=leaf):
        to_state_dict(tiny_variables(**upgrade))


def test_unknown_layout_and_file_type_are_refused(tmp_path):
    with pytest.raises(ValueError, match="weaver_version"):
        to_state_dict(tiny_variables(), weaver_version="0.6")
    with pytest.raises(ValueError, match="weaver_version"):
        convert_state_dict({}, weaver_version="0.3")
    with pytest.raises(ValueError, match=r"\.pt"):
        save_state_dict({}, tmp_path / "part.onnx")
