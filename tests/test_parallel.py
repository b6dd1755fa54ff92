"""Data parallelism: a train step on 2 simulated CPU devices equals the same step on one device.

The optimizer here is plain SGD: a few parameters have an exactly zero gradient in theory (biases that
feed a BatchNorm, the attention key bias) and float rounding noise in practice, which Adam's
normalisation turns into +-lr steps of random sign on any device layout.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import toy_jets
    import optax
    from jetjax import objectives, parallel, train
    from jetjax.models.part import ParT

    assert jax.device_count() == 2, jax.devices()
    results = {}
    for name in ("supervised", "supcon"):
        encoder = ParT(num_classes=3 if name == "supervised" else None, embed_dims=(16, 32, 16),
                       pair_embed_dims=(8,), num_heads=2, num_layers=1, num_cls_layers=1)
        heads = {} if name == "supervised" else dict(projection_hidden=16, projection_features=16)
        model = objectives.build(name, encoder, "kin", **heads)
        tx = optax.sgd(0.05)
        batches = [{k: np.asarray(v) for k, v in toy_jets(s, batch=8, slots=16, lengths=None).items()}
                   for s in range(3)]
        step = train.make_train_step(model, tx)
        runs = []
        for mesh in (None, parallel.data_mesh()):
            state = train.init_state(model, tx, batches[0], jax.random.key(0))
            if mesh is not None:
                state = parallel.replicate(state, mesh)
            losses = []
            for b in batches:
                b = parallel.shard_batch(b, mesh) if mesh is not None else b
                state, metrics = step(state, b)
                losses.append(float(jax.block_until_ready(metrics["loss"])))
            runs.append((losses, jax.tree.map(np.asarray, state.params)))
        (l1, p1), (l2, p2) = runs
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)))
        results[name] = {"losses_1": l1, "losses_2": l2, "max_param_diff": diff}
    print(json.dumps(results))
""")


def test_two_devices_equal_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for name, r in results.items():
        assert abs(r["losses_1"][0] - r["losses_2"][0]) <= 1e-5 * max(1.0, abs(r["losses_1"][0])), (name, r)
        for a, b in zip(r["losses_1"], r["losses_2"]):
            assert abs(a - b) <= 1e-5 * max(1.0, abs(a)), (name, r)
        assert r["max_param_diff"] <= 1e-5, (name, r)
