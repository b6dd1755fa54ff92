"""Fully supervised "Ours" (the study's §2.3): GEGLU feed-forward with a wider expansion, DropPath with
LayerScale, and a 2-layer GELU classifier head. The study does not give the values; these are ours:
GEGLU hidden 6 x 128 (vs 4 x 128), DropPath 0.1, LayerScale 0.1 (CaiT's value for <= 18 layers), head 256."""
from configs import base

OURS_MODEL = dict(ffn="geglu", ffn_ratio=6.0, drop_path=0.1, layer_scale_init=0.1, head="mlp", head_hidden=256,
                  head_dropout=0.1)
"""How "Ours" differs from the reference ParT (keys of config.model)."""


def get_config():
    c = base.get_config()
    c.model.update(OURS_MODEL)
    return c
