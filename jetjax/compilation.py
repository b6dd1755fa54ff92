"""What a run compiles: the XLA programs built while a `CompileLog` is open and the seconds spent on each,
counted from jax's monitoring events (every backend compilation, whichever thread triggers it), and JAX's
persistent compilation cache, on by default, so that a rerun loads its programs instead of compiling them.
On an accelerator a program can take a minute to compile (README, "Benchmarks": the H200 measurement), so a run
whose program count grows with its data is a bug; the engine logs these counts at start-up and with every
validation record. `matmul_flops` counts the matrix-product work of a traced step (experiments/bench_reference.py
compares it with torch's count for weaver)."""
import collections
import math
from pathlib import Path

import jax
from jax.extend import core as jax_core

from configs import defaults

BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
DEFAULT_CACHE_DIR = Path("~/.cache/jetjax/xla")


class CompileLog:
    """Counts XLA programs while open: `programs` and `seconds` per jitted function name (e.g. 'jit(train_step)';
    small op-by-op programs count too), and how many of them the persistent cache served (`cache_hits`)."""

    def __init__(self):
        self.programs, self.seconds = collections.Counter(), collections.Counter()
        self.cache_hits = 0

    def record(self, event, seconds, **kwargs):
        if event == BACKEND_COMPILE_EVENT:
            name = kwargs.get("fun_name", "unnamed")
            self.programs[name] += 1
            self.seconds[name] += seconds

    def record_event(self, event, **kwargs):
        if event == CACHE_HIT_EVENT:
            self.cache_hits += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self.record)
        jax.monitoring.register_event_listener(self.record_event)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self.record)
        jax.monitoring.unregister_event_listener(self.record_event)

    def summary(self):
        """{'compiled_programs': n, 'compile_s': seconds, 'cache_hits': n} over every function, plus the program
        count of each engine step (train_step, eval_step, embed_step) and of each other function that built more
        than one program or took over a second."""
        counts = {f"programs {name}": n for name, n in sorted(self.programs.items())
                  if n > 1 or self.seconds[name] > 1 or name.endswith("_step)")}
        return {"compiled_programs": sum(self.programs.values()), "compile_s": round(sum(self.seconds.values()), 2),
                "cache_hits": self.cache_hits, **counts}


def matmul_flops(jaxpr):
    """FLOPs (2 per multiply-add) of the matrix products in `jaxpr` (a traced step: `jax.jit(step).trace(*args)
    .jaxpr`), nested calls included and scan bodies times their length; elementwise work is left out, as in
    torch's FlopCounterMode, so the two frameworks' counts compare (experiments/bench_reference.py). Every
    branch of a cond counts, a while loop's body once."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracted, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in contracted)
        repeats = eqn.params["length"] if eqn.primitive.name == "scan" else 1
        total += repeats * sum(matmul_flops(sub) for sub in jax_core.jaxprs_in_params(eqn.params))
    return total


def use_persistent_cache(config):
    """Turns on JAX's persistent compilation cache (config.compile.cache, default on) in config.compile.cache_dir,
    else the folder jax already has ($JAX_COMPILATION_CACHE_DIR), else ~/.cache/jetjax/xla; `compile.cache=False`
    turns it off, that folder included. Takes effect where nothing has compiled yet (the command line calls it
    first; `train.fit` calls it too); returns the folder, or None where the cache is off."""
    settings = defaults.section(config, "compile")
    if not settings.cache:  # also where jax was given a folder ($JAX_COMPILATION_CACHE_DIR)
        jax.config.update("jax_enable_compilation_cache", False)
    if not jax.config.jax_enable_compilation_cache:  # off, or several CPU processes (parallel.initialize_distributed)
        return None
    folder = settings.cache_dir or jax.config.jax_compilation_cache_dir or DEFAULT_CACHE_DIR
    jax.config.update("jax_compilation_cache_dir", str(Path(folder).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # every program: a rerun compiles nothing
    return jax.config.jax_compilation_cache_dir
