"""The model-size ladder (configs/sizes.py) measured: parameters, training memory per jet, training
throughput and the recommended batch per device. One JSON line per size.

- parameters: jax.eval_shape of the model's init (nothing allocated);
- memory: bytes per jet from XLA's memory analysis (arguments + temporaries) of the compiled train step
  (supervised ParT, AdamW, float32, every one of the P slots computed) at two batch sizes (activations kept
  for the backward pass, dominated by the H x P^2 attention and pair tensors); fixed bytes: the state
  (parameters, two AdamW moments) and the gradients. Compiling is all it costs, so it runs for every size;
- throughput: jets/s of real training steps on this machine's default device (`--throughput` sizes only:
  on a 2-core CPU only the small rungs take seconds); jets carry realistic multiplicities (bench_train.py);
- recommended batch per device: the largest power of two whose fixed + per-jet memory fits
  `--device-gib` x `--fill` (default 80 GiB x 0.8: an H100/A100-80G), capped at 1024.

    python experiments/bench_sizes.py --sizes micro mini part s m l xl --throughput micro mini part
"""
import argparse
import json
import time

import jax
import numpy as np

from bench_train import realistic_batch
from configs import base, sizes
from jetjax import build, optim
from jetjax.steps import init_state, make_train_step


def size_config(name, num_particles):
    c = sizes.with_size(base.get_config(), name)
    c.data.num_particles = num_particles
    c.model.update(dict(dropout=0.0, attn_dropout=0.0, activation_dropout=0.0))
    return c


def abstract(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)


def engine(c, batch_size):
    """(model, tx, train step, state shapes, example batch) of config `c`."""
    model, tx = build.build_model(c), optim.make_optimizer(1000, **c.optimizer)
    batch = build.example_batch(c, batch_size)
    state = jax.eval_shape(lambda key: init_state(model, tx, batch, key), jax.random.key(0))
    return model, tx, make_train_step(model, tx), state, batch


def nbytes(tree):
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def memory(c, batches=(16, 32)):
    """(fixed bytes, bytes per jet) of the compiled train step (module docstring)."""
    totals = []
    for b in batches:
        _, _, step, state, batch = engine(c, b)
        analysis = step.lower(state, abstract(batch), None).compile().memory_analysis()
        totals.append(analysis.argument_size_in_bytes + analysis.temp_size_in_bytes)
    return nbytes(state) + nbytes(state.params), (totals[1] - totals[0]) / (batches[1] - batches[0])


def throughput(c, batch_size, steps):
    model, tx, step, _, _ = engine(c, batch_size)
    batch = realistic_batch(batch_size, c.data.num_particles, channels=build.example_batch(c, 1)["features"].shape[-1])
    batch = {**build.example_batch(c, batch_size), **batch}
    state = init_state(model, tx, batch, jax.random.key(0))
    state, metrics = step(state, batch, None)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, None)
    jax.block_until_ready(metrics)
    return steps * batch_size / (time.perf_counter() - start)


def recommended_batch(fixed, per_jet, device_bytes, cap=1024):
    batch = 1
    while batch * 2 <= cap and fixed + per_jet * batch * 2 <= device_bytes:
        batch *= 2
    return batch if fixed + per_jet * batch <= device_bytes else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(sizes.SIZES))
    parser.add_argument("--throughput", nargs="*", default=["micro", "mini"], help="sizes to time")
    parser.add_argument("--num-particles", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32, help="batch of the timed steps")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device-gib", type=float, default=80.0)
    parser.add_argument("--fill", type=float, default=0.8)
    args = parser.parse_args(argv)
    for name in args.sizes:
        c = size_config(name, args.num_particles)
        state = engine(c, 1)[3]
        row = {"size": name, "parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params)),
               "num_particles": args.num_particles, "device": jax.devices()[0].device_kind}
        fixed, per_jet = memory(c)
        row.update(fixed_mib=round(fixed / 2**20, 1), mib_per_jet=round(per_jet / 2**20, 2),
                   recommended_batch_per_device=recommended_batch(fixed, per_jet, args.device_gib * 2**30 * args.fill),
                   for_device_gib=args.device_gib)
        if name in args.throughput:
            row.update(train_jets_per_s=round(throughput(c, args.batch, args.steps), 1), timed_batch=args.batch)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
