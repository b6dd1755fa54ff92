"""Data parallelism: train steps on 2 simulated CPU devices equal the same steps on one device, through the
engine's feeding (slot buckets, packed layouts with one shard per device).

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
    import jax, ml_collections, numpy as np
    sys.path.insert(0, "tests")
    from conftest import toy_jets
    import optax
    from configs import defaults
    from jetjax import feeding, objectives, parallel, steps
    from jetjax.models.part import ParT

    assert jax.device_count() == 2, jax.devices()
    one_device = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    results = {}
    for name in ("supervised", "supcon"):
        encoder = ParT(num_classes=3 if name == "supervised" else None, embed_dims=(16, 32, 16),
                       pair_embed_dims=(8,), num_heads=2, num_layers=1, num_cls_layers=1, dropout=0.0,
                       attn_dropout=0.0, activation_dropout=0.0)  # dropout masks follow the layout's shapes
        heads = {} if name == "supervised" else dict(projection_hidden=16, projection_features=16)
        model = objectives.build(name, encoder, "kin", 16, **heads)
        tx = optax.sgd(0.05)
        batches = [{k: np.asarray(v) for k, v in toy_jets(s, batch=8, slots=16, lengths=None).items()}
                   for s in range(3)]
        step = steps.make_train_step(model, tx)
        runs = {}
        # supervised: every (devices, layout) pair; supcon: the reference and the farthest from it (compiles cost)
        cases = [(m, p) for m in ("1", "2") for p in (False, True)]
        if name == "supcon":
            cases = [("1", False), ("2", True)]
        for mesh_name, packed in cases:
            mesh = one_device if mesh_name == "1" else parallel.data_mesh()
            layout = ml_collections.ConfigDict({**defaults.new_section("layout"), "mode": "packed" if packed else "dense",
                                                "groups": 2, "slot_multiple": 4})
            feeder = feeding.Feeder(model, mesh, 16, layout)
            state = parallel.replicate(steps.init_state(model, tx, batches[0], jax.random.key(0)), mesh)
            losses, plans = [], []
            for device_batch, plan, _ in feeder(batches):
                state, metrics = step(state, device_batch, plan)
                losses.append(float(jax.block_until_ready(metrics["loss"])))
                plans.append(None if plan is None else plan.shards)
            runs[f"{mesh_name} devices, packed={packed}"] = (losses, jax.tree.map(np.asarray, state.params),
                                                              plans)
        reference_losses, reference_params, _ = runs["1 devices, packed=False"]
        for key, (losses, params, plans) in runs.items():
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(reference_params),
                                                                    jax.tree.leaves(params)))
            results[f"{name}, {key}"] = {"losses_reference": reference_losses, "losses": losses,
                                         "max_param_diff": diff, "shards": plans}
    print(json.dumps(results))
""")


def test_two_devices_equal_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(results) == 6
    for name, r in results.items():
        # SupCon's views make its loss amplify rounding: one float32 step of the input four-vectors moves the
        # untrained loss by 1e-4 to 1e-2 relative (the pair mass of light particles, issue 30), and summing a
        # batch over two devices rounds differently (jax 0.12: 2e-5 at the first step). A cross-device bug
        # (statistics or negatives per shard) moves it by far more than 1e-3.
        tol = 1e-3 if name.startswith("supcon") else 1e-5
        for a, b in zip(r["losses_reference"], r["losses"]):
            assert abs(a - b) <= tol * max(1.0, abs(a)), (name, r)
        assert r["max_param_diff"] <= tol, (name, r)
        if "packed=True" in name:  # one packed shard per device
            assert r["shards"] == [2 if name.split(", ")[1].startswith("2") else 1] * 3, (name, r)
