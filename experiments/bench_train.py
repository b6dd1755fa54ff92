"""The engine's training step and inference exactly as `fit` runs them (steps.run_steps over the
feeding.Feeder: slot buckets, layout plans, batches placed ahead of the step; feeding.run_eval for
inference), for any training config in configs/, on jets of realistic multiplicity: jets/s after the
warm-up, and the XLA programs the warm-up compiled (count and seconds).

    python experiments/bench_train.py --config supervised_part supervised_ours --dtype float32 bfloat16 --batch 256
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python experiments/bench_train.py   # 2 CPU devices

Jets: `realistic_batch` (most 30-80 particles, drawn around 55 +- 15) in P slots; `--batches` different
batches per pass, so that the layouts of several multiplicity mixes are compiled and measured. Pretraining
configs measure their objective's training step (no inference). One JSON line per case. The same engine
beside weaver-core on real jets: bench_reference.py.
"""
from jetjax import memory

memory.keep_freed_memory()  # first, before numpy or jax start a thread (jetjax/memory.py)

import argparse
import importlib
import json
import time

import jax
import numpy as np

from configs import sizes
from jetjax import build, compilation, feeding, optim, parallel, steps
from jetjax.data.features import FEATURE_SETS


def realistic_batch(batch, slots, channels=7, seed=0):
    """A batch dict of jets with realistic multiplicities (normal around 55 +- 15, at least 5, at most
    `slots`), real particles first, zero padded; random features, massless four-vectors, 7 classes."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.normal(55, 15, batch).astype(int), 5, slots)
    mask = np.arange(slots)[None] < lengths[:, None]
    pt = rng.exponential(10.0, (batch, slots)) + 0.5
    eta, phi = rng.normal(0, 0.3, (2, batch, slots))
    vectors = np.stack([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)], -1)
    vectors = (vectors * mask[..., None]).astype(np.float32)
    features = rng.normal(size=(batch, slots, channels))
    return {"features": (features * mask[..., None]).astype(np.float32), "vectors": vectors, "mask": mask,
            "label": rng.integers(0, 7, batch).astype(np.int32), "pid": mask.astype(np.int32),
            "jet": vectors.sum(1), "position": np.arange(batch, dtype=np.int64) + seed * batch}


def bench_config(name, args, dtype):
    config = importlib.import_module(f"configs.{name}").get_config()
    if args.size:
        sizes.with_size(config, args.size)
    config.model.dtype = dtype
    config.data.num_particles = args.particles
    config.train.batch_size = args.batch
    return config


def timed(run):
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_case(config, batches, repeats):
    """{'train_jets_per_s', 'inference_jets_per_s' (classifiers), 'compiled_programs', 'compile_s'} of the
    config's engine on `batches` (median of `repeats` passes, after a warm-up pass that compiles)."""
    mesh = parallel.data_mesh()
    model = build.build_model(config)
    tx = optim.make_optimizer(10_000, **config.optimizer)
    layout = feeding.layout_settings(config)
    feeder = feeding.Feeder(model, mesh, config.data.num_particles, layout)
    jets = len(batches) * config.train.batch_size
    with compilation.CompileLog() as compiled:
        state = parallel.replicate(steps.init_state(model, tx, batches[0], jax.random.key(0)), mesh)
        train_step, eval_step = steps.make_train_step(model, tx), steps.make_eval_step(model)

        def train_pass():
            nonlocal state
            for state, metrics in steps.run_steps(state, train_step, feeder, iter(batches)):
                pass
            jax.block_until_ready(metrics)

        runs = {"train": train_pass}
        if config.mode in build.CLASSIFIER_MODES:
            runs["inference"] = lambda: feeding.run_eval(state, eval_step, feeder, iter(batches),
                                                         config.train.batch_size, layout.eval_window)
        for run in runs.values():
            run()
    figures = {f"{mode}_jets_per_s": round(jets / float(np.median([timed(run) for _ in range(repeats)])), 1)
               for mode, run in runs.items()}
    return {**figures, **compiled.summary(), "layouts": len(feeder.programs), "layouts_used": len(feeder.used)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=["supervised_part", "supervised_ours"],
                        help="config names in configs/ (supervised_part, supervised_ours, mpm, supcon, ...)")
    parser.add_argument("--size", choices=list(sizes.SIZES), help="model size (configs/sizes.py) "
                        "instead of the config's")
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--batches", type=int, default=4, help="different batches per pass")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name in args.config:
        for dtype in args.dtype:
            config = bench_config(name, args, dtype)
            channels = len(FEATURE_SETS[config.data.feature_set])
            batches = [realistic_batch(args.batch, args.particles, channels, seed) for seed in range(args.batches)]
            figures = bench_case(config, batches, args.repeats)
            print(json.dumps({"config": name, "size": args.size or "config", "dtype": dtype,
                              "devices": jax.device_count(), "device": jax.devices()[0].device_kind,
                              "batch": args.batch, "P": args.particles,
                              "mean_particles": round(float(np.mean([b["mask"].sum(1).mean() for b in batches])), 1),
                              **figures}), flush=True)


if __name__ == "__main__":
    main()
