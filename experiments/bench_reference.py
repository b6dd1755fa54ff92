"""jetjax beside the PyTorch reference (weaver-core's ParticleTransformer) on the same jets: jets/s of a
training step (forward, backward, gradient clipping at 1.0, AdamW) and of inference (eval mode, softmax).

    pip install -e ".[compare]"          # torch + weaver-core (only weaver.nn.model.ParticleTransformer is used)
    python experiments/bench_reference.py [--data DIR] [--batch 64] [--dtype float32 bfloat16] [--weaver-compile]
    python experiments/bench_reference.py --size micro --particles 32 --batch 16 --repeats 1   # a smoke run

The jets: a JetClass-II-format folder (`--data`, e.g. made by `python -m jetjax.data.simulate`), or else
Pythia-simulated jets of the study's classes written to `--cache` (needs the `sim` extra; the synthetic
generator when it is absent), read through jetjax's own pipeline and fed identically to both: training
batches from the stratified sampler, inference batches from the natural test stream (multiplicities
printed). jetjax runs exactly what `fit` runs: `steps.run_steps` over the `feeding.Feeder` (slot buckets,
packed layouts, device placement ahead of the step, no host synchronisation per step) and `feeding.run_eval`
(jets grouped by multiplicity within windows, scores back in stream order). weaver runs its model as its
training loop does (its SequenceTrimmer on, torch.autocast for bfloat16 on a GPU; `--weaver-compile`:
torch.compile of the model, weaver's `compile_model=True`). Each framework runs in a process of its own (all
alive for the whole run, one working at a time), so that none inherits another's thread pools or allocator
state; each reports its warm-up seconds (jetjax: and the XLA programs it compiled). Cases are interleaved,
in reversed order every other repeat. One JSON line per measurement, then the
medians and the jetjax / weaver ratios.
"""
from jetjax import memory

memory.keep_freed_memory()  # first, before numpy or jax start a thread (jetjax/memory.py)

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from configs import sizes, supervised_part
from jetjax import build, compilation, feeding, optim, parallel, steps
from jetjax.data import pipeline, synthetic


def jets_folder(args):
    """The folder of JetClass-II-format jets to read: --data, or a simulated (or synthetic) set in --cache."""
    if args.data:
        return Path(args.data), "given"
    folder = Path(args.cache)
    if not (folder / "test").exists():
        try:
            from jetjax.data import simulate
            simulate.simulate(folder, args.jets_per_class, seed=0, workers=os.cpu_count())
        except ImportError:
            synthetic.write_dataset(folder, args.jets_per_class, seed=0)
    return folder, "cache"


def multiplicities(batches):
    n = np.concatenate([b["mask"].sum(1) for b in batches])
    return {"mean": round(float(n.mean()), 1), "p90": float(np.percentile(n, 90)), "max": int(n.max())}


def jetjax_config(args, dtype):
    config = sizes.with_size(supervised_part.get_config(), args.size)
    config.data.num_particles = args.particles
    config.train.batch_size = args.batch
    config.model.dtype = dtype
    return config


class Jetjax:
    """The engine's train and eval steps on a fresh reference ParT."""

    def __init__(self, config, example):
        self.mesh = parallel.data_mesh()
        self.model = build.build_model(config)
        tx = optim.make_optimizer(10_000, **config.optimizer)
        self.state = parallel.replicate(steps.init_state(self.model, tx, example, jax.random.key(0)), self.mesh)
        self.train_step, self.eval_step = steps.make_train_step(self.model, tx), steps.make_eval_step(self.model)
        layout = feeding.layout_settings(config)
        # as in fit: training and inference each fix their programs on their own first batches
        self.feeder, self.eval_feeder = (feeding.Feeder(self.model, self.mesh, config.data.num_particles, layout)
                                         for _ in range(2))
        self.batch, self.window = config.train.batch_size, layout.eval_window

    def train(self, batches):
        for self.state, metrics in steps.run_steps(self.state, self.train_step, self.feeder, batches):
            pass
        jax.block_until_ready(metrics)

    def infer(self, batches):
        feeding.run_eval(self.state, self.eval_step, self.eval_feeder, batches, self.batch, self.window)

    def matmul_flops(self, mode, batches):
        """The matrix-product FLOPs of `mode` ('train' or 'inference') on `batches`, each batch counted on the
        program it runs on (compilation.matmul_flops of the traced step)."""
        step, feeder = (self.train_step, self.feeder) if mode == "train" else (self.eval_step, self.eval_feeder)
        stream = batches if mode == "train" else feeding.eval_stream(batches, self.batch, self.window)
        per_program, total = {}, 0
        for batch in stream:
            cut, plan = feeder.prepare(batch)
            key = (cut["mask"].shape[1], plan)
            if key not in per_program:
                traced = step.trace(self.state, feeder.device_batch(cut), plan)
                per_program[key] = compilation.matmul_flops(traced.jaxpr)
            total += per_program[key]
        return total


class Weaver:
    """weaver-core's ParticleTransformer in the JetClass example configuration (for size 'part': the reference
    ParT), of the widths and depths of `size` (configs/sizes.py)."""

    def __init__(self, size, channels, num_classes, amp, compile_model):
        import torch
        from weaver.nn.model.ParticleTransformer import ParticleTransformer

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dims = sizes.SIZES[size]
        model = ParticleTransformer(
            input_dim=channels, num_classes=num_classes, pair_input_dim=4, use_pre_activation_pair=False,
            embed_dims=list(dims["embed_dims"]), pair_embed_dims=list(dims["pair_embed_dims"]),
            num_heads=dims["num_heads"], num_layers=dims["num_layers"], num_cls_layers=2, block_params=None, cls_block_params={"dropout": 0, "attn_dropout": 0, "activation_dropout": 0},
            fc_params=[], activation="gelu", trim=True, for_inference=False, use_amp=amp,
            compile_model=compile_model).to(self.device)
        self.module = model
        self.model = torch.compile(model) if compile_model else model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
        self.amp = amp

    def inputs(self, batch):
        t = lambda x: self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return (t(batch["features"].transpose(0, 2, 1)), t(batch["vectors"].transpose(0, 2, 1)),
                t(batch["mask"][:, None, :].astype(np.float32)), t(batch["label"].astype(np.int64)))

    def autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=self.amp)

    def train(self, batches):
        torch = self.torch
        self.model.train()
        for x, v, mask, label in batches:
            self.opt.zero_grad()
            with self.autocast():
                loss = torch.nn.functional.cross_entropy(self.model(x, v, mask), label)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=1.0)
            self.opt.step()
        loss.item()

    def infer(self, batches):
        torch = self.torch
        self.model.eval()
        with torch.inference_mode(), self.autocast():
            for x, v, mask, _ in batches:
                scores = torch.softmax(self.model(x, v, mask).float(), dim=1).cpu()
        scores.numpy()

    def matmul_flops(self, mode, batches):
        """The matrix-product FLOPs of `mode` on `batches` (torch's FlopCounterMode, on the model without
        torch.compile): training steps as `train` runs them (the trimmer cuts each batch anew), inference as a
        forward pass in eval mode with autograd on (the counter fails under inference_mode), the same products."""
        from torch.utils.flop_counter import FlopCounterMode

        timed_model, self.model = self.model, self.module
        try:
            with FlopCounterMode(display=False) as counter:
                if mode == "train":
                    self.train(batches)
                else:
                    self.model.eval()
                    with self.autocast():
                        for x, v, mask, _ in batches:
                            self.model(x, v, mask)
        finally:
            self.model = timed_model
        return counter.get_total_flops()


def timed(run, batches):
    start = time.perf_counter()
    run(batches)
    return time.perf_counter() - start


def read_batches(folder, args):
    """The training batches (stratified sampler) and the inference batches (natural test stream), every
    process reading the same jets."""
    train_batches = list(pipeline.training_sampler(
        folder, batch_size=args.batch, epoch_size=args.train_batches * args.batch, num_particles=args.particles,
        seed=0).batches(0))
    stream = pipeline.test_batches(folder, batch_size=args.batch, num_particles=args.particles)
    test_batches = [b for _, b in zip(range(args.inference_batches), stream) if len(b["label"]) == args.batch]
    return train_batches, test_batches


def worker(framework, dtype, folder, args, connection):
    """One framework in its own process (no thread pools, allocator or cache state shared with the other):
    builds the model, warms up, then times 'train' or 'inference' on request."""
    train_batches, test_batches = read_batches(folder, args)
    if framework == "jetjax":
        config = jetjax_config(args, dtype)
        runner = Jetjax(config, build.example_batch(config, args.batch))
        runs = {"train": (runner.train, train_batches), "inference": (runner.infer, test_batches)}
    else:
        import torch

        torch.set_num_threads(os.cpu_count())
        runner = Weaver(args.size, train_batches[0]["features"].shape[-1], 7, dtype == "bfloat16",
                        framework == "weaver compiled")
        runs = {mode: (getattr(runner, mode), [runner.inputs(b) for b in batches])
                for mode, batches in (("train", train_batches), ("infer", test_batches))}
        runs["inference"] = runs.pop("infer")
    with compilation.CompileLog() as compiled:  # warm-up: compile every program, pass weaver's trimmer warm-up
        warmup_s = sum(timed(run, batches) for run, batches in runs.values())
    # the work: matrix-product FLOPs per jet of each mode, counted after the warm-up (weaver's trimmer then cuts)
    work = {f"{mode} MFLOP/jet": round(runner.matmul_flops(mode, batches) / (len(batches) * args.batch) / 1e6, 1)
            for mode, (_, batches) in runs.items()}
    connection.send({"warmup_s": round(warmup_s, 1), **work, **(compiled.summary() if framework == "jetjax" else {})})
    while (mode := connection.recv()) is not None:
        run, batches = runs[mode]
        connection.send((timed(run, batches), len(batches) * args.batch))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="JetClass-II-format folder with train/ and test/ (default: --cache)")
    parser.add_argument("--cache", default="runs/bench_jets", help="where simulated jets are kept")
    parser.add_argument("--jets-per-class", type=int, default=700)
    parser.add_argument("--size", default="part", choices=list(sizes.SIZES),
                        help="model size (configs/sizes.py; part: the reference ParT)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--particles", type=int, default=128)
    parser.add_argument("--train-batches", type=int, default=8)
    parser.add_argument("--inference-batches", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--weaver-compile", action="store_true", help="also weaver with torch.compile")
    args = parser.parse_args()
    folder, origin = jets_folder(args)
    train_batches, test_batches = read_batches(folder, args)
    device = f"{jax.device_count()}x {jax.devices()[0].device_kind}"
    print(json.dumps({"jets": str(folder), "origin": origin, "device": device, "size": args.size, "batch": args.batch,
                      "P": args.particles, "train_multiplicity": multiplicities(train_batches),
                      "inference_multiplicity": multiplicities(test_batches)}), flush=True)
    frameworks = ["jetjax", "weaver"] + (["weaver compiled"] if args.weaver_compile else [])
    context = multiprocessing.get_context("spawn")
    workers, reports = {}, {}
    for dtype in args.dtype:
        for framework in frameworks:  # one at a time: warm-ups (compilation) do not overlap
            ours, theirs = context.Pipe()
            process = context.Process(target=worker, args=(framework, dtype, folder, args, theirs), daemon=True)
            process.start()
            reports[(framework, dtype)] = ours.recv()
            print(json.dumps({"framework": framework, "dtype": dtype, **reports[(framework, dtype)]}), flush=True)
            workers[(framework, dtype)] = (process, ours)
    cases = [(framework, dtype, mode) for framework, dtype in workers for mode in ("train", "inference")]
    rates = {case: [] for case in cases}
    for repeat in range(args.repeats):
        for case in cases if repeat % 2 == 0 else reversed(cases):  # neither framework always goes first
            framework, dtype, mode = case
            connection = workers[(framework, dtype)][1]
            connection.send(mode)
            seconds, jets = connection.recv()
            rates[case].append(jets / seconds)
            print(json.dumps({"framework": framework, "dtype": dtype, "mode": mode, "repeat": repeat,
                              "jets_per_s": round(jets / seconds, 1)}), flush=True)
    for process, connection in workers.values():
        connection.send(None)
        process.join()
    summary = {" ".join(case): round(statistics.median(r), 1) for case, r in rates.items()}
    for framework, dtype, mode in cases:  # the speed of the matrix products: jets/s x their FLOPs per jet
        summary[f"{framework} {dtype} {mode} GFLOP/s"] = round(
            summary[f"{framework} {dtype} {mode}"] * reports[(framework, dtype)][f"{mode} MFLOP/jet"] / 1e3, 1)
    for framework, dtype, mode in cases:  # jets/s ratio = work ratio x GFLOP/s ratio
        if framework != "jetjax":
            ours, theirs = f"jetjax {dtype} {mode}", f"{framework} {dtype} {mode}"
            summary[f"jetjax / {theirs}"] = round(summary[ours] / summary[theirs], 2)
            summary[f"work {theirs} / jetjax"] = round(reports[(framework, dtype)][f"{mode} MFLOP/jet"]
                                                       / reports[("jetjax", dtype)][f"{mode} MFLOP/jet"], 2)
            summary[f"GFLOP/s jetjax / {theirs}"] = round(summary[f"{ours} GFLOP/s"] / summary[f"{theirs} GFLOP/s"], 2)
    print(json.dumps({"summary": summary, "device": device, "batch": args.batch, "P": args.particles}), flush=True)


if __name__ == "__main__":
    main()
