"""Shared test helpers: the real-data folder beside the project root, fast compiles, full float32 matmuls."""
import os
import tempfile
from pathlib import Path

# The tests compare float32 results with independent float32/float64 references at float32 tolerances, but
# JAX multiplies float32 matrices in TF32 on NVIDIA GPUs by default (about 1e-3 relative; README "Compute
# dtype"). The suite runs them at full float32 precision on every backend, subprocesses included (before
# jax is imported: jax reads the variable at import; the update below covers a jax imported earlier).
# test_part_reference shows what TF32 would do to the reference comparison.
os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
# runs keep their compiled programs in JAX's persistent cache (jetjax.compilation): in the tests, a folder of this
# test process (and its subprocesses) instead of the user's ~/.cache/jetjax/xla
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="jetjax_test_xla_"))

import jax  # noqa: E402
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jetjax import physics

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def xla_optimisations():
    """XLA's usual optimisations for one test (the suite turns most of them off for fast compiles): for tests of
    what the optimising compiler does to results, such as fusing multiplies and adds (physics.mass2)."""
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)


def pytest_collection_modifyitems(items):
    """Slow tests first: with two workers, the long end-to-end run overlaps all the others."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def shared_path(*parts):
    """Path inside ../shared (beside the project root); skip the test with a reason if it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: the real reference data lives in ../shared beside the project root")
    return path


def toy_jets(seed=0, batch=5, slots=32, lengths=(32, 20, 9, 3, 1), num_classes=3):
    """A batch dict of toy jets: massive particles around a random axis, real particles first in pT order,
    zero padded, rescaled to jet pT = 500 GeV, kin features; the class sets the jet width (class k spreads
    0.05 (k + 1)), so the label is learnable. `lengths` may be None for random multiplicities."""
    from jetjax.data.features import kinematic_features

    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, slots + 1, batch) if lengths is None else np.asarray(lengths)
    label = rng.integers(0, num_classes, batch)
    mask = np.arange(slots)[None] < lengths[:, None]
    pt = np.sort(rng.exponential(20.0, (batch, slots)) + 0.5, axis=1)[:, ::-1]
    width = 0.05 * (label[:, None] + 1)
    eta = rng.uniform(-1.5, 1.5, (batch, 1)) + rng.normal(0, 1, (batch, slots)) * width
    phi = rng.uniform(-np.pi, np.pi, (batch, 1)) + rng.normal(0, 1, (batch, slots)) * width
    mass = rng.uniform(0.0, 0.5, (batch, slots))
    v = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta),
                  np.sqrt((pt * np.cosh(eta)) ** 2 + mass ** 2)], -1) * mask[..., None]
    scale = 500 / physics.pt(v.sum(1))
    v = (v * scale[:, None, None]).astype(np.float32)
    jet = v.sum(1)
    return {"features": jnp.asarray(kinematic_features(v, mask, jet), jnp.float32),
            "vectors": jnp.asarray(v), "mask": jnp.asarray(mask), "jet": jnp.asarray(jet),
            "pid": jnp.asarray(rng.integers(0, 8, (batch, slots)) * mask, jnp.int32),
            "label": jnp.asarray(label, jnp.int32)}


def adam_steps(model, data, steps, learning_rate=3e-3):
    """(params, batch_stats, metrics of every step, `loss` included) of `steps` Adam steps of the objective
    `model` cycling over the batches `data`."""
    variables = jax.jit(model.init)(jax.random.key(0), data[0], jax.random.key(1))
    tx = optax.adam(learning_rate)
    params, stats = variables["params"], variables.get("batch_stats", {})
    opt_state = tx.init(params)

    @jax.jit
    def step(params, stats, opt_state, batch, i):
        key = jax.random.fold_in(jax.random.key(2), i)

        def loss_fn(p):
            (loss, metrics, _), new = model.apply({"params": p, "batch_stats": stats}, batch, key, step=i,
                                                  train=True, rngs={"dropout": key}, mutable=["batch_stats"])
            return loss, ({**metrics, "loss": loss}, new["batch_stats"])

        (_, (metrics, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, metrics

    history = []
    for i in range(steps):
        params, stats, opt_state, metrics = step(params, stats, opt_state, data[i % len(data)], i)
        history.append(jax.device_get(metrics))
    return params, stats, history
