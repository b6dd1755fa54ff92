"""One check of jetjax on a GPU (any NVIDIA GPU; also runs on the CPU with `--tiny`), made to fit a short slot of
GPU time (under 8 minutes on one GPU: each stage has its own timeout) and to end with one table.

    pip install -e ".[cuda13,test]"            # or cuda12; `test` brings pytest, torch and weaver-core
    python experiments/gpu_check.py [--out runs/gpu_check]
    python experiments/gpu_check.py --tiny     # tiny settings on the CPU (tests/test_experiments.py)

Stages, each in a process of its own (the parent never starts jax, so it holds no GPU memory), logs in --out:
1. environment: Python, jax, jaxlib, flax, optax, orbax, torch and weaver versions, jax's devices;
2. first step (timed first: one program took about a minute to compile on an H200): the quickstart's first training step and first
   validation step through the engine (compile included), and the XLA programs they compiled;
3. fidelity: tests/test_part_reference.py (jetjax's ParT against the weaver reference, float32 at full
   matmul precision and bfloat16 at its tolerance);
4. quickstart: `python -m jetjax.main --config configs/quickstart.py`, the README's single run, wall-clock
   total, and the programs and compile seconds from its metrics.jsonl (compiled at start-up, and in the loop);
   then the same run again in a fresh workdir (warm: its programs come from the persistent cache);
5. benchmark: experiments/bench_reference.py in bfloat16 and float32 at batch 256 beside weaver-core (AMP
   for bfloat16) and weaver-core under torch.compile, on Pythia jets simulated on the CPU cores while the
   first stages use the GPU (synthetic jets without the `sim` extra).
A stage that times out or fails is reported as such and the next one runs.
"""
import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "weaver-core", "numpy")

TINY = {"data.synthetic_jets_per_group": 1000, "data.epoch_size": 256, "data.val_size": 128, "train.epochs": 1,
        "train.batch_size": 64, "train.log_every": 2, "knn.train_jets": 128, "knn.val_jets": 64,
        "model.num_layers": 1, "optimizer.warmup_steps": 1}
"""quickstart overrides of --tiny (a CPU-sized check of the script itself)."""

TIMEOUTS = {"environment": 30, "first_step": 80, "fidelity": 60, "quickstart": 80, "quickstart_warm": 40,
            "benchmark": 180}
"""seconds per stage on a GPU: 7.8 minutes in all. --tiny: --tiny-timeout for every stage."""


def quickstart_config(tiny):
    from configs import quickstart

    config = quickstart.get_config()
    for key, value in (TINY if tiny else {}).items():
        section, name = key.split(".")
        config[section][name] = value
    return config


def environment_stage(args):
    import jax

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"python": sys.version.split()[0], **versions, "backend": jax.default_backend(),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def first_step_stage(args):
    """The quickstart's first training step and first validation step as `fit` runs them, from a fresh
    process (data generated beforehand, not timed)."""
    import jax

    from jetjax import build, compilation, feeding, optim, parallel, steps
    from jetjax.data import pipeline

    config = quickstart_config(args.tiny)
    data = build.data_settings(config, args.out / "first_step")
    batch = next(iter(pipeline.training_sampler(**data, batch_size=config.train.batch_size,
                                                epoch_size=config.train.batch_size, seed=0).batches(0)))
    times = {}
    with compilation.CompileLog() as compiled:
        start = time.perf_counter()
        mesh, model = parallel.data_mesh(), build.build_model(config)
        tx = optim.make_optimizer(100, **config.optimizer)
        state = parallel.replicate(steps.init_state(model, tx, batch, jax.random.key(0)), mesh)
        layout = feeding.layout_settings(config)
        feeder, eval_feeder = (feeding.Feeder(model, mesh, config.data.num_particles, layout) for _ in range(2))
        for state, metrics in steps.run_steps(state, steps.make_train_step(model, tx), feeder, iter([batch])):
            jax.block_until_ready(metrics)
        times["first_train_step_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        validation = pipeline.validation_batches(**data, num_jets=config.train.batch_size,
                                                 batch_size=config.train.batch_size, seed=1)
        feeding.run_eval(state, steps.make_eval_step(model), eval_feeder, validation, config.train.batch_size, 1)
        times["first_eval_step_s"] = round(time.perf_counter() - start, 2)
    return {**times, **compiled.summary()}


STAGE_FUNCTIONS = {"environment": environment_stage, "first_step": first_step_stage}


def stage_commands(args):
    """name -> command line of each stage (run from the repository root)."""
    me = [sys.executable, str(Path(__file__).resolve())] + (["--tiny"] if args.tiny else [])
    overrides = [f"--config.{k}={v}" for k, v in (TINY if args.tiny else {}).items()]
    tests = ["-k", "logits or bfloat16"] if args.tiny else []
    bench = (["--size", "micro", "--particles", "32", "--batch", "16", "--dtype", "float32", "--repeats", "1",
              "--train-batches", "2", "--inference-batches", "2", "--data", str(args.out / "first_step" / "data")]
             if args.tiny else
             ["--batch", "256", "--dtype", "bfloat16", "float32", "--weaver-compile", "--repeats", "2",
              "--train-batches", "4", "--inference-batches", "4", "--cache", str(args.out / "bench_jets")])
    return {
        "environment": me + ["--out", str(args.out), "--stage", "environment"],
        "first_step": me + ["--out", str(args.out), "--stage", "first_step"],
        "fidelity": [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider",
                     "tests/test_part_reference.py", *tests],
        "quickstart": [sys.executable, "-m", "jetjax.main", "--config", "configs/quickstart.py",
                       "--workdir", str(args.out / "quickstart"), *overrides],
        "quickstart_warm": [sys.executable, "-m", "jetjax.main", "--config", "configs/quickstart.py",
                            "--workdir", str(args.out / "quickstart_warm"), *overrides],
        "benchmark": [sys.executable, "experiments/bench_reference.py", *bench],
    }


def simulate_bench_jets(args):
    """Starts simulating the benchmark's Pythia jets on the CPU cores (500 per class: 4 test batches of 256);
    None without the `sim` extra (bench_reference.py then writes synthetic jets)."""
    if args.tiny or importlib.util.find_spec("pythia8mc") is None:
        return None
    command = [sys.executable, "-m", "jetjax.data.simulate", "--out", str(args.out / "bench_jets"),
               "--jets-per-class", "500", "--workers", str(max(1, (os.cpu_count() or 2) - 2))]
    return subprocess.Popen(command, cwd=ROOT, stdout=open(args.out / "simulate.log", "w"), stderr=subprocess.STDOUT)


def run_stage(name, command, timeout, args):
    """(status, seconds, output) of one stage; its output also goes to OUT/<name>.log."""
    # several jax processes may share the GPU with torch (bench_reference): 30% of its memory each
    env = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.3", **os.environ, "PYTHONUNBUFFERED": "1"}
    if args.tiny:
        env["JAX_PLATFORMS"] = "cpu"
    print(f"== {name} (timeout {timeout} s): {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        status, output = ("ok" if done.returncode == 0 else f"failed (exit {done.returncode})"), done.stdout + done.stderr
    except subprocess.TimeoutExpired as expired:
        status = f"timed out after {timeout} s"
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (expired.stdout, expired.stderr))
    seconds = time.perf_counter() - start
    (args.out / f"{name.replace(' ', '_')}.log").write_text(output)
    print(output[-3000:], flush=True)
    return status, seconds, output


def json_lines(output):
    lines = []
    for line in output.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return lines


def figures(name, output, args):
    """The figures of a finished stage, as {label: value}."""
    if name in STAGE_FUNCTIONS:
        found = [line for line in json_lines(output) if line.get("stage") == name]
        return {k: v for k, v in found[-1].items() if k != "stage"} if found else {}
    if name == "fidelity":
        summary = [line for line in output.splitlines() if " passed" in line or " failed" in line]
        return {"pytest": summary[-1].strip("= ")} if summary else {}
    if name.startswith("quickstart"):
        metrics = args.out / name / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
        found = {}
        for record in records:
            if record["split"] in ("compile", "val"):
                found.update({f"{record['split']} {k}": v for k, v in record.items() if "compile" in k or "programs" in k
                              or k in ("layouts", "cache_hits", "val_macro_auc")})
        return found
    found = {}
    for line in json_lines(output):
        if "warmup_s" in line:
            found[f"{line['framework']} {line['dtype']} warm-up"] = {k: v for k, v in line.items()
                                                                      if k not in ("framework", "dtype")}
        elif "summary" in line:
            found.update(line["summary"])
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    parser.add_argument("--tiny", action="store_true", help="tiny settings on the CPU (checks the script itself)")
    parser.add_argument("--tiny-timeout", type=int, default=300, help="seconds per stage with --tiny")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # a stage's own process
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage:
        print(json.dumps({"stage": args.stage, **STAGE_FUNCTIONS[args.stage](args)}), flush=True)
        return
    simulation = simulate_bench_jets(args)
    rows = []
    for name, command in stage_commands(args).items():
        if name == "benchmark" and simulation is not None:
            simulation.wait()
        timeout = args.tiny_timeout if args.tiny else TIMEOUTS[name]
        status, seconds, output = run_stage(name, command, timeout, args)
        rows.append((name, status, seconds, figures(name, output, args)))
    print("\n| stage | status | seconds | figures |\n|---|---|---:|---|")
    for name, status, seconds, found in rows:
        print(f"| {name} | {status} | {seconds:.1f} | {json.dumps(found)} |")
    failed = [name for name, status, _, _ in rows if status != "ok"]
    sys.exit(f"stages not ok: {', '.join(failed)}" if failed else 0)


if __name__ == "__main__":
    main()
