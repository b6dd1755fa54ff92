"""ParT encoder throughput: inference and training step (forward + backward + AdamW), in jets/s.

Jets have realistic multiplicities (most 30-80 particles, drawn around 55 +- 15) zero-padded to P slots.
`--trim` also measures the same batch cut to the bucket that holds its longest jet (a multiple of 16),
which is exact (padding invariance) and is what the data pipeline can do per batch.
Each case prints one JSON line after compilation; timings block on the result of every step.

  python experiments/bench_model.py --batch 64 256 --dtype float32 bfloat16 --trim
"""
import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jetjax.models.part import ParT

VARIANTS = {
    "reference": {},
    "ours": dict(ffn="geglu", ffn_ratio=6.0, drop_path=0.1, layer_scale_init=0.1, head="mlp"),
    "no_pair_bias": dict(pair_embed_dims=()),
}


def realistic_batch(batch, slots, channels=7, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(55, 15, batch).astype(int), 5, slots)
    mask = np.arange(slots)[None] < lengths[:, None]
    pt = rng.exponential(10.0, (batch, slots)) + 0.5
    eta, phi = rng.normal(0, 0.3, (2, batch, slots))
    vectors = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)], -1)
    features = rng.normal(size=(batch, slots, channels))
    return {"features": (features * mask[..., None]).astype(np.float32),
            "vectors": (vectors * mask[..., None]).astype(np.float32),
            "mask": mask, "label": rng.integers(0, 10, batch).astype(np.int32)}


def trim(batch, multiple=16):
    slots = int(-(-batch["mask"].sum(1).max() // multiple) * multiple)
    return {k: (v[:, :slots] if v.ndim > 1 else v) for k, v in batch.items()}


def timed(step, state, steps):
    """(seconds of the first call, which compiles; mean seconds of the next `steps` calls) of state -> state."""
    start = time.perf_counter()
    state = jax.block_until_ready(step(state))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        state = jax.block_until_ready(step(state))
    return compile_s, (time.perf_counter() - start) / steps


def bench_case(variant, batch, dtype, mode, steps):
    model = ParT(**VARIANTS[variant], dtype=jnp.dtype(dtype))
    variables = model.init(jax.random.key(0), batch["features"][:2], batch["vectors"][:2], batch["mask"][:2])
    inputs = jax.device_put((batch["features"], batch["vectors"], batch["mask"]))
    labels = jax.device_put(batch["label"])
    if mode == "inference":
        fn = jax.jit(lambda v, x: model.apply(v, *x)["logits"])
        compile_s, step_s = timed(lambda _: fn(variables, inputs), None, steps)
    else:
        tx = optax.adamw(1e-4)
        opt_state = tx.init(variables["params"])

        def train_step(params, stats, opt_state, key, inputs, labels):
            def loss_fn(p):
                out, new = model.apply({"params": p, **stats}, *inputs, train=True, rngs={"dropout": key},
                                       mutable=["batch_stats"])
                one_hot = jax.nn.one_hot(labels, out["logits"].shape[-1])
                return optax.softmax_cross_entropy(out["logits"], one_hot).mean(), new
            (_, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_stats, opt_state, jax.random.split(key)[0]

        fn = jax.jit(train_step, donate_argnums=(0, 1, 2))
        state = (variables["params"], {"batch_stats": variables["batch_stats"]}, opt_state, jax.random.key(1))
        compile_s, step_s = timed(lambda state: fn(*state, inputs, labels), state, steps)
    return compile_s, step_s


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--dtype", nargs="+", default=["float32"])
    parser.add_argument("--variant", nargs="+", default=["reference"], choices=list(VARIANTS))
    parser.add_argument("--mode", nargs="+", default=["inference", "train"], choices=["inference", "train"])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--trim", action="store_true", help="also measure batches cut to their length bucket")
    args = parser.parse_args()
    device = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
    for variant in args.variant:
        for size in args.batch:
            full = realistic_batch(size, args.particles)
            for slots_batch in ([full, trim(full)] if args.trim else [full]):
                for dtype in args.dtype:
                    for mode in args.mode:
                        compile_s, step_s = bench_case(variant, slots_batch, dtype, mode, args.steps)
                        print(json.dumps({
                            "model": variant, "mode": mode, "device": device, "batch": size,
                            "P": args.particles, "slots_computed": slots_batch["mask"].shape[1],
                            "mean_particles": round(float(full["mask"].sum(1).mean()), 1), "dtype": dtype,
                            "jets_per_s": round(size / step_s, 1), "compile_s": round(compile_s, 1)}), flush=True)


if __name__ == "__main__":
    main()
