"""The model-size ladder (configs/sizes.py): encoder parameter counts from jax.eval_shape (nothing is
allocated) equal those of weaver-core's ParticleTransformer built with the same settings and no head (on
PyTorch's meta device), the
reference rung is the ParT of the JetClass paper, and the ladder climbs to ~200M parameters."""
import pytest

from configs import base, sizes
from jetjax import build
from jetjax.models.sizes import encoder_parameters


def jetjax_parameters(name, channels):
    return encoder_parameters(sizes.with_size(base.get_config(), name).model, channels)


def weaver_parameters(settings, channels):
    torch = pytest.importorskip("torch", reason="the independent count needs torch (extra 'compare')")
    weaver = pytest.importorskip("weaver.nn.model.ParticleTransformer", reason="needs weaver-core (extra 'compare')")
    with torch.device("meta"):
        model = weaver.ParticleTransformer(
            input_dim=channels, num_classes=None, pair_input_dim=4, use_pre_activation_pair=False,
            embed_dims=list(settings["embed_dims"]), pair_embed_dims=list(settings["pair_embed_dims"]),
            num_heads=settings["num_heads"], num_layers=settings["num_layers"], num_cls_layers=2, fc_params=None,
            activation="gelu")
    return sum(p.numel() for p in model.parameters())


def test_ladder_parameter_counts_match_weaver_and_reach_200m():
    channels = build.example_batch(base.get_config(), 1)["features"].shape[-1]
    counts = {name: jetjax_parameters(name, channels) for name in sizes.SIZES}
    for name, settings in sizes.SIZES.items():
        assert counts[name] == weaver_parameters(settings, channels), name
    assert list(counts.values()) == sorted(counts.values())
    reference = base.get_config().model  # the reference ParT
    assert {k: reference[k] for k in sizes.SIZES["part"]} == sizes.SIZES["part"]
    assert 1.5e6 < counts["part"] < 2.5e6 and 1.5e8 < counts["xl"] < 2.5e8


def test_unknown_size_names_the_choices():
    with pytest.raises(ValueError, match="not one of .*'xl'"):
        sizes.with_size(base.get_config(), "xxl")
