"""The parameters of an encoder of a given size, counted without allocating anything (the size ladder itself:
configs/sizes.py; the counts are checked against weaver-core's ParticleTransformer in tests/test_sizes.py;
memory per jet and throughput: experiments/bench_sizes.py, figures in docs/scaling.md)."""
import jax
import numpy as np

from jetjax.models.part import ParT

def encoder_parameters(model_settings, num_features):
    """Trainable parameters of the ParT encoder built from `model_settings` (config.model) for particles of
    `num_features` input features: jax.eval_shape, nothing is allocated; no head (num_classes=None)."""
    encoder = ParT(num_classes=None, **{**model_settings, "dtype": np.float32})
    features, vectors, mask = np.zeros((1, 16, num_features)), np.zeros((1, 16, 4)), np.zeros((1, 16), bool)
    shapes = jax.eval_shape(lambda: encoder.init(jax.random.key(0), features, vectors, mask, train=False))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))
