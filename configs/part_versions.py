"""A supervised ParT with the block options of a version of weaver-core 0.5.3's ParticleTransformer
(docs/formulas.md §8.5), everything else as configs/supervised_part.py:

    python -m jetjax.main --config configs/part_versions.py:3 --config.data.root=...

Other configs take a version with `part_versions.with_version(c, "3")`. A weaver checkpoint of any version
loads with jetjax.models.convert (its options are read from the tensors).
"""
from configs import supervised_part

VERSION_2 = dict(ffn="swiglu", scale_attn=False, scale_fc=False, scale_heads=False, scale_resids=False)
VERSION_3 = dict(VERSION_2, norm="rms", bias=False, dropout=0.0, attn_dropout=0.0, activation_dropout=0.0,
                 drop_path=0.1)
VERSIONS = {"1": {}, "2": VERSION_2, "3": VERSION_3, "3.5": dict(VERSION_3, qk_norm=True, attn_gate="elementwise")}
"""model settings of each weaver `version` (weaver's ParticleTransformer constructor)."""


def with_version(c, version):
    """Config `c` with the model options of weaver's ParT `version` ('1', '2', '3', '3.5')."""
    if version not in VERSIONS:
        raise ValueError(f"ParT version {version!r} is not one of {list(VERSIONS)} (configs/part_versions.py)")
    c.model.update(VERSIONS[version])
    return c


def get_config(version="3"):
    return with_version(supervised_part.get_config(), version)
