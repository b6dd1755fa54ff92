"""jetjax command line: `python -m jetjax.main --config configs/<name>.py [--config.a.b=value ...]`.

Until the training engine lands (issue "Training engine"), every config prints the summary of the
encoder it describes (parameters per module) and runs it once on a batch of random jets.
"""
import jax
import jax.numpy as jnp
import numpy as np
from absl import app
from ml_collections import config_flags

from jetjax.models.part import ParT

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.", lock_config=True)


def build_model(model_config):
    """ParT from a config's `model` section (its keys are ParT's fields; dtype given by name)."""
    kwargs = dict(model_config)
    kwargs["dtype"] = jnp.dtype(kwargs.get("dtype", "float32"))
    return ParT(**kwargs)


def random_jets(batch, slots, channels, seed=0):
    """Massless random jets with 10..slots particles, for smoke runs of a model."""
    rng = np.random.default_rng(seed)
    mask = np.arange(slots)[None] < rng.integers(10, slots + 1, (batch, 1))
    pt = rng.exponential(10.0, (batch, slots)) + 0.5
    eta, phi = rng.normal(0, 0.3, (2, batch, slots))
    vectors = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)], -1)
    features = rng.normal(size=(batch, slots, channels))
    return (features * mask[..., None]).astype(np.float32), (vectors * mask[..., None]).astype(np.float32), mask


def summary(model, channels, slots):
    """Text table of parameter counts per top-level module, then one forward pass on random jets."""
    jets = random_jets(4, slots, channels)
    variables = jax.jit(model.init)(jax.random.key(0), *jets)
    lines = [f"{'module':<16}{'parameters':>12}"]
    for name, tree in variables["params"].items():
        lines.append(f"{name:<16}{sum(x.size for x in jax.tree.leaves(tree)):>12,}")
    lines.append(f"{'total':<16}{sum(x.size for x in jax.tree.leaves(variables['params'])):>12,}")
    out = jax.jit(model.apply)(variables, *jets)
    lines.append("outputs on 4 random jets: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))
    return "\n".join(lines)


def main(argv):
    del argv
    config = _CONFIG.value
    print(f"jetjax: {config.mode} run is not available yet (training engine pending); encoder summary:")
    print(summary(build_model(config.model), config.data.num_features, config.data.num_particles))


if __name__ == "__main__":
    app.run(main)
