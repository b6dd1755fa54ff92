"""A ladder of ParT sizes, from the reference ParT (~2M parameters) to ~200M: width E (the particle
embedding ends at E, the blocks' feed-forward layers are 4E wide), depth (particle blocks; 2 class-token
blocks throughout), heads (head width 16 for the reference, 32-64 above) and the pair-embedding MLP widths
(whose last layer gives one bias per head). `micro` and `mini` are CPU-sized rungs below the reference for the
scaling study (jetjax/scaling.py) on a laptop. Parameter counts: jetjax/models/sizes.py, tests/test_sizes.py.

Other configs take a size with `sizes.with_size(c, name)`; as a config file, one supervised run of a size:

    python -m jetjax.main --config configs/sizes.py:m --config.data.root=...
"""
from configs import base

SIZES = {
    "micro": dict(embed_dims=(32, 128, 32), pair_embed_dims=(16, 16), num_heads=2, num_layers=2),
    "mini": dict(embed_dims=(64, 256, 64), pair_embed_dims=(32, 32), num_heads=4, num_layers=4),
    "part": dict(embed_dims=(128, 512, 128), pair_embed_dims=(64, 64, 64), num_heads=8, num_layers=8),
    "s": dict(embed_dims=(256, 1024, 256), pair_embed_dims=(64, 64, 64), num_heads=8, num_layers=8),
    "m": dict(embed_dims=(512, 2048, 512), pair_embed_dims=(128, 128, 128), num_heads=16, num_layers=12),
    "l": dict(embed_dims=(768, 3072, 768), pair_embed_dims=(128, 128, 128), num_heads=16, num_layers=12),
    "xl": dict(embed_dims=(1024, 4096, 1024), pair_embed_dims=(256, 256, 256), num_heads=16, num_layers=12),
}
"""model settings of each size (the other model keys keep base.py's values)."""


def with_size(c, name):
    """Config `c` with the encoder of size `name` (a key of SIZES)."""
    if name not in SIZES:
        raise ValueError(f"model size {name!r} is not one of {list(SIZES)} (configs/sizes.py)")
    c.model.update(SIZES[name])
    return c


def get_config(name="part"):
    return with_size(base.get_config(), name)
