"""Training-step throughput of the engine (jetjax.train.make_train_step: objective, optimizer with clipping,
data-parallel over every device), in jets/s, for the full-size reference ParT and "Ours".

    python experiments/bench_train.py --variant reference ours --dtype float32 bfloat16 --batch 256
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python experiments/bench_train.py   # 2 CPU devices

Jets have realistic multiplicities (bench_model.realistic_batch) padded to P = 128. One JSON line per case.
"""
import argparse
import json

import jax

from bench_model import realistic_batch, timed
from configs import supervised_ours, supervised_part
from jetjax import optim, parallel, train

VARIANTS = {"reference": supervised_part, "ours": supervised_ours}


def step_seconds(config, batch, steps):
    mesh = parallel.data_mesh()
    model = train.build_model(config)
    tx = optim.make_optimizer(1000, **config.optimizer)
    state = parallel.replicate(train.init_state(model, tx, batch, jax.random.key(0)), mesh)
    step = train.make_train_step(model, tx)
    sharded = parallel.shard_batch(batch, mesh)
    # each timed call blocks on the new state, as the engine blocks on every step's metrics
    return timed(lambda state: step(state, sharded)[0], state, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", nargs="+", default=["reference", "ours"], choices=list(VARIANTS))
    parser.add_argument("--dtype", nargs="+", default=["float32"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    batch = realistic_batch(args.batch, args.particles)
    batch["label"] = batch["label"] % 7
    batch["pid"] = batch["mask"].astype("int32")
    batch["jet"] = batch["vectors"].sum(1)
    for variant in args.variant:
        for dtype in args.dtype:
            config = VARIANTS[variant].get_config()
            config.model.dtype = dtype
            config.data.num_particles = args.particles
            compile_s, seconds = step_seconds(config, batch, args.steps)
            print(json.dumps({"model": variant, "devices": jax.device_count(),
                              "device": jax.devices()[0].device_kind, "batch": args.batch, "P": args.particles,
                              "dtype": dtype, "jets_per_s": round(args.batch / seconds, 1),
                              "compile_s": round(compile_s, 1)}), flush=True)


if __name__ == "__main__":
    main()
