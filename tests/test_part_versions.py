"""The ParT versions of weaver-core 0.5.3 (`ParticleTransformer(version=2 | 3 | 3.5)`: SwiGLU, no NormFormer
scalings, RMSNorm, no Linear biases, QK-norm, gated attention) in jetjax: weaver's own model, randomly
initialised, converted (convert.py) and run by jetjax on real jets, stage by stage; the conversion written
back bit for bit; parameter counts equal; packed and dense layouts equal."""
import jax
import numpy as np
import pytest
from conftest import shared_path

from jetjax.models.convert import _head_scale_permutation, convert_state_dict, matching_part, to_state_dict
from jetjax.models.layout import plan_layout

TOL = 1e-4
GATE = dict(headwise_attn_output_gate=True, use_qk_norm=True)
CASES = {"v1": dict(version=1), "v2": dict(version=2), "v3": dict(version=3), "v3.5": dict(version=3.5),
         "v2+headwise gate+qk norm": dict(version=2, block_params=GATE, cls_block_params=GATE)}
TINY = dict(embed_dims=(16, 32, 16), pair_embed_dims=(8, 8), num_heads=2, num_layers=2, num_cls_layers=1)


def real_jets(count=16, slots=64):
    """(features, vectors, mask) of real JetClass jets in jetjax's layout (kin features, the shared reference)."""
    with np.load(shared_path("reference", "part_weaver_v0417_kin.npz")) as data:
        features, vectors, mask = (data[k][:count, :, :slots] for k in ("input/features", "input/vectors", "input/mask"))
    return np.transpose(features, (0, 2, 1)), np.transpose(vectors, (0, 2, 1)), mask[:, 0] > 0


def weaver_model(settings):
    """weaver-core's ParticleTransformer with `settings`, random weights and BatchNorm statistics, eval mode."""
    torch = pytest.importorskip("torch", reason="comparing with weaver needs torch: pip install 'jetjax[compare]'")
    weaver = pytest.importorskip("weaver.nn.model.ParticleTransformer", reason="needs weaver-core (extra 'compare')")
    torch.manual_seed(0)
    model = weaver.ParticleTransformer(input_dim=7, num_classes=5, fc_params=[], use_pre_activation_pair=False,
                                       trim=False, **TINY, **settings)
    for module in model.modules():  # away from the initial ones, so that a misplaced tensor shows
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2)
        elif isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)):
            module.weight.data.uniform_(0.5, 1.5)
            if getattr(module, "bias", None) is not None:
                module.bias.data.normal_(0, 0.1)
    return model.eval()


def converted(model):
    """jetjax variables of weaver's `model` (0.5 layout)."""
    return convert_state_dict({k: t.detach().numpy() for k, t in model.state_dict().items()}, TINY["num_heads"],
                              weaver_version="0.5")


def weaver_stages(model, jets):
    """{stage: output} of weaver's model on `jets`: embedding, each particle and class block, logits."""
    import torch

    stages, hooks = {}, []
    named = {"embedding": model.embed, **{f"block_{i}": b for i, b in enumerate(model.blocks)},
             **{f"cls_block_{i}": b for i, b in enumerate(model.cls_blocks)}}
    for name, module in named.items():
        hooks.append(module.register_forward_hook(lambda m, i, out, name=name: stages.update({name: out.numpy()})))
    f, v = (torch.from_numpy(np.ascontiguousarray(np.swapaxes(x, 1, 2))) for x in jets[:2])
    with torch.no_grad():
        stages["logits"] = model(f, v, torch.from_numpy(jets[2][:, None].astype(np.float32))).numpy()
    for hook in hooks:
        hook.remove()
    return stages


@pytest.mark.parametrize("case", CASES)
def test_weaver_versions_convert_and_match_stage_by_stage(case):
    model = weaver_model(CASES[case])
    state = {k: t.detach().numpy() for k, t in model.state_dict().items()}
    variables = convert_state_dict(state, TINY["num_heads"], weaver_version="0.5")
    part = matching_part(variables)
    jets = real_jets()
    want = weaver_stages(model, jets)
    out, inter = jax.jit(lambda v: part.apply(v, *jets, mutable=["intermediates"]))(variables)
    got = {k: np.asarray(v[0]) for k, v in inter["intermediates"].items()}
    real = jets[2]
    # jetjax's residual stream holds weaver 0.5's channels in another order (convert.py): channel k is perm[k]
    perm = _head_scale_permutation(TINY["embed_dims"][-1], TINY["num_heads"])
    for stage in ("embedding", "block_0", "block_1"):
        assert np.abs(got[stage][real] - want[stage][real][:, perm]).max() <= TOL, stage
    assert np.abs(got["cls_block_0"] - want["cls_block_0"][..., perm]).max() <= TOL
    assert np.abs(np.asarray(out["logits"]) - want["logits"]).max() <= TOL
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == sum(p.numel() for p in model.parameters())
    back = to_state_dict(variables, weaver_version="0.5", ffn=part.ffn)
    assert set(back) == set(state)
    assert all(np.array_equal(back[k], v) for k, v in state.items() if not k.endswith("num_batches_tracked"))


def test_options_are_read_from_the_tensors():
    """matching_part names what each version switches, as weaver's constructor sets it."""
    parts = {case: matching_part(converted(weaver_model(CASES[case]))) for case in ("v1", "v2", "v3", "v3.5")}
    assert (parts["v1"].ffn, parts["v1"].norm, parts["v1"].bias, parts["v1"].scale_heads) == ("gelu", "layer", True, True)
    assert (parts["v2"].ffn, parts["v2"].norm, parts["v2"].scale_attn, parts["v2"].scale_resids) == (
        "swiglu", "layer", False, False)
    assert (parts["v3"].norm, parts["v3"].bias, parts["v3"].qk_norm) == ("rms", False, False)
    assert (parts["v3.5"].qk_norm, parts["v3.5"].attn_gate) == (True, "elementwise")


def test_blocks_of_different_options_are_refused():
    model = weaver_model(dict(version=2, block_params=GATE))  # the class blocks keep the defaults
    variables = converted(model)
    with pytest.raises(ValueError, match="cls_block_params"):
        matching_part(variables)


@pytest.mark.parametrize("case", ["v3.5", "v2+headwise gate+qk norm"])
def test_packed_layout_equals_dense_for_the_new_options(case):
    model = weaver_model(CASES[case])
    variables = converted(model)
    part, jets = matching_part(variables), real_jets()
    plan = plan_layout(jets[2].sum(1), jets[2].shape[1], groups=3, slot_multiple=8)
    dense = part.apply(variables, *jets)
    packed = part.apply(variables, *jets, plan=plan)
    assert np.abs(np.asarray(packed["logits"]) - np.asarray(dense["logits"])).max() <= 1e-5


@pytest.mark.parametrize("case", CASES)
def test_weaver_rebuilds_the_exported_architecture(case):
    """export.weaver_model_settings (the description of a weaver export) builds weaver's model of the converted
    options: it loads the written state_dict strictly and gives the original model's logits."""
    import torch

    from configs import base
    from jetjax import export

    original = weaver_model(CASES[case])
    variables = converted(original)
    part = matching_part(variables)
    settings = export.weaver_model_settings(base.get_config(), part)
    weaver = pytest.importorskip("weaver.nn.model.ParticleTransformer")
    rebuilt = weaver.ParticleTransformer(**settings)
    rebuilt.load_state_dict({k: torch.tensor(v) for k, v in to_state_dict(variables, "0.5", part.ffn).items()},
                            strict=True)
    jets = real_jets()
    assert np.array_equal(weaver_stages(rebuilt.eval(), jets)["logits"], weaver_stages(original, jets)["logits"])


def test_what_weaver_cannot_build_is_refused():
    from configs import base
    from jetjax import export

    variables = converted(weaver_model(CASES["v3"]))
    with pytest.raises(ValueError, match="model.norm='rms' with model.bias=True"):
        export.weaver_model_settings(base.get_config(), matching_part(variables).clone(bias=True))
    with pytest.raises(ValueError, match="GEGLU"):
        to_state_dict(variables, "0.5", ffn="geglu")


def test_the_version_presets_are_what_weaver_builds():
    """configs/part_versions.py's model options of each version equal those read from weaver's model."""
    from configs import part_versions

    for version in ("1", "2", "3", "3.5"):
        part = matching_part(converted(weaver_model(dict(version=float(version)))))
        config = part_versions.get_config(version)
        read = {k: getattr(part, k) for k in ("ffn", "norm", "bias", "qk_norm", "attn_gate", "scale_attn",
                                               "scale_fc", "scale_heads", "scale_resids")}
        assert read == {k: config.model[k] for k in read}, version
    with pytest.raises(ValueError, match="not one of"):
        part_versions.get_config("4")
